package outbound

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/requestid"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
)

// FuzzHandler sends raw HTTP/1.1 bytes, as an app could write them to
// its HTTP_PROXY, to the real outbound Handler behind a real http.Server
// on a loopback listener. Its upstreams, all on loopback, answer, reset,
// hang, send headers and stall, or cut their body short. Whatever the
// bytes, the handler must:
//
//   - never panic, nor answer twice (the server's ErrorLog fails the test
//     on "panic" or "superfluous");
//   - send only responses that parse, and only as many as requests;
//   - give its own answers (X-Minimesh-Error) an X-Request-ID and a JSON
//     body that names the same error and ID, with a status of the contract
//     (400, 403, 408, 413, 502, 503, 504, 508);
//   - keep a valid X-Request-ID the app sent, on every answer;
//   - never reach its own listeners (its outbound one and a declared
//     "admin" one, whatever the spelling);
//   - leave no goroutine, no socket and no running handler
//     behind once the server and its upstreams are closed;
//   - write access log lines that are JSON.
//
// "{self}" and "{admin}" in an input stand for the ports of the sidecar's
// own two listeners; at "{pause}" (three at most) the client stops
// writing for 30 ms, so that the sidecar may answer before the rest
// arrives. The second argument half-closes the connection after
// the bytes, as a client that is done sending does.
//
// Inputs that name a destination off this host (an IP literal that is not
// the host's own) are skipped: the test stays on loopback. Names other
// than the upstreams' are resolved from /etc/hosts only, never by DNS.
func FuzzHandler(f *testing.F) {
	for _, s := range fuzzHandlerSeeds {
		f.Add([]byte(s), false)
	}
	for _, s := range fuzzHandlerHalfCloseSeeds {
		f.Add([]byte(s), true)
	}
	var warm sync.Once
	f.Fuzz(func(t *testing.T, raw []byte, closeWrite bool) {
		if len(raw) > 16<<10 {
			return
		}
		// The first exchange of a process sets up what lives as long as
		// it does (the network poller, DNS configuration): not a leak.
		warm.Do(func() { fuzzHandlerOnce(t, []byte(ok1), false, false) })
		fuzzHandlerOnce(t, raw, closeWrite, true)
	})
}

const (
	ok1 = "GET http://ok/ HTTP/1.1\r\nHost: ok\r\n\r\n"
)

