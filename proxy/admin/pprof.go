package admin

import (
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"time"
)

// Go's profiler, for "why is the sidecar using CPU or memory", with the
// paths and query parameters `go tool pprof` and net/http/pprof's users
// know: /debug/pprof/profile?seconds=N, /debug/pprof/trace?seconds=N,
// /debug/pprof/NAME?debug=N (heap with gc=1), and an index.
//
// Why not net/http/pprof: its delta profiles (NAME?seconds=N) parse
// profiles back with internal/profile, a quarter megabyte of binary with
// the package itself, and the binary's pages are most of the sidecar's
// RSS (0.2-0.4 MB of it: docs/benchmarks.md, "Go's profiler without
// net/http/pprof"). A delta is two profiles and `go tool pprof -base`.

// maxProfileSeconds bounds a CPU profile or trace: the profiler is one
// per process, and a forgotten request should not hold it for hours.
const maxProfileSeconds = 600

// profileSeconds reads ?seconds= as net/http/pprof does (whole seconds
// for a CPU profile, a fraction for a trace; absent, not a number or not
// above 0: def), refusing only more than maxProfileSeconds.
func profileSeconds(r *http.Request, def float64, whole bool) (time.Duration, error) {
	v := r.URL.Query().Get("seconds")
	var sec float64
	var err error
	if whole {
		var n int64
		n, err = strconv.ParseInt(v, 10, 64)
		sec = float64(n)
	} else {
		sec, err = strconv.ParseFloat(v, 64)
	}
	if err != nil || !(sec > 0) {
		sec = def
	}
	if sec > maxProfileSeconds {
		return 0, fmt.Errorf("seconds=%s: at most %d", v, maxProfileSeconds)
	}
	return time.Duration(sec * float64(time.Second)), nil
}

// extendDeadlines gives an answer that begins only after d (a CPU
// profile, a trace) d more than its server's ReadTimeout and WriteTimeout
// (ResponseController), as net/http/pprof's users must: the write
// deadline would cut the profile, and the read deadline, passing while
// the handler waits, would cancel its request.
func extendDeadlines(w http.ResponseWriter, r *http.Request, d time.Duration) {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return
	}
	rc := http.NewResponseController(w)
	now := time.Now()
	if srv.WriteTimeout > 0 {
		_ = rc.SetWriteDeadline(now.Add(d + srv.WriteTimeout))
	}
	if srv.ReadTimeout > 0 {
		_ = rc.SetReadDeadline(now.Add(d + srv.ReadTimeout))
	}
}

// sleepFor waits d, or until the client goes away.
func sleepFor(r *http.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// profileError answers msg as text, with the header that has go tool
// pprof show it, in place of the profile's headers if they were set.
func profileError(w http.ResponseWriter, code int, msg string) {
	w.Header().Del("Content-Disposition")
	w.Header().Set("X-Go-Pprof", "1")
	textHeaders(w)
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

func textHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
}

func binaryHeaders(w http.ResponseWriter, name string) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
}

// serveCPUProfile is /debug/pprof/profile: a CPU profile of seconds
// (default 30, as net/http/pprof's).
func serveCPUProfile(w http.ResponseWriter, r *http.Request) {
	d, err := profileSeconds(r, 30, true)
	if err != nil {
		profileError(w, http.StatusBadRequest, err.Error())
		return
	}
	binaryHeaders(w, "profile")
	extendDeadlines(w, r, d)
	if err := pprof.StartCPUProfile(w); err != nil {
		// Another profile is running: the headers are not sent yet.
		profileError(w, http.StatusInternalServerError, "could not start the CPU profile: "+err.Error())
		return
	}
	sleepFor(r, d)
	pprof.StopCPUProfile()
}

// serveTrace is /debug/pprof/trace: an execution trace of seconds
// (default 1), for `go tool trace`.
func serveTrace(w http.ResponseWriter, r *http.Request) {
	d, err := profileSeconds(r, 1, false)
	if err != nil {
		profileError(w, http.StatusBadRequest, err.Error())
		return
	}
	binaryHeaders(w, "trace")
	extendDeadlines(w, r, d)
	if err := trace.Start(w); err != nil {
		profileError(w, http.StatusInternalServerError, "could not start the trace: "+err.Error())
		return
	}
	sleepFor(r, d)
	trace.Stop()
}

// serveNamedProfile is /debug/pprof/NAME: heap, allocs, goroutine,
// block, mutex, threadcreate; ?debug=N as text, ?gc=1 collects before a
// heap profile.
func serveNamedProfile(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p := pprof.Lookup(name)
	if p == nil {
		profileError(w, http.StatusNotFound, "no profile "+strconv.Quote(name)+": see /debug/pprof/")
		return
	}
	q := r.URL.Query()
	if q.Get("seconds") != "" {
		profileError(w, http.StatusBadRequest, "delta profiles (seconds=) are not served: take two and compare them with go tool pprof -base")
		return
	}
	debug, _ := strconv.Atoi(q.Get("debug"))
	if gc, _ := strconv.Atoi(q.Get("gc")); name == "heap" && gc > 0 {
		runtime.GC()
	}
	if debug != 0 {
		textHeaders(w)
	} else {
		binaryHeaders(w, name)
	}
	_ = p.WriteTo(w, debug)
}

// serveProfileIndex is /debug/pprof/: the profiles, as text.
func serveProfileIndex(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	b.WriteString("Go profiles of this sidecar (loopback only; go tool pprof URL):\n\n")
	for _, p := range pprof.Profiles() {
		fmt.Fprintf(&b, "  /debug/pprof/%-14s %6d  (?debug=1 as text)\n", p.Name(), p.Count())
	}
	b.WriteString("  /debug/pprof/profile         CPU profile, ?seconds=30\n")
	b.WriteString("  /debug/pprof/trace           execution trace for go tool trace, ?seconds=1\n")
	textHeaders(w)
	_, _ = w.Write([]byte(b.String()))
}
