package outbound

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
)

// proxyFor starts the handler with policies from YAML, resolving every
// authority in names to the upstream.
func proxyFor(t *testing.T, yaml string, upstream string, mutate func(*Config), names ...string) *http.Client {
	t.Helper()
	pols, err := policy.Decode("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(upstream)
	res := map[string]string{}
	for _, n := range names {
		res[n] = u.Host
	}
	cfg := Config{Metrics: telemetry.New(0), Resolve: res, Namespace: "default"}
	if mutate != nil {
		mutate(&cfg)
	}
	px := httptest.NewServer(New(cfg, policy.NewTable(pols, "default")))
	t.Cleanup(px.Close)
	pu, _ := url.Parse(px.URL)
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
}

func status(t *testing.T, c *http.Client, method, u, body string) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

const doc = "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: %s}\nspec:\n  service: %s\n  circuitBreaker: {consecutiveFailures: %s}\n---\n"

func pol(name, svc, n string) string { return fmt.Sprintf(doc, name, svc, n) }

// A body over --max-request-body-bytes is the app's fault: 413, and the
// upstream's breaker does not count it.
func TestOversizedBodyIsNotAnUpstreamFailure(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	c := proxyFor(t, pol("geo", "geo-service", "2"), up.URL, func(cfg *Config) { cfg.MaxRequestBody = 1024 }, "geo-service:80")
	for i := range 3 {
		if code, h := status(t, c, http.MethodPost, "http://geo-service/", strings.Repeat("x", 64<<10)); code != http.StatusRequestEntityTooLarge || h.Get(wellknown.HeaderError) != wellknown.ErrorBadRequest {
			t.Fatalf("upload %d: %d %q, want 413 bad-request", i+1, code, h.Get(wellknown.HeaderError))
		}
	}
	if code, _ := status(t, c, http.MethodGet, "http://geo-service/", ""); code != http.StatusOK {
		t.Fatalf("GET after 3 oversized uploads: %d, want 200 (breaker must stay closed)", code)
	}
}

// Two spellings of one service with a policy each: each spelling gets its
// own policy, whichever was called first.
func TestSpellingWithItsOwnPolicyKeepsIt(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	defer up.Close()
	yaml := pol("short", "auth-service", "5") + pol("long", "auth-service.default.svc.cluster.local", "1")
	short, long := "http://auth-service:8000/", "http://auth-service.default.svc.cluster.local:8000/"
	for _, order := range [][]string{{short, long}, {long, short}} {
		c := proxyFor(t, yaml, up.URL, nil, "auth-service:8000", "auth-service.default.svc.cluster.local:8000")
		for _, u := range order {
			status(t, c, http.MethodGet, u, "")
		}
		if code, _ := status(t, c, http.MethodGet, long, ""); code != http.StatusServiceUnavailable {
			t.Errorf("order %v: long spelling (1 failure opens) answered %d, want 503", order, code)
		}
		if code, _ := status(t, c, http.MethodGet, short, ""); code != http.StatusInternalServerError {
			t.Errorf("order %v: short spelling (5 failures open) answered %d, want the upstream's 500", order, code)
		}
	}
}

// A request addressed to the listener it arrived on is refused before a
// connection is made, with an ID to quote.
func TestSelfAnswerCarriesRequestID(t *testing.T) {
	px := httptest.NewServer(New(Config{Metrics: telemetry.New(0)}, policy.NewTable(nil, "default")))
	defer px.Close()
	resp, err := http.Get(px.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorForbidden || resp.Header.Get(wellknown.HeaderRequestID) == "" {
		t.Fatalf("%d %q, X-Request-ID %q: want 403 forbidden with an ID", resp.StatusCode, resp.Header.Get(wellknown.HeaderError), resp.Header.Get(wellknown.HeaderRequestID))
	}
}

// Retry-After is the whole seconds until half-open, rounded up: right
// after the breaker opens with openTimeout 60s it is 60 (59 if a second
// passed in between), in the header and in the JSON body.
func TestRetryAfterIsSecondsUntilHalfOpen(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	defer up.Close()
	yaml := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo-service\n  circuitBreaker: {consecutiveFailures: 1, openTimeout: 60s}\n"
	c := proxyFor(t, yaml, up.URL, nil, "geo-service:80")
	if code, _ := status(t, c, http.MethodGet, "http://geo-service/", ""); code != 503 {
		t.Fatalf("first request %d, want the upstream's 503", code)
	}
	resp, err := c.Get("http://geo-service/")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ RetryAfterSeconds int }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	ra := resp.Header.Get("Retry-After")
	if resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorCircuitOpen || (ra != "60" && ra != "59") {
		t.Fatalf("%s %q, Retry-After %q: want circuit-open with 60 (or 59)", resp.Status, resp.Header.Get(wellknown.HeaderError), ra)
	}
	if fmt.Sprint(body.RetryAfterSeconds) != ra {
		t.Fatalf("body retryAfterSeconds %d, header %s", body.RetryAfterSeconds, ra)
	}
}

// retryOn may name a status that failOn does not, such as 429: the
// request is retried although the breaker does not count it.
func TestRetryOnStatusOutsideFailOn(t *testing.T) {
	var hits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer up.Close()
	yaml := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo-service\n  retries: {attempts: 1, retryOn: [\"429\"], backoff: {base: 1ms, max: 1ms}}\n"
	c := proxyFor(t, yaml, up.URL, nil, "geo-service:80")
	if code, _ := status(t, c, http.MethodGet, "http://geo-service/", ""); code != http.StatusOK || hits.Load() != 2 {
		t.Fatalf("status %d after %d tries, want 200 after 2", code, hits.Load())
	}
}

// panicWriter is a ResponseWriter whose Write panics, on the handler's
// goroutine, as a writer of a ReverseProxy's copy may.
type panicWriter struct{ *httptest.ResponseRecorder }

func (panicWriter) Write([]byte) (int, error) { panic("Write refused") }

// TestPanicOnTheWayEndsTheTry: a panic between the upstream's answer and
// the app ends the try all the same: with consecutiveFailures 1 the 500
// it carried opens the breaker, and the next request is refused without
// reaching the upstream. Unended, the try would hold the breaker (for
// good, were it half-open) and its endpoint's in-flight count.
func TestPanicOnTheWayEndsTheTry(t *testing.T) {
	for _, viaRP := range []bool{false, true} {
		t.Run(map[bool]string{false: "fastProxy", true: "ReverseProxy"}[viaRP], func(t *testing.T) {
			var hits atomic.Int32
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				hits.Add(1)
				w.WriteHeader(http.StatusInternalServerError)
				// Longer than one read: the panic comes before the body's end.
				_, _ = w.Write([]byte(strings.Repeat("oops", 64<<10)))
			}))
			defer up.Close()
			pols, err := policy.Decode("p.yaml", []byte(pol("geo", "geo-service", "1")))
			if err != nil {
				t.Fatal(err)
			}
			u, _ := url.Parse(up.URL)
			h := New(Config{Metrics: telemetry.New(0), Resolve: map[string]string{"geo-service:8000": u.Host}, Namespace: "default"},
				policy.NewTable(pols, "default"))
			h.rpOnly.Store(viaRP)
			func() {
				defer func() {
					if recover() == nil {
						t.Fatal("the writer's panic did not come through")
					}
				}()
				h.ServeHTTP(panicWriter{httptest.NewRecorder()}, httptest.NewRequest(http.MethodGet, "http://geo-service:8000/", nil))
			}()
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://geo-service:8000/", nil))
			if w.Code != http.StatusServiceUnavailable || w.Header().Get(wellknown.HeaderError) != wellknown.ErrorCircuitOpen || hits.Load() != 1 {
				t.Fatalf("after the panic: %d %q, upstream hit %d times; want 503 circuit-open and 1 hit", w.Code, w.Header().Get(wellknown.HeaderError), hits.Load())
			}
		})
	}
}
