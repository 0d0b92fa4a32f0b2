package inbound

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/requestid"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
	"github.com/minimesh/minimesh/wellknown"
)

// syncBuffer is an access log's output, read while the log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rig is the inbound handler in front of an app, served as the sidecar
// serves it: every connection's original destination is the app's.
type rig struct {
	h      *Handler
	m      *telemetry.Metrics
	log    *telemetry.AccessLog
	logOut *syncBuffer
	app    netip.AddrPort // where the handler forwards
	front  string         // the handler's own address
	seen   chan *http.Request
}

func newRig(t *testing.T, app http.Handler, cfg Config) *rig {
	t.Helper()
	r := &rig{m: telemetry.New(0), logOut: &syncBuffer{}, seen: make(chan *http.Request, 10)}
	r.log = telemetry.NewAccessLog(r.logOut)
	appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.seen <- req.Clone(context.Background())
		app.ServeHTTP(w, req)
	}))
	t.Cleanup(appSrv.Close)
	return r.serve(t, netip.MustParseAddrPort(appSrv.Listener.Addr().String()), cfg)
}

// newRigAt is newRig in front of an app of the test's own at app.
func newRigAt(t *testing.T, app netip.AddrPort, cfg Config) *rig {
	t.Helper()
	r := &rig{m: telemetry.New(0), logOut: &syncBuffer{}, seen: make(chan *http.Request, 10)}
	r.log = telemetry.NewAccessLog(r.logOut)
	return r.serve(t, app, cfg)
}

// serve starts the handler in front of the app at app.
func (r *rig) serve(t *testing.T, app netip.AddrPort, cfg Config) *rig {
	t.Helper()
	r.app = app
	cfg.Metrics, cfg.AccessLog, cfg.ServiceName = r.m, r.log, "tenant"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if cfg.LocalAddr == nil {
		cfg.LocalAddr = loopbackIsLocal // the app listens on loopback here
	}
	r.h = New(cfg)
	front := httptest.NewUnstartedServer(r.h)
	front.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return r.h.WithOriginalDst(ctx, r.app)
	}
	front.Start()
	t.Cleanup(front.Close)
	t.Cleanup(r.h.CloseIdleConnections)
	r.front = front.Listener.Addr().String()
	return r
}