var fuzzHandlerSeeds = []string{
	// Absolute form, origin form, every upstream behaviour.
	ok1,
	"GET / HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET /stream HTTP/1.1\r\nHost: ok:80\r\nX-Request-ID: app-id-1\r\n\r\n",
	"HEAD http://ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET http://hang/ HTTP/1.1\r\nHost: hang\r\n\r\n",
	"GET http://stall/ HTTP/1.1\r\nHost: stall\r\n\r\n",
	"GET http://cut/ HTTP/1.1\r\nHost: cut\r\n\r\n",
	"GET http://reset/ HTTP/1.1\r\nHost: reset\r\n\r\n",
	"GET http://refused/ HTTP/1.1\r\nHost: refused\r\n\r\n",
	"HEAD http://refused/ HTTP/1.1\r\nHost: refused\r\n\r\n",
	"HEAD * HTTP/0.9\r\n\r\n",
	"GET http://nowhere.invalid/ HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\n",
	// The breaker of reset opens on the 2nd failure: the 3rd is 503.
	"GET http://reset/ HTTP/1.1\r\nHost: reset\r\n\r\nGET http://reset/ HTTP/1.1\r\nHost: reset\r\n\r\nGET http://reset/ HTTP/1.1\r\nHost: reset\r\n\r\n",
	// Pipelined keep-alive requests on the fast path, then a body.
	ok1 + ok1 + "POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\n\r\nhello" + ok1,
	// Bodies: Content-Length, chunked (valid, with extension and trailer,
	// malformed), both, too large, short, 100-continue, a retried POST.
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\n\r\nhello",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nhi\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://ok/smuggled HTTP/1.1\r\nHost: ok\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 5000\r\n\r\n" + strings.Repeat("x", 5000),
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 10\r\n\r\nabc",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
	"POST http://reset/ HTTP/1.1\r\nHost: reset\r\nIdempotency-Key: k1\r\nContent-Length: 5\r\n\r\nhello",
	"PUT http://reset/ HTTP/1.1\r\nHost: reset\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"POST http://hang/ HTTP/1.1\r\nHost: hang\r\nContent-Length: 5\r\n\r\nhello",
	"POST http://refused/ HTTP/1.1\r\nHost: refused\r\nContent-Length: 5\r\n\r\nhello" + ok1,
	// The answer comes before the rest of the body: that rest must never
	// be read as a request.
	"POST http://refused/ HTTP/1.1\r\nHost: refused\r\nContent-Length: 40\r\n\r\n{pause}GET http://ok/smuggled HTTP/1.1\r\nHost: ok\r\n\r\n" + ok1,
	"POST http://refused/ HTTP/1.1\r\nHost: refused\r\nContent-Length: 3000\r\n\r\n" + strings.Repeat("b", 2000) + "{pause}" + strings.Repeat("b", 1000) + ok1,
	"POST http://reset/ HTTP/1.1\r\nHost: reset\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{pause}0\r\n\r\n" + ok1,
	// obs-fold, odd header spellings, Via loops.
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nX-Folded: a\r\n b\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nX-Folded: a\r\n\tb\r\nX-Request-ID: id\r\n id\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost : ok\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nHost: other\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: other\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nVia: 1.1 " + strings.Repeat("minimesh-00000000, ", 16) + "x\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nX-Request-ID: a\r\nX-Request-ID: b\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nX-Request-ID: " + strings.Repeat("i", 129) + "\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nX-Request-ID: caf\xc3\xa9\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nConnection: close, X-Request-ID\r\n\r\n",
	"GET http://ok/ HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	// Targets: userinfo, schemes, ports, IPv6, zones, long ones.
	"GET http://a@b/ HTTP/1.1\r\nHost: b\r\n\r\n",
	"GET http://user:pw@ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET https://ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET ftp://ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET HTTP://OK/ HTTP/1.1\r\nHost: OK\r\n\r\n",
	"GET http://ok:0/ HTTP/1.1\r\nHost: ok:0\r\n\r\n",
	"GET http://ok:65536/ HTTP/1.1\r\nHost: ok:65536\r\n\r\n",
	"GET http://ok:+80/ HTTP/1.1\r\nHost: ok:+80\r\n\r\n",
	"GET http://ok:080/ HTTP/1.1\r\nHost: ok:080\r\n\r\n",
	"GET http://ok:/ HTTP/1.1\r\nHost: ok:\r\n\r\n",
	"GET http://[::1]:0/ HTTP/1.1\r\nHost: [::1]:0\r\n\r\n",
	"GET http://[::1%25lo]:1/ HTTP/1.1\r\nHost: [::1%25lo]:1\r\n\r\n",
	"GET http://[fe80::1%25eth0]/ HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n",
	"GET http://[::1/ HTTP/1.1\r\nHost: [::1\r\n\r\n",
	"GET http://ok/" + strings.Repeat("a/", 2000) + "?" + strings.Repeat("q=%zz;", 200) + " HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET http://ok/%00%ff?x=%00 HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET //ok/x HTTP/1.1\r\nHost: ok\r\n\r\n",
	"GET ok:80 HTTP/1.1\r\nHost: ok\r\n\r\n",
	// The sidecar's own ports by any spelling: 403, never a connection.
	"GET http://127.0.0.1:{self}/ HTTP/1.1\r\nHost: 127.0.0.1:{self}\r\n\r\n",
	"GET http://localhost:{admin}/debug/config HTTP/1.1\r\nHost: localhost:{admin}\r\n\r\n",
	"GET http://LOCALHOST.:{admin}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://[::ffff:127.0.0.1]:{admin}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://[::1]:{self}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://[::1%25lo]:{admin}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://[::ffff:127.0.0.1%25lo]:{admin}/debug/config HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://[::ffff:127.0.0.1%25x]:{self}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://[::%25lo]:{admin}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /debug/config HTTP/1.1\r\nHost: [::ffff:127.0.0.1%25lo]:{admin}\r\n\r\n",
	"GET http://0.0.0.0:{admin}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://127.0.0.2:{self}/ HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://self/ HTTP/1.1\r\nHost: self\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: admin\r\n\r\n",
	"POST http://admin/debug/breakers/reset HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
	// CONNECT: to an upstream (then bytes through the tunnel), refused,
	// to itself, malformed.
	"CONNECT ok:80 HTTP/1.1\r\nHost: ok:80\r\n\r\nGET / HTTP/1.1\r\nHost: ok\r\n\r\n",
	"CONNECT refused:80 HTTP/1.1\r\nHost: refused:80\r\n\r\n",
	"CONNECT reset:80 HTTP/1.1\r\nHost: reset:80\r\nX-Request-ID: tunnel-1\r\n\r\n",
	"CONNECT self:80 HTTP/1.1\r\nHost: self:80\r\n\r\n",
	"CONNECT 127.0.0.1:{admin} HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\n\r\n",
	"CONNECT [::ffff:127.0.0.1%25lo]:{admin} HTTP/1.1\r\nHost: x\r\n\r\n",
	"CONNECT ok HTTP/1.1\r\nHost: ok\r\n\r\n",
	"CONNECT /x HTTP/1.1\r\nHost: ok:80\r\n\r\n",
	"CONNECT [::1]:0 HTTP/1.1\r\nHost: [::1]:0\r\n\r\n",
	// Garbage and near misses.
	"GET http://ok/ HTTP/1.1\nHost: ok\n\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\n",
	"GET http://ok/ HTTP/9.9\r\nHost: ok\r\n\r\n",
	"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: -1\r\n\r\n",
	"\r\n\r\nGET http://ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
}

