package outbound_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

func withStreamIdleTimeout(d time.Duration) sidecarOpt {
	return func(c *sidecar.Config) { c.StreamIdleTimeout = d }
}

// serveH2C serves h on a new listener, HTTP/1.1 and h2c, and returns its
// address.
func serveH2C(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// --request-body-timeout is the app's silence while the upstream waits
// for its body, not the upstream's time: a body-less HTTP/2 request (its
// server hands over an empty body, never read) whose upstream answers
// after the limit, and a whole upload the upstream reads only after the
// limit (flow control holds the app's bytes back meanwhile), get the
// upstream's answer. Before 2026-12-07 the h2c GET and DELETE, and the
// 16 MiB uploads, got the sidecar's 408 at the limit, blaming the app.
func TestBodyTimeoutSparesUpstreamDelay(t *testing.T) {
	// The limit is the app's silence allowed: 700 ms, as a loaded 2-core
	// machine under -race has stalled a 16 MiB upload's writer 300 ms.
	const limit, delay = 700 * time.Millisecond, 2 * time.Second
	up := serveH2C(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay) // busy before it reads or answers
		n, _ := io.Copy(io.Discard, r.Body)
		io.WriteString(w, strconv.FormatInt(n, 10))
	})
	sc := startSidecar(t, "", resolve(up, healthSvc), withRequestBodyTimeout(limit))
	for _, cl := range []struct {
		name string
		c    *http.Client
	}{{"HTTP/1.1", &http.Client{}}, {"h2c", h2cClient(t)}} {
		for _, tc := range []struct {
			method string
			size   int
		}{{http.MethodGet, 0}, {http.MethodDelete, 0}, {http.MethodPost, 16 << 20}} {
			t.Run(cl.name+" "+tc.method, func(t *testing.T) {
				var body io.Reader
				if tc.size > 0 {
					body = bytes.NewReader(make([]byte, tc.size))
				}
				req, err := http.NewRequest(tc.method, "http://"+sc.Addr+"/slow", body)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = healthSvc
				resp, err := cl.c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != strconv.Itoa(tc.size) {
					t.Fatalf("status %d, X-Minimesh-Error %q, body %q: want the upstream's 200 counting %d bytes",
						resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), b, tc.size)
				}
			})
		}
	}
}

// An HTTP/2 stream without a content-length, not gRPC (a Connect
// bidirectional call), whose app sends its first message and waits for
// the answer before the next, goes upstream at once under a policy with
// retries, as a gRPC call does. Before 2026-12-07 the sidecar read it
// ahead (up to 64 KiB or its end) to resend it, and the call deadlocked:
// no upstream dialled, no answer ever.
func TestH2StreamWithRetriesIsNotReadAhead(t *testing.T) {
	up := serveH2C(t, func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		n, _ := r.Body.Read(buf)
		w.Write(buf[:n]) // the first message's answer, at once
		w.(http.Flusher).Flush()
		io.Copy(io.Discard, r.Body)
	})
	for _, tc := range []struct{ name, spec string }{
		{"no retries", "circuitBreaker: {consecutiveFailures: 5}\n"},
		{"retries on connect-failure", "retries: {attempts: 2, retryOn: [connect-failure]}\n"},
		{"retries on 503", "retries: {attempts: 2, retryOn: [\"503\"]}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := startSidecar(t, policyDoc("s", "health-service", tc.spec), resolve(up, healthSvc))
			pr, pw := io.Pipe()
			defer pw.Close()
			req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+"/pkg.Svc/Chat", pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Host, req.ContentLength = healthSvc, -1
			req.Header.Set("Content-Type", "application/connect+proto")
			got := make(chan string, 1)
			go func() {
				resp, err := h2cClient(t).Do(req)
				if err != nil {
					got <- err.Error()
					return
				}
				defer resp.Body.Close()
				b := make([]byte, 5)
				n, _ := io.ReadFull(resp.Body, b)
				got <- resp.Status + " " + string(b[:n])
			}()
			pw.Write([]byte("hello"))
			select {
			case s := <-got:
				if s != "200 OK hello" {
					t.Fatalf("answer %q, want the upstream's 200 echoing the first message", s)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no answer to the first message after 10 s: the body was read ahead of the upstream")
			}
		})
	}
}

// An app-paced stream (a gRPC call, an HTTP/2 body without a
// content-length) that moves no byte either way for the stream idle
// limit is ended as the sidecar's timeout: 504 before the upstream's
// headers, DEADLINE_EXCEEDED for gRPC, a reset after the headers. Before
// 2026-12-07 such a stream, under a policy without a timeout, was held
// for ever. A stream that keeps moving, slower than the limit as a whole,
// is not ended.
func TestStreamIdleEndsQuietStreams(t *testing.T) {
	const idle = 400 * time.Millisecond
	up := serveH2C(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/headers-first" {
			io.WriteString(w, "x") // the app has the headers and a byte
			w.(http.Flusher).Flush()
		}
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		if r.Header.Get("Content-Type") == "application/grpc" {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			w.Write([]byte{0, 0, 0, 0, 1, byte(n)})
			w.Header().Set("Grpc-Status", "0")
			return
		}
		io.WriteString(w, strconv.FormatInt(n, 10))
	})
	sc := startSidecar(t, "", resolve(up, healthSvc), withStreamIdleTimeout(idle))
	for _, tc := range []struct {
		name, path, contentType string
		beats                   int    // bytes sent idle/5 apart before the body ends; 0: one, then silence
		want                    string // status, X-Minimesh-Error, grpc-status; or the body's read error
	}{
		{"quiet HTTP/2 stream", "/quiet", "application/octet-stream", 0, "504 timeout "},
		{"quiet gRPC call", "/pkg.Svc/Upload", "application/grpc", 0, "200 timeout 4"},
		{"quiet after the headers", "/headers-first", "application/octet-stream", 0, "200  cut"},
		{"slow but moving", "/moving", "application/octet-stream", 15, "200  15"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+tc.path, pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Host, req.ContentLength = healthSvc, -1
			req.Header.Set("Content-Type", tc.contentType)
			got := make(chan string, 1)
			go func() {
				resp, err := h2cClient(t).Do(req)
				if err != nil {
					got <- err.Error()
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				res := string(b)
				if tc.contentType == "application/grpc" {
					res = resp.Trailer.Get("Grpc-Status") + resp.Header.Get("Grpc-Status")
				} else if err != nil {
					res = "cut"
				} else if resp.StatusCode != http.StatusOK {
					res = "" // the sidecar's JSON
				}
				got <- strconv.Itoa(resp.StatusCode) + " " + resp.Header.Get("X-Minimesh-Error") + " " + res
			}()
			go func() {
				if tc.beats == 0 {
					pw.Write([]byte{0})
					return
				}
				for range tc.beats {
					pw.Write([]byte{0})
					time.Sleep(idle / 5)
				}
				pw.Close()
			}()
			select {
			case s := <-got:
				if s != tc.want {
					t.Fatalf("got %q, want %q", s, tc.want)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("no end after 15 s, %v of stream idle limit", idle)
			}
		})
	}
}