// logLines flushes the access log and returns its lines.
func (r *rig) logLines(t *testing.T) []map[string]any {
	t.Helper()
	r.log.Close()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.logOut.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func (r *rig) port() string { return strconv.Itoa(int(r.app.Port())) }

// TestServeHTTP: a request into the pod reaches the app at the original
// destination with its Host, path and query as sent, a request ID kept
// when valid and made otherwise; the caller gets the app's answer with
// that ID; the request is counted with direction="inbound" and the port,
// and logged.
func TestServeHTTP(t *testing.T) {
	long := strings.Repeat("x", requestid.MaxLen+1)
	tests := []struct {
		name     string
		id       []string // X-Request-ID values sent
		keep     string   // the ID the app must see; "" a new one
		appCode  int
		method   string
		body     string
		xff      string
		wantCode int
	}{
		{name: "no ID: one is made", appCode: 200, method: "GET", wantCode: 200},
		{name: "valid ID kept", id: []string{"req-42"}, keep: "req-42", appCode: 200, method: "GET", wantCode: 200},
		{name: "too long ID replaced", id: []string{long}, appCode: 200, method: "GET", wantCode: 200},
		{name: "non-ASCII ID replaced", id: []string{"caf\xc3\xa9"}, appCode: 200, method: "GET", wantCode: 200},
		{name: "two IDs: the first kept, alone", id: []string{"one", "two"}, keep: "one", appCode: 200, method: "GET", wantCode: 200},
		{name: "app error passes through", appCode: 503, method: "GET", wantCode: 503},
		{name: "POST with body", appCode: 201, method: "POST", body: "hello app", wantCode: 201},
		{name: "caller's X-Forwarded-For passes unchanged", appCode: 200, method: "GET", xff: "203.0.113.9", wantCode: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				b, _ := io.ReadAll(req.Body)
				w.Header().Set("X-App", "yes")
				w.WriteHeader(tt.appCode)
				io.WriteString(w, "app:"+string(b))
			}), Config{})
			req, _ := http.NewRequest(tt.method, "http://"+r.front+"/orders/7?q=1;x=%zz", strings.NewReader(tt.body))
			req.Host = "tenant-service:8000"
			for _, v := range tt.id {
				req.Header.Add(wellknown.HeaderRequestID, v)
			}
			if tt.xff != "" {
				req.Header.Set("X-Forwarded-For", tt.xff)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode || string(b) != "app:"+tt.body || resp.Header.Get("X-App") != "yes" {
				t.Fatalf("got %d %q (X-App %q), want the app's %d", resp.StatusCode, b, resp.Header.Get("X-App"), tt.wantCode)
			}
			var seen *http.Request
			select {
			case seen = <-r.seen:
			case <-time.After(5 * time.Second):
				t.Fatal("the app saw no request")
			}
			ids := seen.Header.Values(wellknown.HeaderRequestID)
			if len(ids) != 1 || !requestid.Valid(ids[0]) || (tt.keep != "" && ids[0] != tt.keep) || (tt.keep == "" && len(tt.id) > 0 && ids[0] == tt.id[0]) {
				t.Errorf("the app saw X-Request-ID %q, want one ID (kept: %q)", ids, tt.keep)
			}
			if got := resp.Header.Get(wellknown.HeaderRequestID); got != ids[0] {
				t.Errorf("the caller got X-Request-ID %q, the app saw %q", got, ids[0])
			}
			if seen.Host != "tenant-service:8000" || seen.URL.RequestURI() != "/orders/7?q=1;x=%zz" {
				t.Errorf("the app saw Host %q, target %q", seen.Host, seen.URL.RequestURI())
			}
			if got := seen.Header.Values("X-Forwarded-For"); strings.Join(got, ",") != tt.xff {
				t.Errorf("the app saw X-Forwarded-For %q, want %q as sent", got, tt.xff)
			}
			if seen.Header.Get("Via") != "" {
				t.Errorf("the app saw Via %q: the inbound path adds none", seen.Header.Get("Via"))
			}
			metrics := gather(t, r.m)
			series := `minimesh_requests_total{code="` + strconv.Itoa(tt.wantCode) + `",destination="` + r.port() + `",direction="inbound",method="` + tt.method + `"} 1`
			if !strings.Contains(metrics, series) {
				t.Errorf("want %s in\n%s", series, grep(metrics, "minimesh_requests_total"))
			}
			if !strings.Contains(metrics, `minimesh_request_duration_seconds_count{destination="`+r.port()+`",direction="inbound"} 1`) {
				t.Errorf("no inbound latency observed:\n%s", grep(metrics, "duration_seconds_count"))
			}
			lines := r.logLines(t)
			if len(lines) != 1 {
				t.Fatalf("access log: %v", lines)
			}
			l := lines[0]
			if l["direction"] != "inbound" || l["destination"] != r.port() || l["original_dst"] != r.app.String() ||
				l["request_id"] != ids[0] || l["status"] != float64(tt.wantCode) || l["method"] != tt.method ||
				l["path"] != "/orders/7" || l["service"] != "tenant" || l["bytes_in"] != float64(len(tt.body)) {
				t.Errorf("access log line %v", l)
			}
			if _, ok := l["breaker"]; ok {
				t.Errorf("access log line %v: inbound has no breaker", l)
			}
		})
	}
}

// TestServeHTTPAppDown: an app that does not listen on the port is the
// sidecar's 502 connect-failure (JSON, with the request ID), counted
// (under "other": the port was never reached, portMetric) and logged;
// nothing is retried.
func TestServeHTTPAppDown(t *testing.T) {
	r := newRig(t, http.NotFoundHandler(), Config{})
	dead := netip.MustParseAddrPort(refused.Addr(t))
	r.app = dead // the next connections' original destination
	front := httptest.NewUnstartedServer(r.h)
	front.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context { return r.h.WithOriginalDst(ctx, dead) }
	front.Start()
	defer front.Close()
	req, _ := http.NewRequest("GET", front.URL+"/", nil)
	req.Header.Set(wellknown.HeaderRequestID, "abc")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if !resp.Close {
		t.Errorf("the 502 keeps the caller's connection: its next request would come back to an app that is not there")
	}
	if resp.StatusCode != 502 || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorConnectFailure ||
		resp.Header.Get(wellknown.HeaderRequestID) != "abc" || body["requestId"] != "abc" || body["error"] != "connect-failure" || body["destination"] != dead.String() {
		t.Errorf("got %d %v %v", resp.StatusCode, resp.Header, body)
	}
	if metrics := gather(t, r.m); !strings.Contains(metrics, `minimesh_requests_total{code="502",destination="other",direction="inbound",method="GET"} 1`) {
		t.Errorf("502 not counted:\n%s", grep(metrics, "minimesh_requests_total"))
	}
	if l := r.logLines(t); len(l) != 1 || l[0]["error"] != "connect-failure" || l[0]["status"] != float64(502) {
		t.Errorf("access log %v", l)
	}
}