// fuzzHandlerHalfCloseSeeds are sent with the write side closed after
// them: a client that is done sending, or gone.
var fuzzHandlerHalfCloseSeeds = []string{
	ok1,
	"GET http://hang/ HTTP/1.1\r\nHost: hang\r\n\r\n",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 10\r\n\r\nabc",
	"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
	"CONNECT ok:80 HTTP/1.1\r\nHost: ok:80\r\n\r\nGET / HTTP/1.1\r\nHost: ok\r\n\r\n",
}

// fuzzPolicies: every destination is bounded in time; reset's breaker
// opens quickly; ok and reset retry, so that bodies are kept for replay.
const fuzzPolicies = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: default}
spec:
  service: "*"
  timeout: 1s
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: ok}
spec:
  service: ok
  timeout: 1s
  retries: {attempts: 1, perTryTimeout: 500ms, retryOn: [reset, "503"], backoff: {base: 1ms, max: 2ms}}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: reset}
spec:
  service: reset
  timeout: 1s
  retries: {attempts: 1, retryOn: [reset, connect-failure], backoff: {base: 1ms, max: 2ms}}
  circuitBreaker: {consecutiveFailures: 2}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: hang}
spec:
  service: hang
  timeout: 100ms
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: stall}
spec:
  service: stall
  timeout: 1s
  retries: {attempts: 1, perTryTimeout: 50ms, retryOn: [timeout], backoff: {base: 1ms, max: 2ms}}
