package inbound

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
)

// TestRequestIDOnlyInHead: the caller's answer carries the sidecar's
// X-Request-ID (here the caller's own) in its head alone, as on the
// outbound path (outbound.AppTransport): the app's is dropped from its
// 103 Early Hints and from its trailers, announced or not, while their
// other fields pass on. Before 2026-12-06 the caller got the app's IDs in
// both. And, as outbound, past 5 informational answers the app's answer
// is a failure (502), not read for ever.
func TestRequestIDOnlyInHead(t *testing.T) {
	const callerID = "caller-id-1"
	for _, tc := range []struct {
		name     string
		announce bool
		hints    int
		wantCode int
	}{
		{"announced trailers", true, 1, 200},
		{"unannounced trailers", false, 1, 200},
		{"too many 1xx", false, 6, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for range tc.hints {
					w.Header().Set("X-Request-Id", "app-1xx-id")
					w.Header().Set("Link", "</a>; rel=preload")
					w.WriteHeader(http.StatusEarlyHints)
				}
				w.Header().Del("Link")
				w.Header().Set("X-Request-Id", "app-final-id")
				if tc.announce {
					w.Header().Set("Trailer", "X-Request-Id, X-Other")
				}
				_, _ = w.Write([]byte("ok"))
				w.(http.Flusher).Flush() // chunked: the only way HTTP/1.1 has trailers
				if tc.announce {
					w.Header().Set("X-Request-Id", "app-trailer-id")
					w.Header().Set("X-Other", "kept")
				} else {
					w.Header().Set(http.TrailerPrefix+"X-Request-Id", "app-trailer-id")
					w.Header().Set(http.TrailerPrefix+"X-Other", "kept")
				}
			}), Config{})
			var mu sync.Mutex
			var hints []textproto.MIMEHeader
			ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
				mu.Lock()
				defer mu.Unlock()
				hints = append(hints, h)
				return nil
			}})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.front+"/x", nil)
			req.Header.Set("X-Request-Id", callerID)
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("%d %q, want %d", resp.StatusCode, body, tc.wantCode)
			}
			if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != callerID {
				t.Errorf("X-Request-ID %q in the head, want only %q", got, callerID)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(hints) == 0 || len(hints) > 5 {
				t.Fatalf("the caller got %d 1xx answers, want 1 to 5", len(hints))
			}
			for _, h := range hints {
				if got := h.Values("X-Request-Id"); len(got) > 0 || h.Get("Link") == "" {
					t.Errorf("103 with X-Request-ID %q and Link %q, want none and the app's Link", got, h.Get("Link"))
				}
			}
			if tc.wantCode != 200 {
				return
			}
			if got, ok := resp.Trailer["X-Request-Id"]; ok {
				t.Errorf("X-Request-ID %q in the trailers (announced or sent), want none", got)
			}
			if got := resp.Trailer.Get("X-Other"); got != "kept" || !strings.Contains(string(body), "ok") {
				t.Errorf("trailer X-Other %q, body %q, want the app's", got, body)
			}
		})
	}
}