// TestAppClosingIsPassedOn: an app that closes its connection after an
// answer (a Go server shutting down says Connection: close) has the
// caller's connection closed too, so that the caller's next request goes
// through the Service to another pod; an app that keeps its connections
// keeps the caller's.
func TestAppClosingIsPassedOn(t *testing.T) {
	for _, closing := range []bool{false, true} {
		r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if closing {
				w.Header().Set("Connection", "close")
			}
			io.WriteString(w, "ok")
		}), Config{})
		resp, err := http.Get("http://" + r.front + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Close != closing {
			t.Errorf("app closing %v: %d, caller's connection closed %v", closing, resp.StatusCode, resp.Close)
		}
	}
}

// TestServeHTTPRefused: what never reaches the app: a CONNECT or an
// absolute-form request on an inbound connection (400), and a connection
// whose original destination is one of the sidecar's own ports (closed
// without an answer).
func TestServeHTTPRefused(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "app") }), Config{})
	for _, line := range []string{"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"} {
		c, err := net.Dial("tcp", r.front)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, line)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != 400 || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorBadRequest {
			t.Errorf("%q: %v %v", line, resp, err)
		}
	}
	select {
	case req := <-r.seen:
		t.Errorf("the app saw %s %s", req.Method, req.URL)
	default:
	}

	own := New(Config{OwnPorts: []uint16{wellknown.AdminPort}, LocalAddr: loopbackIsLocal, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv := httptest.NewUnstartedServer(own)
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return own.WithOriginalDst(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), wellknown.AdminPort))
	}
	srv.Config.ErrorLog = nil
	srv.Start()
	defer srv.Close()
	if resp, err := http.Get(srv.URL + "/debug/breakers"); err == nil {
		resp.Body.Close()
		t.Errorf("a request for the sidecar's admin port through the inbound path got %s", resp.Status)
	}
}

