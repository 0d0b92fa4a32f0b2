package admin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

var gzipMagic = []byte{0x1f, 0x8b}

func TestProfileIndex(t *testing.T) {
	s, _ := newServer(t)
	w := do(s, "GET", "/debug/pprof/", loopback4)
	if w.Code != 200 {
		t.Fatalf("/debug/pprof/: %d %s", w.Code, w.Body)
	}
	for _, want := range []string{"/debug/pprof/heap", "/debug/pprof/goroutine", "/debug/pprof/allocs", "/debug/pprof/profile", "/debug/pprof/trace"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("the index lacks %s:\n%s", want, w.Body)
		}
	}
	if w := do(s, "GET", "/debug/pprof/", podNetwork); w.Code != http.StatusForbidden {
		t.Errorf("/debug/pprof/ from the pod network: %d, want 403", w.Code)
	}
}

func TestNamedProfiles(t *testing.T) {
	s, _ := newServer(t)
	for _, tc := range []struct {
		target string
		code   int
		text   string // the body contains it; empty: a gzipped profile
	}{
		{"/debug/pprof/heap", 200, ""},
		{"/debug/pprof/heap?gc=1", 200, ""},
		{"/debug/pprof/allocs", 200, ""},
		{"/debug/pprof/goroutine", 200, ""},
		{"/debug/pprof/goroutine?debug=1", 200, "goroutine profile: total"},
		{"/debug/pprof/goroutine?debug=2", 200, "[running]:"}, // debug=1 has no states
		{"/debug/pprof/heap?debug=1", 200, "heap profile:"},
		{"/debug/pprof/threadcreate?debug=1", 200, "threadcreate profile:"},
		{"/debug/pprof/block", 200, ""},
		{"/debug/pprof/mutex", 200, ""},
	} {
		w := do(s, "GET", tc.target, loopback4)
		if w.Code != tc.code {
			t.Errorf("%s: %d %q, want %d", tc.target, w.Code, w.Body, tc.code)
			continue
		}
		if tc.text == "" {
			if !bytes.HasPrefix(w.Body.Bytes(), gzipMagic) || w.Header().Get("Content-Type") != "application/octet-stream" {
				t.Errorf("%s: %s, %q...: want a gzipped profile", tc.target, w.Header().Get("Content-Type"), w.Body.Bytes()[:min(8, w.Body.Len())])
			}
		} else if !strings.Contains(w.Body.String(), tc.text) {
			t.Errorf("%s: body lacks %q:\n%.300s", tc.target, tc.text, w.Body)
		}
		if do(s, "GET", tc.target, podNetwork).Code != http.StatusForbidden {
			t.Errorf("%s answers the pod network", tc.target)
		}
	}
}

// TestProfileErrors: what the profiler refuses, it says as text with
// X-Go-Pprof, the header go tool pprof needs to show it.
func TestProfileErrors(t *testing.T) {
	s, _ := newServer(t)
	for _, tc := range []struct {
		target string
		code   int
		text   string
	}{
		{"/debug/pprof/profile?seconds=601", 400, "at most 600"},
		{"/debug/pprof/trace?seconds=600.5", 400, "at most 600"},
		{"/debug/pprof/heap?seconds=5", 400, "go tool pprof -base"},
		{"/debug/pprof/nosuch", 404, "no profile \"nosuch\""},
	} {
		w := do(s, "GET", tc.target, loopback4)
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.text) || w.Header().Get("X-Go-Pprof") != "1" ||
			!strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
			t.Errorf("%s: %d %v %q, want %d as text naming %q with X-Go-Pprof", tc.target, w.Code, w.Header(), w.Body, tc.code, tc.text)
		}
		if do(s, "GET", tc.target, podNetwork).Code != http.StatusForbidden {
			t.Errorf("%s answers the pod network", tc.target)
		}
	}
}

