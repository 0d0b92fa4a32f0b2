package outbound_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// tracedTries is an upstream that fails the first try with 503 and
// records the trace fields every try brought.
type tracedTries struct {
	mu     sync.Mutex
	fields []http.Header
}

func (u *tracedTries) handler(w http.ResponseWriter, r *http.Request, n int64) {
	h := http.Header{}
	for _, k := range []string{"Traceparent", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "B3", "X-B3-Flags"} {
		if v, ok := r.Header[k]; ok {
			h[k] = v
		}
	}
	u.mu.Lock()
	u.fields = append(u.fields, h)
	u.mu.Unlock()
	if n == 1 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

// TestTriesTraceContext: with retries, each try of a recorded request
// goes upstream as a span of its own (the upstream's span hangs under the
// try it served); the tries of a request not recorded (the app's trace
// says not sampled, or the ratio left it out) carry the request's own
// span, the one its access log line names, marked not sampled. Both ways
// the W3C and B3 fields agree, and the app's trace goes on.
func TestTriesTraceContext(t *testing.T) {
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	for _, c := range []struct {
		name, traceparent string
		ratio             float64
		sampled           bool
	}{
		{"app sampled", "00-" + traceID + "-b7ad6b7169203331-01", 0, true},
		{"app not sampled", "00-" + traceID + "-b7ad6b7169203331-00", 1, false},
		{"new trace left out", "", 0, false},
		{"new trace recorded", "", 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var u tracedTries
			up := newUpstream(t, u.handler)
			var alog accessLog
			sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), resolve(up.Host(), geo),
				withAccessLog(&alog), func(cfg *sidecar.Config) {
					// Nobody answers there: spans are made, then dropped.
					cfg.OTLPEndpoint, cfg.TraceSampleRatio = "127.0.0.1:1", c.ratio
				})
			req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/x", nil)
			if c.traceparent != "" {
				req.Header.Set("Traceparent", c.traceparent)
			}
			if resp, body := fetch(t, sc.Client(), req); resp.StatusCode != http.StatusOK {
				t.Fatalf("%d %s, want 200 after a retry", resp.StatusCode, body)
			}
			line := alog.wait(t, 1, 5*time.Second)[0]
			u.mu.Lock()
			tries := u.fields
			u.mu.Unlock()
			if len(tries) != 2 {
				t.Fatalf("%d tries reached the upstream, want 2", len(tries))
			}
			flag, sampled := "-00", "0"
			if c.sampled {
				flag, sampled = "-01", "1"
			}
			var spans []string
			for i, h := range tries {
				tp := h.Get("Traceparent")
				parts := strings.Split(tp, "-")
				if len(parts) != 4 || !strings.HasSuffix(tp, flag) || (c.traceparent != "" && parts[1] != traceID) {
					t.Fatalf("try %d: traceparent %q, want the app's trace, flags %s", i+1, tp, flag[1:])
				}
				if h.Get("X-B3-Traceid") != parts[1] || h.Get("X-B3-Spanid") != parts[2] || h.Get("X-B3-Sampled") != sampled {
					t.Errorf("try %d: B3 fields %v disagree with traceparent %q", i+1, h, tp)
				}
				if parts[1] != line.TraceID {
					t.Errorf("try %d: trace %s, the access log's %s", i+1, parts[1], line.TraceID)
				}
				spans = append(spans, parts[2])
			}
			if c.sampled {
				if spans[0] == spans[1] || spans[0] == line.SpanID || spans[1] == line.SpanID {
					t.Errorf("recorded: tries sent spans %v, request span %s: want a span of each try's own", spans, line.SpanID)
				}
			} else if spans[0] != line.SpanID || spans[1] != line.SpanID {
				t.Errorf("not recorded: tries sent spans %v, want the request's own span %s", spans, line.SpanID)
			}
		})
	}
}
