package outbound

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestEveryTransportFoldsCase: the spellings of one host in any case
// share one upstream connection on every transport. Before, each was a
// pool of its own ("localhost", "LOCALHOST" and "Localhost" to one port
// held idle connections each); then, folded in the fast transport's key
// only, Go's HTTP/1 transport (--std-transport, and streamed bodies on
// the fast path's side) and the h2c one still opened a connection per
// spelling, the URL they were given keeping the app's case.
func TestEveryTransportFoldsCase(t *testing.T) {
	for _, tc := range []struct {
		name string
		std  bool
		send func(t *testing.T, px, name string) // one request to name through the sidecar at px
	}{
		{"the fast transport", false, func(t *testing.T, px, name string) {
			get(t, px, http.MethodGet, "http://"+name+"/", nil)
		}},
		{"Go's transport", true, func(t *testing.T, px, name string) {
			get(t, px, http.MethodGet, "http://"+name+"/", nil)
		}},
		{"a streamed body", false, func(t *testing.T, px, name string) {
			pr, pw := io.Pipe()
			go func() { _, _ = pw.Write(make([]byte, 100<<10)); pw.Close() }()
			get(t, px, http.MethodPost, "http://"+name+"/", pr) // unknown length: Go's transport
		}},
		{"h2c", false, func(t *testing.T, px, name string) {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			c := &http.Client{Transport: &http.Transport{Protocols: &p}}
			defer c.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodPost, px+"/grpc.health.v1.Health/Check", bytes.NewReader(make([]byte, 5)))
			req.Host = name
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if g := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status"); g != "0" {
				t.Fatalf("%s: grpc-status %q (%s)", name, g, resp.Header.Get("X-Minimesh-Error"))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opened atomic.Int32
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if r.Header.Get("Content-Type") == "application/grpc" {
					w.Header().Set("Content-Type", "application/grpc")
					w.Header().Set("Grpc-Status", "0")
					return
				}
				_, _ = io.WriteString(w, "ok")
			}), ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					opened.Add(1)
				}
			}}
			go func() { _ = up.Serve(ln) }()
			defer up.Close()
			h := New(Config{Metrics: telemetry.New(0), Namespace: "shop", StdTransport: tc.std,
				Resolve: map[string]string{"geo-service:8000": ln.Addr().String()}}, policy.NewTable(nil, "shop"))
			pl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			px := &http.Server{Handler: h, Protocols: ServerProtocols()}
			go func() { _ = px.Serve(pl) }()
			defer px.Close()
			for _, name := range []string{"geo-service:8000", "GEO-SERVICE:8000", "Geo-Service:8000", "geo-SERVICE:8000"} {
				tc.send(t, "http://"+pl.Addr().String(), name)
			}
			if n := opened.Load(); n != 1 {
				t.Errorf("the upstream saw %d connections for 4 spellings of one host, want 1", n)
			}
		})
	}
}

// get sends one request to target through the HTTP proxy at px and
// wants its 200.
func get(t *testing.T, px, method, target string, body io.Reader) {
	t.Helper()
	pu, _ := url.Parse(px)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(method, target, body)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d (%s)", method, target, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
	}
}
