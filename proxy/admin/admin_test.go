package admin_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/internal/promtext"
	"github.com/minimesh/minimesh/proxy/admin"
)

type fakeBreakers struct{ reset []string }

func (f *fakeBreakers) Breakers() any {
	return []map[string]any{{"destination": "geo-service:8000", "state": "open"}}
}

func (f *fakeBreakers) ResetBreaker(d string) (string, bool) {
	if d != "geo-service:8000" {
		return "", false
	}
	f.reset = append(f.reset, d)
	return d, true
}

func newServer(t *testing.T) (*admin.Server, *fakeBreakers) {
	t.Helper()
	reg := promtext.NewRegistry()
	c := promtext.NewCounterVec("minimesh_test_total", "A test counter.")
	c.With().Add(3)
	reg.MustRegister(c)
	fb := &fakeBreakers{}
	return admin.New(reg, fb, func() any { return map[string]string{"dir": "/etc/minimesh"} }), fb
}

// do serves one request in process; remote is the client's address.
func do(s http.Handler, method, target, remote string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

const (
	podNetwork = "10.1.2.3:1234"
	loopback4  = "127.0.0.1:40000"
	loopback6  = "[::1]:40000"
)

func TestHealth(t *testing.T) {
	s, _ := newServer(t)
	for _, remote := range []string{podNetwork, loopback4} {
		if w := do(s, "GET", "/live", remote); w.Code != 200 {
			t.Errorf("/live from %s: %d, want 200", remote, w.Code)
		}
		if w := do(s, "GET", "/ready", remote); w.Code != 503 {
			t.Errorf("/ready before SetReady from %s: %d, want 503", remote, w.Code)
		}
	}
	s.SetReady(true)
	if w := do(s, "GET", "/ready", podNetwork); w.Code != 200 {
		t.Errorf("/ready after SetReady(true): %d, want 200", w.Code)
	}
	s.SetReady(false)
	if w := do(s, "GET", "/ready", podNetwork); w.Code != 503 {
		t.Errorf("/ready after SetReady(false): %d, want 503", w.Code)
	}
}

func TestMetrics(t *testing.T) {
	s, _ := newServer(t)
	// Prometheus scrapes on the pod IP: not loopback only.
	w := do(s, "GET", "/metrics", podNetwork)
	if w.Code != 200 {
		t.Fatalf("/metrics: %d", w.Code)
	}
	if body := w.Body.String(); !strings.Contains(body, "minimesh_test_total 3") {
		t.Errorf("/metrics lacks the registry's counter:\n%s", body)
	}
}

func TestDebugLoopbackOnly(t *testing.T) {
	s, fb := newServer(t)
	endpoints := []struct{ method, target string }{
		{"GET", "/debug/breakers"},
		{"GET", "/debug/config"},
		{"POST", "/debug/breakers/reset?destination=geo-service:8000"},
	}
	for _, e := range endpoints {
		for _, remote := range []string{podNetwork, "[fd00::1]:1234", "[::ffff:10.1.2.3]:1234", "garbage"} {
			w := do(s, e.method, e.target, remote)
			if w.Code != http.StatusForbidden {
				t.Errorf("%s %s from %s: %d, want 403", e.method, e.target, remote, w.Code)
			}
		}
		for _, remote := range []string{loopback4, loopback6, "[::ffff:127.0.0.1]:1"} {
			w := do(s, e.method, e.target, remote)
			if w.Code != http.StatusOK {
				t.Errorf("%s %s from %s: %d, want 200 (%s)", e.method, e.target, remote, w.Code, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s %s: Content-Type %q", e.method, e.target, ct)
			}
			if !json.Valid(w.Body.Bytes()) {
				t.Errorf("%s %s: body is not JSON: %s", e.method, e.target, w.Body)
			}
		}
	}
	// Only the loopback resets got through.
	if len(fb.reset) != 3 {
		t.Errorf("%d resets reached the breakers, want 3 (loopback only)", len(fb.reset))
	}
}

func TestDebugBodies(t *testing.T) {
	s, _ := newServer(t)
	var b struct {
		Destinations []map[string]any `json:"destinations"`
	}
	w := do(s, "GET", "/debug/breakers", loopback4)
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || len(b.Destinations) != 1 || b.Destinations[0]["destination"] != "geo-service:8000" {
		t.Errorf("/debug/breakers: %v %s", err, w.Body)
	}
	var c map[string]string
	w = do(s, "GET", "/debug/config", loopback4)
	if err := json.Unmarshal(w.Body.Bytes(), &c); err != nil || c["dir"] != "/etc/minimesh" {
		t.Errorf("/debug/config: %v %s", err, w.Body)
	}
}

func TestReset(t *testing.T) {
	s, fb := newServer(t)
	cases := []struct {
		method, target string
		code           int
	}{
		{"POST", "/debug/breakers/reset", http.StatusBadRequest},
		{"POST", "/debug/breakers/reset?destination=", http.StatusBadRequest},
		{"POST", "/debug/breakers/reset?destination=nope-service:8000", http.StatusNotFound},
		{"GET", "/debug/breakers/reset?destination=geo-service:8000", http.StatusMethodNotAllowed},
		{"POST", "/debug/breakers/reset?destination=geo-service:8000", http.StatusOK},
	}
	for _, c := range cases {
		w := do(s, c.method, c.target, loopback4)
		if w.Code != c.code {
			t.Errorf("%s %s: %d, want %d (%s)", c.method, c.target, w.Code, c.code, w.Body)
		}
	}
	if len(fb.reset) != 1 {
		t.Errorf("resets: %v, want one", fb.reset)
	}
	// A state-changing endpoint must not answer GET from anyone, nor be
	// reachable from the network by any method.
	if w := do(s, "GET", "/debug/breakers/reset?destination=geo-service:8000", podNetwork); w.Code == http.StatusOK {
		t.Errorf("GET reset from the network: %d", w.Code)
	}
}
