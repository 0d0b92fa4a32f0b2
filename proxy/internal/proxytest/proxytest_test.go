package proxytest

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	const text = `# HELP minimesh_requests_total Requests.
# TYPE minimesh_requests_total counter
minimesh_requests_total{code="200",destination="geo-service:8000"} 3
minimesh_requests_total{code="503",destination="geo-service:8000"} 2
minimesh_requests_total{code="200",destination="a \"quoted\\\" one"} 1
minimesh_request_duration_seconds_bucket{destination="geo-service:8000",le="+Inf"} 5
minimesh_build_info 1
`
	ms, err := ParseMetrics(text)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
		found  bool
	}{
		{"minimesh_requests_total", nil, 6, true},
		{"minimesh_requests_total", []string{"destination", "geo-service:8000"}, 5, true},
		{"minimesh_requests_total", []string{"destination", "geo-service:8000", "code", "503"}, 2, true},
		{"minimesh_requests_total", []string{"destination", `a "quoted\" one`}, 1, true},
		{"minimesh_requests_total", []string{"code", "504"}, 0, false},
		{"minimesh_request_duration_seconds_bucket", []string{"le", "+Inf"}, 5, true},
		{"minimesh_build_info", nil, 1, true},
		{"minimesh_nothing", nil, 0, false},
	} {
		if got, found := ms.Value(c.name, c.labels...); got != c.want || found != c.found {
			t.Errorf("Value(%s, %q) = %v, %v; want %v, %v", c.name, c.labels, got, found, c.want, c.found)
		}
	}
	if _, err := ParseMetrics("not a sample line at all\n"); err == nil {
		t.Error("ParseMetrics of a bad line: no error")
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if !Poll(time.Second, time.Millisecond, func() bool { n++; return n == 3 }) || n != 3 {
		t.Errorf("Poll: n = %d, want true at 3", n)
	}
	start := time.Now()
	if Poll(20*time.Millisecond, time.Millisecond, func() bool { return false }) {
		t.Error("Poll of a false condition: true")
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Poll gave up after %v, before its 20ms", d)
	}
}

func TestReplaceFile(t *testing.T) {
	name := filepath.Join(t.TempDir(), "geo.yaml")
	WriteFile(t, name, BrokenPolicy)
	ReplaceFile(t, name, GeoPolicy(3))
	b, err := os.ReadFile(name)
	if err != nil || string(b) != GeoPolicy(3) {
		t.Errorf("after ReplaceFile: %q, %v", b, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(name)); len(entries) != 1 {
		t.Errorf("ReplaceFile left %d files, want 1", len(entries))
	}
}

func TestUpstream(t *testing.T) {
	u := NewUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		io.WriteString(w, "hello")
	})
	for i := 0; i < 2; i++ {
		if code, body := Get(u.URL); code != 200 || body != "hello" {
			t.Fatalf("GET: %d %q", code, body)
		}
	}
	if u.Hits.Load() != 2 || len(u.Arrived) != 2 {
		t.Errorf("hits %d, arrived %d; want 2, 2", u.Hits.Load(), len(u.Arrived))
	}
	<-u.Arrived
	<-u.Arrived
	u.Delay.Store(int64(200 * time.Millisecond))
	res := GetAsync(http.DefaultClient, u.URL)
	u.AwaitRequest(t, 5*time.Second)
	select {
	case x := <-res:
		t.Fatalf("answered during the delay: %+v", x)
	default:
	}
	if x := <-res; x.Err != nil || x.Code != 200 || x.Body != "hello" {
		t.Errorf("GetAsync: %+v", x)
	}
	if u.Host() != u.Listener.Addr().String() || "http://"+u.Host() != u.URL {
		t.Errorf("Host() = %q, URL %q", u.Host(), u.URL)
	}
}
