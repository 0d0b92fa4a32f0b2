package outbound_test

// Issue #11, item 4 (a): informational (1xx) responses on the fast path
// are passed on to the app and followed by the final answer; an upstream
// that sends no end of them gets a 502 reset. The same holds through
// http.Transport (GET with StdTransport), so that the bound does not
// depend on the path a request takes.

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"testing"
)

func TestInformationalResponses(t *testing.T) {
	const hint = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
	const final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for _, tc := range []struct {
		name    string
		hints   int
		wantOK  bool
		failure uint32
	}{
		{"one 103", 1, true, 0},
		{"five 103", 5, true, 0},
		{"six 103", 6, false, 1},
		{"endless 103", 1000, false, 1},
	} {
		for _, p := range []struct {
			name string
			opts []sidecarOpt
		}{
			{"fast", nil},
			{"transport", []sidecarOpt{withStdTransport()}},
		} {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				addr, hits := newRawUpstream(t, func(c net.Conn, _ *http.Request) {
					for range tc.hints {
						if _, err := io.WriteString(c, hint); err != nil {
							return // the sidecar gave up on the answer
						}
					}
					_, _ = io.WriteString(c, final)
				})
				sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 5, openTimeout: 30s}"), resolve(addr, geo), p.opts...)
				var mu sync.Mutex
				var got []int
				var links []string
				trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					mu.Lock()
					defer mu.Unlock()
					got = append(got, code)
					links = append(links, h.Get("Link"))
					return nil
				}}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "http://"+geo+"/page", nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, body := fetch(t, sc.Client(), req)
				mu.Lock()
				defer mu.Unlock()
				if tc.wantOK {
					if resp.StatusCode != http.StatusOK || string(body) != "ok" {
						t.Fatalf("%d %q, want the upstream's 200 \"ok\"", resp.StatusCode, body)
					}
					if len(got) != tc.hints {
						t.Errorf("the app saw %d informational responses %v, want %d", len(got), got, tc.hints)
					}
				} else {
					expectSidecarError(t, resp, body, http.StatusBadGateway, "reset", geo)
					if len(got) > 5 {
						t.Errorf("the app was sent %d informational responses, want at most 5", len(got))
					}
				}
				for i, code := range got {
					if code != http.StatusEarlyHints || links[i] != "</a.css>; rel=preload" {
						t.Errorf("informational response %d: %d with Link %q, want 103 with the upstream's Link", i+1, code, links[i])
					}
				}
				if n := hits.Load(); n != 1 {
					t.Errorf("upstream saw %d requests, want 1", n)
				}
				st := sc.breaker(geo)
				if st.Counts.Requests != 1 || st.Counts.TotalFailures != tc.failure {
					t.Errorf("breaker counts %+v, want 1 request with %d failures", st.Counts, tc.failure)
				}
				code := "200"
				if !tc.wantOK {
					code = "502"
				}
				if n := sc.metric("minimesh_requests_total", "destination", geo, "code", code); n != 1 {
					t.Errorf("requests_total{code=%s} = %v, want 1", code, n)
				}
			})
		}
	}
}