// TestServeTCP: an opaque connection into the pod is relayed byte for
// byte (a half-close passed on) and counted with direction="inbound"; an
// app that does not listen resets the caller's connection; a connection
// whose original destination is the sidecar's own port is reset without
// a dial, and so is one whose original destination is another host's
// (counted as destination="other"). No breaker in any case.
func TestServeTCP(t *testing.T) {
	echoAddr := tcpApp(t, func(c net.Conn) {
		s := bufio.NewScanner(c)
		for s.Scan() {
			io.WriteString(c, "echo: "+s.Text()+"\n")
		}
	})
	deadAddr := netip.MustParseAddrPort(refused.Addr(t))
	own := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), wellknown.AdminPort)

	tests := []struct {
		name   string
		orig   netip.AddrPort
		want   string // what the caller reads after sending "hi\n" and half-closing
		result string
		dest   string // the metric's destination; "": the original port
	}{
		{"relayed", echoAddr, "echo: hi\n", "ok", ""},
		// Ports never reached count under "other" (portMetric).
		{"app down", deadAddr, "", "connect-failure", "other"},
		{"own port", own, "", "forbidden", "other"},
		// The echo's port on another host: never dialled.
		{"foreign", netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), echoAddr.Port()), "", "forbidden", "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := telemetry.New(0)
			out := &syncBuffer{}
			log := telemetry.NewAccessLog(out)
			h := New(Config{Metrics: m, AccessLog: log, OwnPorts: []uint16{wellknown.AdminPort, wellknown.InboundPort},
				LocalAddr: loopbackIsLocal, ConnectTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			client, server := tcpPair(t)
			done := make(chan struct{})
			go func() {
				h.ServeTCP(&transparent.Conn{Conn: server, Original: tt.orig, Protocol: transparent.Unknown})
				close(done)
			}()
			_, werr := io.WriteString(client, "hi\n")
			cerr := client.(*net.TCPConn).CloseWrite()
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(client)
			if string(got) != tt.want {
				t.Errorf("caller read %q (%v), want %q", got, err, tt.want)
			}
			if tt.want == "" && !isReset(werr) && !isReset(cerr) && !isReset(err) {
				t.Errorf("caller's connection ended cleanly (%v, %v, %v); want a reset", werr, cerr, err)
			}
			<-done
			port := strconv.Itoa(int(tt.orig.Port()))
			if tt.dest != "" {
				port = tt.dest
			}
			metrics := gather(t, m)
			series := `minimesh_tcp_connections_total{destination="` + port + `",direction="inbound",result="` + tt.result + `"} 1`
			if !strings.Contains(metrics, series) {
				t.Errorf("want %s in\n%s", series, grep(metrics, "minimesh_tcp_"))
			}
			if tt.result == "ok" && !strings.Contains(metrics, `minimesh_tcp_sent_bytes_total{destination="`+port+`",direction="inbound"} 3`) {
				t.Errorf("bytes not counted:\n%s", grep(metrics, "minimesh_tcp_"))
			}
			if strings.Contains(metrics, "minimesh_circuit_breaker") && strings.Contains(grep(metrics, "minimesh_circuit_breaker"), port) {
				t.Errorf("an inbound port got a breaker:\n%s", grep(metrics, "minimesh_circuit_breaker"))
			}
			log.Close()
			var l map[string]any
			if err := json.Unmarshal([]byte(out.String()), &l); err != nil || l["direction"] != "inbound" || l["destination"] != port || l["protocol"] != "unknown" {
				t.Errorf("access log %q (%v)", out.String(), err)
			}
			if tt.result != "ok" && l["error"] != tt.result {
				t.Errorf("access log error %v, want %s", l["error"], tt.result)
			}
		})
	}
}

// tcpPair is a connected pair of TCP connections on loopback.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func gather(t *testing.T, m *telemetry.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Registry.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestServeHTTPUpgrade: an Upgrade (a WebSocket) into the pod passes
// through: the app's 101, then bytes both ways.
func TestServeHTTPUpgrade(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Upgrade") != "echo" {
			w.WriteHeader(400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(c, "echo: "+line)
	}), Config{})
	c, err := net.Dial("tcp", r.front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get(wellknown.HeaderRequestID) == "" {
		t.Fatalf("%v %v", resp, err)
	}
	io.WriteString(c, "hi\n")
	if got, err := br.ReadString('\n'); err != nil || got != "echo: hi\n" {
		t.Errorf("after the upgrade: %q, %v", got, err)
	}
	c.Close()
	// The line is written when the upgraded connection has ended (the
	// log flushes every 200 ms).
	for deadline := time.Now().Add(5 * time.Second); r.logOut.String() == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
	}
	if l := r.logLines(t); len(l) != 1 || l[0]["status"] != float64(101) || l[0]["direction"] != "inbound" {
		t.Errorf("access log %v", l)
	}
}

// TestServeHTTPAppStatusUnder100: an app answering a status under 100
// (http.ReadResponse reads any three digits) gets the caller the sidecar's
// 502 reset, counted and logged, not a panic in WriteHeader that drops
// the caller's connection unrecorded.
func TestServeHTTPAppStatusUnder100(t *testing.T) {
	r := newRig(t, http.NotFoundHandler(), Config{})
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")
		}
	})
	app := netip.MustParseAddrPort(addr)
	r.app = app
	front := httptest.NewUnstartedServer(r.h)
	front.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context { return r.h.WithOriginalDst(ctx, app) }
	front.Start()
	defer front.Close()
	resp, err := http.Get(front.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 502 || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorReset || !strings.Contains(body["message"], "status code 099") {
		t.Errorf("got %d %v %v, want 502 reset naming the status", resp.StatusCode, resp.Header, body)
	}
	port := strconv.Itoa(int(app.Port()))
	if metrics := gather(t, r.m); !strings.Contains(metrics, `minimesh_requests_total{code="502",destination="`+port+`",direction="inbound",method="GET"} 1`) {
		t.Errorf("502 not counted:\n%s", grep(metrics, "minimesh_requests_total"))
	}
}