// TestHeapProfileGC: heap?gc=1 collects first, as net/http/pprof's.
func TestHeapProfileGC(t *testing.T) {
	s, _ := newServer(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.NumGC
	if w := do(s, "GET", "/debug/pprof/heap?gc=1", loopback4); w.Code != 200 {
		t.Fatalf("heap?gc=1: %d", w.Code)
	}
	runtime.ReadMemStats(&ms)
	if ms.NumGC <= before {
		t.Errorf("heap?gc=1: %d collections before, %d after", before, ms.NumGC)
	}
}

// profilerFree skips a test that needs Go's CPU profiler when something
// else holds it (go test -cpuprofile).
func profilerFree(t *testing.T) {
	t.Helper()
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Skipf("the CPU profiler is taken: %v", err)
	}
	pprof.StopCPUProfile()
}

// TestCPUProfileBusy: one CPU profile at a time (Go's); a second is a
// clear 500, not a broken profile.
func TestCPUProfileBusy(t *testing.T) {
	profilerFree(t)
	s, _ := newServer(t)
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Fatal(err)
	}
	w := do(s, "GET", "/debug/pprof/profile?seconds=1", loopback4)
	pprof.StopCPUProfile()
	if w.Code != 500 || !strings.Contains(w.Body.String(), "could not start the CPU profile") || w.Header().Get("Content-Disposition") != "" {
		t.Errorf("a second CPU profile: %d %v %q, want 500 as text", w.Code, w.Header(), w.Body)
	}
}

// TestCPUProfileEndsWithClient: a client that goes away ends its profile
// and frees the profiler, without waiting out the seconds asked for.
func TestCPUProfileEndsWithClient(t *testing.T) {
	profilerFree(t)
	s, _ := newServer(t)
	srv := httptest.NewServer(s)
	defer srv.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/debug/pprof/profile?seconds=600", nil)
		done := make(chan error, 1)
		go func() {
			resp, err := srv.Client().Do(req)
			if err == nil {
				resp.Body.Close()
				err = fmt.Errorf("answered %s", resp.Status)
			}
			done <- err
		}()
		// The handler holds the profiler once a try to take it fails. A try
		// that takes it first makes the handler answer 500: then again.
		if !waitHeld(t, done, deadline) {
			cancel()
			continue
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("the client's request: %v, want it cancelled", err)
		}
		break
	}
	for {
		err := pprof.StartCPUProfile(io.Discard)
		if err == nil {
			pprof.StopCPUProfile()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the profiler is still held after its client left: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitHeld waits until Go's CPU profiler is taken, by trying to take it:
// false if the request ended first (done).
func waitHeld(t *testing.T, done <-chan error, deadline time.Time) bool {
	t.Helper()
	for {
		if err := pprof.StartCPUProfile(io.Discard); err != nil {
			return true
		}
		pprof.StopCPUProfile()
		select {
		case err := <-done:
			t.Logf("the profile lost the profiler to the test's try (%v): again", err)
			return false
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the profile never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestProfilesReadByGoTool: what the endpoints serve is what `go tool
// pprof` and `go tool trace` read, fetched over a real connection from
// loopback as a person in the pod would.
func TestProfilesReadByGoTool(t *testing.T) {
	profilerFree(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go tool is needed: %v", err)
		}
		t.Skipf("no go tool: %v", err)
	}
	s, _ := newServer(t)
	srv := httptest.NewServer(s)
	defer srv.Close()
	dir := t.TempDir()
	fetch := func(path, file string) string {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v %.200q", path, resp.StatusCode, err, body)
		}
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ path, file, want string }{
		{"/debug/pprof/profile?seconds=1", "cpu.pb.gz", "PeriodType: cpu nanoseconds"},
		{"/debug/pprof/heap?gc=1", "heap.pb.gz", "PeriodType: space bytes"},
		{"/debug/pprof/goroutine", "goroutine.pb.gz", "PeriodType: goroutine count"},
	} {
		p := fetch(tc.path, tc.file)
		out, err := exec.Command(goBin, "tool", "pprof", "-raw", p).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("go tool pprof -raw of %s: %v\n%.500s", tc.path, err, out)
		}
	}
	tr := fetch("/debug/pprof/trace?seconds=1", "trace.out")
	if b, _ := os.ReadFile(tr); !bytes.HasPrefix(b, []byte("go 1.")) {
		t.Errorf("the trace starts %.16q, want Go's trace header", b)
	}
}