`

var fuzzTable = sync.OnceValues(func() (*policy.Table, error) {
	pols, err := policy.Decode("fuzz.yaml", []byte(fuzzPolicies))
	if err != nil {
		return nil, err
	}
	return policy.NewTable(pols, "default"), nil
})

// contractKinds is, by status, the X-Minimesh-Error values the contract
// allows the sidecar's own answers (docs/operations.md).
var contractKinds = map[int][]string{
	http.StatusBadRequest:            {wellknown.ErrorBadRequest},
	http.StatusForbidden:             {wellknown.ErrorForbidden},
	http.StatusRequestTimeout:        {wellknown.ErrorBadRequest},
	http.StatusRequestEntityTooLarge: {wellknown.ErrorBadRequest},
	http.StatusBadGateway:            {wellknown.ErrorConnectFailure, wellknown.ErrorReset},
	http.StatusServiceUnavailable:    {wellknown.ErrorCircuitOpen},
	http.StatusGatewayTimeout:        {wellknown.ErrorTimeout},
	http.StatusLoopDetected:          {wellknown.ErrorLoop},
}

func fuzzHandlerOnce(t *testing.T, raw []byte, closeWrite, leaks bool) {
	table, err := fuzzTable()
	if err != nil {
		t.Fatal(err)
	}
	baseG, baseFD := runtime.NumGoroutine(), openFDs()
	r := startFuzzRig(t, table)
	stopped := false
	defer func() {
		if !stopped { // a failed check: still end what was started
			r.stop(t)
		}
	}()
	parts := bytes.SplitN(r.expand(raw), []byte("{pause}"), 4)
	reqs, whole, local := r.plan(bytes.Join(parts, nil))
	if local {
		r.exchange(t, parts, reqs, whole, closeWrite)
	}
	r.stop(t)
	stopped = true
	if n := r.ln.accepted.Load(); n > 1 {
		t.Errorf("the sidecar's own listener accepted %d connections, want 1 (the client's): a request reached it", n)
	}
	if n := r.adminHits.Load(); n > 0 {
		t.Errorf("the sidecar's declared admin listener accepted %d connections: a request reached it", n)
	}
	r.checkServerLog(t)
	r.accessLog.check(t)
	if leaks {
		checkNoLeak(t, baseG, baseFD)
	}
}

// fuzzRig is one sidecar handler on a loopback listener, with its
// upstreams, for one input.
type fuzzRig struct {
	h         *Handler
	srv       *http.Server
	lean      *leanhttp.Server // in front of srv, unless MINIMESH_TEST_SERVER=std
	ln        *countingListener
	admin     net.Listener
	adminHits atomic.Int64
	adminDone chan struct{}
	ups       []*httptest.Server
	reset     *resetUpstream
	handlers  sync.WaitGroup
	// closing, under handlersMu, turns away handlers that start after stop
	// began: http.Server.Close does not wait for them, and a WaitGroup's
	// Add racing its Wait at zero is a data race.
	handlersMu sync.Mutex
	closing    bool
	errLog     *serverLog
	access     *telemetry.AccessLog
	accessLog  *lineLog
	resolve    map[string]string
	hosts      *net.Resolver
	selfPort   string
	adminPort  string
}

func startFuzzRig(t *testing.T, table *policy.Table) *fuzzRig {
	r := &fuzzRig{errLog: &serverLog{}, accessLog: &lineLog{}, adminDone: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ln = &countingListener{Listener: ln}
	if r.admin, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.adminDone)
		for {
			c, err := r.admin.Accept()
			if err != nil {
				return
			}
			r.adminHits.Add(1)
			c.Close()
		}
	}()
	_, r.selfPort, _ = net.SplitHostPort(ln.Addr().String())
	_, r.adminPort, _ = net.SplitHostPort(r.admin.Addr().String())

	up := func(h http.HandlerFunc) string {
		s := httptest.NewUnstartedServer(h)
		s.Config.ErrorLog = log.New(io.Discard, "", 0)
		s.Start()
		r.ups = append(r.ups, s)
		return s.Listener.Addr().String()
	}
	r.reset = newResetUpstream(t)
	r.resolve = map[string]string{
		"ok:80":      up(fuzzOK),
		"hang:80":    up(fuzzHang),
		"stall:80":   up(fuzzStall),
		"cut:80":     up(fuzzCut),
		"reset:80":   r.reset.ln.Addr().String(),
		"refused:80": "127.0.0.1:1", // nothing listens on tcpmux
		"self:80":    ln.Addr().String(),
		"admin:80":   r.admin.Addr().String(),
	}
	r.access = telemetry.NewAccessLog(r.accessLog)
	r.h = New(Config{
		Namespace:          "default",
		Resolve:            r.resolve,
		ConnectTimeout:     200 * time.Millisecond,
		MaxRequestBody:     4096,
		RequestBodyTimeout: 100 * time.Millisecond,
		Metrics:            telemetry.New(0),
		AccessLog:          r.access,
		ServiceName:        "fuzz",
		Logger:             slog.New(slog.DiscardHandler),
	}, table)
	// Names are looked up in /etc/hosts only: no DNS query leaves the
	// host, whatever name the input makes up.
	r.hosts = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no DNS in this test")
	}}
	r.h.dialer.d.Resolver = r.hosts
	r.h.AddListener(r.ln.Addr())
	r.h.AddListener(r.admin.Addr())
	r.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			r.handlersMu.Lock()
			if r.closing {
				r.handlersMu.Unlock()
				http.Error(w, "closing", http.StatusServiceUnavailable)
				return
			}
			r.handlers.Add(1)
			r.handlersMu.Unlock()
			defer r.handlers.Done()
			r.h.ServeHTTP(w, req)
		}),
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: 100 * time.Millisecond,
		IdleTimeout:       200 * time.Millisecond,
		ErrorLog:          log.New(r.errLog, "", 0),
	}
	if proxytest.Server() != "std" {
		r.lean = leanhttp.New(r.srv)
		r.lean.RequestContext = RequestContext // as the sidecar serves
		go func() { _ = r.lean.ServeStd() }()
		go func() { _ = r.lean.Serve(r.ln) }()
	} else {
		go func() { _ = r.srv.Serve(r.ln) }()
	}
	return r
}

// Upstreams. Each marks its answers with X-Upstream.

func fuzzOK(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Upstream", "ok")
	if strings.Contains(r.URL.Path, "stream") {
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
	}
	fmt.Fprintf(w, "ok %d\n", n)
}

// fuzzHang answers late: after its destination's 100 ms timeout.
func fuzzHang(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Upstream", "hang")
	select {
	case <-r.Context().Done():
		return
	case <-time.After(300 * time.Millisecond):
	}
	io.WriteString(w, "late\n")
}

// fuzzStall sends its headers, then nothing, then closes.
func fuzzStall(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Upstream", "stall")
	w.Header().Set("Content-Length", "64")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	select {
	case <-r.Context().Done():
	case <-time.After(100 * time.Millisecond):
	}
}

// fuzzCut sends 8 of the 64 bytes it announced, then closes.
func fuzzCut(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Upstream", "cut")
	w.Header().Set("Content-Length", "64")
	io.WriteString(w, "8 bytes.")
	w.(http.Flusher).Flush()
	select {
	case <-r.Context().Done():
	case <-time.After(20 * time.Millisecond):
	}
}

// resetUpstream reads one request per connection and resets it.
type resetUpstream struct {
	ln net.Listener
	wg sync.WaitGroup
}

func newResetUpstream(t *testing.T) *resetUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &resetUpstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					_, _ = io.Copy(io.Discard, req.Body)
				}
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}()
		}
	}()
	return u
}

func (u *resetUpstream) Close() { u.ln.Close(); u.wg.Wait() }

// expand puts the ports of the sidecar's own listeners in place of
// {self} and {admin}.
func (r *fuzzRig) expand(raw []byte) []byte {
	raw = bytes.ReplaceAll(raw, []byte("{self}"), []byte(r.selfPort))
	return bytes.ReplaceAll(raw, []byte("{admin}"), []byte(r.adminPort))
}

// plan reads the requests in raw the way the server will (the server is
// stricter, so it sees at most these), and reports how many of them are
// whole and whether every one stays on this host. The last may have a
// body cut short: the sidecar may answer it or not. It stops at a
// CONNECT: what follows is the tunnel's.
func (r *fuzzRig) plan(raw []byte) (reqs []*http.Request, whole int, local bool) {
	br := bufio.NewReader(bytes.NewReader(raw))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return reqs, len(reqs), true
		}
		var authority string
		if req.Method == http.MethodConnect {
			authority = req.Host
		} else if authority, err = target(req); err != nil {
			authority = ""
		}
		if authority != "" && !r.local(authority) {
			return nil, 0, false
		}
		reqs = append(reqs, req)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return reqs, len(reqs) - 1, true // the body is cut: the server stops here too
		}
		if req.Method == http.MethodConnect {
			return reqs, len(reqs), true
		}
	}
}

// local reports whether a connection to authority would stay on this
// host: an upstream's name, an address of this host, or a name that
// /etc/hosts maps to one (or to nothing).
func (r *fuzzRig) local(authority string) bool {
	if _, ok := r.resolve[authority]; ok {
		return true
	}
	host, _, err := net.SplitHostPort(authority)
	if err != nil {
		return true // the dialer will refuse it
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return isLocal(ip)
	}
	if ip := net.ParseIP(host); ip != nil {
		a, _ := netip.AddrFromSlice(ip)
		return isLocal(a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ips, err := r.hosts.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return true // nothing to dial
	}
	for _, ip := range ips {
		if !isLocal(ip) {
			return false
		}
	}
	return true
}

// exchange writes raw to the sidecar and checks every response, until
// each planned request has its answer or the sidecar closes.
func (r *fuzzRig) exchange(t *testing.T, parts [][]byte, reqs []*http.Request, whole int, closeWrite bool) {
	c, err := net.DialTimeout("tcp", r.ln.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	for i, p := range parts {
		if i > 0 {
			time.Sleep(30 * time.Millisecond)
		}
		if _, err := c.Write(p); err != nil {
			break // the sidecar closed first: read what it said
		}
	}
	if closeWrite {
		_ = c.(*net.TCPConn).CloseWrite()
	}
	var got bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &got))
	answered := 0
	for closeWrite || answered < whole {
		var req *http.Request
		if answered < len(reqs) {
			req = reqs[answered]
		}
		before := got.Len() - br.Buffered()
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) && got.Len()-br.Buffered() == before {
				// Closed between responses. Before the answer to a
				// request the server read whole, only where the
				// contract allows it: a response cut before the sidecar
				// flushed anything (TestTimeoutCoversBody), or a client
				// that half-closed (it may be gone).
				if answered < whole && !closeWrite && !cutsShort(req) {
					r.fatalf(t, "connection closed without an answer to request %d (%s %s); got %q", answered+1, req.Method, req.RequestURI, got.Bytes())
				}
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				r.fatalf(t, "no answer within 5s after %d of %d responses; got %q", answered, len(reqs), got.Bytes())
			}
			r.fatalf(t, "response %d does not parse: %v; got %q", answered+1, err, got.Bytes())
		}
		if req != nil && req.Method == http.MethodConnect && resp.StatusCode/100 == 2 {
			r.checkAnswer(t, req, resp, nil, nil, got.Bytes())
			return // the rest is the tunnel's
		}
		body, berr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			continue // 100 Continue: the answer follows
		}
		if req == nil {
			// More answers than requests: only the server's own refusal
			// of bytes it could not parse, which ends the connection.
			if bug := knownBug(nil, resp, body); bug != "" {
				r.known(t, bug)
				r.fatalf(t, "known bug %s: answer %d to no request: %s %v; got %q", bug, answered+1, resp.Status, resp.Header, got.Bytes())
			}
			if resp.Header.Get(wellknown.HeaderError) != "" || resp.Header.Get("X-Upstream") != "" || !resp.Close {
				r.fatalf(t, "answer %d to no request: %s %v; got %q", answered+1, resp.Status, resp.Header, got.Bytes())
			}
			answered++
			continue
		}
		r.checkAnswer(t, req, resp, body, berr, got.Bytes())
		answered++
		if resp.Close {
			// Nothing may follow an answer that closes the connection
			// (but net/http's own refusal of a HEAD it could not serve
			// has a body, which was not read as the HEAD's).
			ownRefusal := req.Method == http.MethodHead && resp.Header.Get(wellknown.HeaderError) == "" && resp.Header.Get("X-Upstream") == ""
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if n, _ := br.Read(make([]byte, 1)); n > 0 && !ownRefusal {
				r.fatalf(t, "bytes after an answer with Connection: close; got %q", got.Bytes())
			}
			return
		}
	}
}

// checkAnswer checks one response against the contract.
func (r *fuzzRig) checkAnswer(t *testing.T, req *http.Request, resp *http.Response, body []byte, berr error, all []byte) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		r.fatalf(t, "%s %s: %s; answer %s %v %q; all %q", req.Method, req.RequestURI, fmt.Sprintf(format, args...), resp.Status, resp.Header, body, all)
	}
	if bug := knownBug(req, resp, body); bug != "" {
		r.known(t, bug)
		fail("known bug %s", bug)
	}
	id := resp.Header.Get(wellknown.HeaderRequestID)
	want := req.Header.Get(wellknown.HeaderRequestID)
	checkID := func() {
		t.Helper()
		if !requestid.Valid(id) {
			fail("X-Request-ID %q is not a valid ID", id)
		}
		if requestid.Valid(want) && id != want {
			fail("X-Request-ID %q, the app sent %q", id, want)
		}
	}
	kind := resp.Header.Get(wellknown.HeaderError)
	up := resp.Header.Get("X-Upstream")
	switch {
	case kind != "":
		checkID()
		kinds, ok := contractKinds[resp.StatusCode]
		if !ok || !contains(kinds, kind) {
			fail("status %d with X-Minimesh-Error %q is not in the contract", resp.StatusCode, kind)
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
				fail("503 circuit-open without a Retry-After in seconds")
			}
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			fail("Content-Type %q, want application/json", ct)
		}
		if berr != nil {
			fail("the sidecar's own answer was cut short: %v", berr)
		}
		if req.Method == http.MethodHead {
			break
		}
		var e errorBody
		if err := json.Unmarshal(body, &e); err != nil {
			fail("body is not JSON: %v", err)
		}
		if e.Error != kind || e.RequestID != id || e.Message == "" {
			fail("body names error %q, ID %q, message %q; want %q, %q and a message", e.Error, e.RequestID, e.Message, kind, id)
		}
	case up != "":
		checkID()
		if berr != nil && up != "cut" {
			fail("the body of upstream %s was cut short: %v", up, berr)
		}
		if up == "hang" || up == "stall" {
			fail("upstream %s's answer passed a timeout it should have hit", up)
		}
	case req.Method == http.MethodConnect && resp.StatusCode == http.StatusOK:
		checkID()
	case req.Method == http.MethodOptions && req.RequestURI == "*" && resp.StatusCode == http.StatusOK:
		// net/http answers "OPTIONS *" itself: a question about the
		// proxy, not a destination.
	default:
		// net/http's own refusal of a request it could not read.
		if resp.StatusCode < 400 || !resp.Close {
			fail("an answer that neither the sidecar nor an upstream gave (status %d, Connection: close %v)", resp.StatusCode, resp.Close)
		}
	}
}

// knownBug names the reported bug that explains a wrong answer, or "".
// A fuzzing session that looks for new bugs skips these with
// MINIMESH_FUZZ_KNOWN=skip; without it they fail, as regression tests.
// When a bug is fixed its case goes, and its inputs check the contract
// in full again.
func knownBug(req *http.Request, resp *http.Response, body []byte) string {
	kind := resp.Header.Get(wellknown.HeaderError)
	switch {
	case kind != "" && resp.StatusCode < 400:
		// answerLate's error status goes through countingWriter, which
		// keeps the upstream's held-back status: the app gets the
		// upstream's 200 with the sidecar's error body.
		return "late-status: an upstream that failed after its headers is answered " + resp.Status + ", not 502/504"
	case kind == "" && resp.Header.Get("X-Upstream") == "" && resp.StatusCode == http.StatusOK &&
		len(body) == 0 && resp.Header.Get(wellknown.HeaderRequestID) == "" &&
		(req == nil || req.Method != http.MethodOptions || req.RequestURI != "*"):
		// serveError (and serveConnect) return without writing when the
		// request's context ended, and net/http then writes a 200: a
		// client that half-closed reads a success nobody sent, and after a
		// CONNECT the tunnel's bytes are read as requests.
		return "gone-200: a request whose client half-closed is answered with an empty 200"
	case req != nil && kind == "" && !resp.Close && req.URL.Host == "" && (req.URL.Scheme != "" || req.URL.Opaque != ""):
		// target() takes the Host header when the URL has no host, even
		// for an absolute-URI of another scheme ("ok:80", "mailto:x"):
		// the opaque part goes upstream as the request target.
		return "opaque-target: request target " + strconv.Quote(req.RequestURI) + " forwarded instead of refused (400 bad-request)"
	}
	return ""
}

// cutsShort reports whether req goes to the upstream that cuts its body.
func cutsShort(req *http.Request) bool {
	a, err := target(req)
	return err == nil && strings.HasPrefix(strings.ToLower(a), "cut:")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// stop closes the server, waits for its handlers, drains the tunnels,
// closes the kept upstream connections and then the upstreams.
func (r *fuzzRig) stop(t *testing.T) {
	if r.lean != nil {
		r.lean.Close() // and r.srv
	} else {
		r.srv.Close()
	}
	r.handlersMu.Lock()
	r.closing = true
	r.handlersMu.Unlock()
	done := make(chan struct{})
	go func() { r.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Errorf("handlers still running 3s after the server closed:\n%s", goroutines())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	r.h.Drain(ctx)
	cancel()
	r.h.CloseIdleConnections()
	r.access.Close()
	for _, u := range r.ups {
		u.CloseClientConnections()
		u.Close()
	}
	r.reset.Close()
	r.admin.Close()
	<-r.adminDone
}

// checkNoLeak waits up to 2 s for the goroutines and open sockets to fall
// back to their numbers before the rig started.
func checkNoLeak(t *testing.T, baseG, baseFD int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		g, fd := runtime.NumGoroutine(), openFDs()
		if g <= baseG && fd <= baseFD {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leak: %d goroutines (before: %d), %d open sockets (before: %d):\n%s", g, baseG, fd, baseFD, goroutines())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openFDs counts this process's open sockets. (Other descriptors come
// and go on their own: io.Copy between TCP connections splices through a
// pool of pipes that the garbage collector empties.)
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func goroutines() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// serverLog is the server's ErrorLog. A panic in a handler, or a second
// status for one response, fails the test (checkServerLog).
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) Write(p []byte) (int, error) {
	if s := string(p); strings.Contains(s, "panic") || strings.Contains(s, "superfluous") {
		l.mu.Lock()
		l.lines = append(l.lines, s)
		l.mu.Unlock()
	}
	return len(p), nil
}

func (l *serverLog) first() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 0 {
		return ""
	}
	return l.lines[0]
}

// knownLogBug names the reported bug behind a line of the server's log.
func knownLogBug(line string) string {
	if strings.Contains(line, "invalid concurrent Body.Read call") {
		// With full duplex on, a request body the transport never read
		// (connect failure, open breaker) is read to its end by
		// net/http's finishRequest after it stopped its background
		// read; the end of the body starts a new one, and reading the
		// next request on the kept-alive connection panics.
		return "body-panic: an unread request body on a kept-alive connection panics net/http's next read"
	}
	return ""
}

// checkServerLog fails the test on a panic or a superfluous WriteHeader.
func (r *fuzzRig) checkServerLog(t *testing.T) {
	t.Helper()
	line := r.errLog.first()
	if line == "" {
		return
	}
	if bug := knownLogBug(line); bug != "" {
		r.known(t, bug)
		t.Fatalf("known bug %s; server log: %s", bug, line)
	}
	t.Fatalf("server log: %s", line)
}

// fatalf fails the test, naming the server's panic if there was one (it
// would explain a connection closed early).
func (r *fuzzRig) fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	if line := r.errLog.first(); line != "" {
		if bug := knownLogBug(line); bug != "" {
			r.known(t, bug)
		}
		t.Fatalf("%s; server log: %s", fmt.Sprintf(format, args...), line)
	}
	t.Fatalf(format, args...)
}

// known skips the input when the session fuzzes for new bugs
// (MINIMESH_FUZZ_KNOWN=skip) and bug already explains it.
func (r *fuzzRig) known(t *testing.T, bug string) {
	t.Helper()
	if os.Getenv("MINIMESH_FUZZ_KNOWN") == "skip" {
		t.Skipf("known bug %s", bug)
	}
}

// lineLog collects the access log.
type lineLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// check fails the test unless every line is a JSON object.
func (l *lineLog) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range bytes.Split(bytes.TrimSuffix(l.buf.Bytes(), []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("access log line is not JSON (%v): %q", err, line)
		}
	}
}
