package envoy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/minimesh/minimesh/policy"
)

// retryRequest is a request as the retry rules see it.
type retryRequest struct {
	method string
	grpc   bool // content-type application/grpc
	key    bool // an Idempotency-Key
}

func (r retryRequest) String() string {
	s := r.method
	if r.grpc {
		s = "gRPC " + s
	}
	if r.key {
		s += " with Idempotency-Key"
	}
	return s
}

func (r retryRequest) header(name string) (string, bool) {
	switch name {
	case ":method":
		return r.method, true
	case "content-type":
		if r.grpc {
			return "application/grpc", true
		}
		return "text/plain", true
	case "idempotency-key":
		return "k-1", r.key
	}
	return "", false
}

// The outcomes of a try.
const (
	outConnect     = "connect-failure"
	outRefused     = "REFUSED_STREAM"
	outReset       = "reset"
	out503         = "503"
	outUnavailable = "gRPC UNAVAILABLE" // a trailers-only answer, :status 200
)

// headerMatches models one of Envoy's HeaderMatchers, as the export
// writes them; it fails the test on any other.
func headerMatches(t *testing.T, m *routev3.HeaderMatcher, r retryRequest) bool {
	t.Helper()
	v, ok := r.header(m.Name)
	switch {
	case m.GetPresentMatch():
		return ok
	case m.GetStringMatch() != nil:
		sm := m.GetStringMatch()
		if !ok || sm.IgnoreCase {
			return false
		}
		switch {
		case sm.GetExact() != "":
			return v == sm.GetExact()
		case sm.GetPrefix() != "":
			return strings.HasPrefix(v, sm.GetPrefix())
		case sm.GetSafeRegex() != nil:
			// Envoy's safe_regex matches the whole value (RE2 FullMatch).
			return regexp.MustCompile("^(?:" + sm.GetSafeRegex().Regex + ")$").MatchString(v)
		}
	}
	t.Fatalf("header matcher %v is not modelled", m)
	return false
}

// envoyRetries models Envoy's router: the first route whose header
// matches all match is the request's (RouteMatch.headers); its retry
// policy's retriable_request_headers, if any, must have one that matches
// or nothing is retried (retry_state_impl.cc); then retry_on decides. A
// connection not made or reset, a stream refused, are retried also by
// reset, 5xx and gateway-error (wouldRetryFromReset).
func envoyRetries(t *testing.T, vh *routev3.VirtualHost, r retryRequest, outcome string) bool {
	t.Helper()
	var route *routev3.Route
	for _, rt := range vh.Routes {
		if rt.Match.GetPrefix() != "/" {
			t.Fatalf("route match %v is not modelled", rt.Match)
		}
		all := true
		for _, m := range rt.Match.Headers {
			all = all && headerMatches(t, m, r)
		}
		if all {
			route = rt
			break
		}
	}
	if route == nil {
		t.Fatalf("no route of %s takes %s", vh.Name, r)
	}
	rp := route.GetRoute().RetryPolicy
	if rp == nil || rp.NumRetries.GetValue() == 0 {
		return false
	}
	if len(rp.RetriableRequestHeaders) > 0 && !slices.ContainsFunc(rp.RetriableRequestHeaders, func(m *routev3.HeaderMatcher) bool { return headerMatches(t, m, r) }) {
		return false
	}
	on := strings.Split(rp.RetryOn, ",")
	anyOf := func(names ...string) bool {
		return slices.ContainsFunc(names, func(n string) bool { return slices.Contains(on, n) })
	}
	switch outcome {
	case outConnect:
		return anyOf("connect-failure", "reset", "5xx", "gateway-error")
	case outRefused:
		return anyOf("refused-stream", "reset", "5xx", "gateway-error")
	case outReset:
		return anyOf("reset", "5xx", "gateway-error")
	case out503:
		return anyOf("5xx", "gateway-error") || slices.Contains(on, "retriable-status-codes") && slices.Contains(rp.RetriableStatusCodes, 503)
	case outUnavailable:
		return anyOf("unavailable")
	}
	t.Fatalf("outcome %s is not modelled", outcome)
	return false
}

// minimeshRetries is the sidecar's rule (proxy/outbound, retryable;
// docs/policy.md, "Retries"): an outcome retryOn names, of a request safe
// to repeat: never sent (a connection not made, a stream refused
// unprocessed), an idempotent method, an Idempotency-Key, or a gRPC call
// that ended with a gRPC code retryOn names.
func minimeshRetries(c policy.Conditions, r retryRequest, outcome string) bool {
	safe := r.key || slices.Contains(idempotent, r.method)
	var named bool
	switch outcome {
	case outConnect, outRefused:
		named, safe = c.Has(policy.ClassConnectFailure), true
	case outReset:
		named = c.Has(policy.ClassReset)
	case out503:
		named = c.Status(503)
	case outUnavailable:
		if c.GRPCStatus(14) {
			named, safe = true, true
		} else {
			named = c.Status(503) // its HTTP equivalent
		}
	}
	return named && safe
}

// TestRetryRoutesFollowTheSidecar: for every kind of request and outcome,
// Envoy retries with the exported routes what the sidecar retries. A
// POST never sent (a connect failure, an HTTP/2 stream refused
// unprocessed) is retried whatever its method, a gRPC call on the gRPC
// codes retryOn names and not on its HTTP conditions, an idempotent
// request or one with an Idempotency-Key on all of retryOn. Before, the
// export put the idempotent methods in retriable_request_headers, which
// turns off every retry of a request that matches none of them: Envoy
// retried no POST never sent.
func TestRetryRoutesFollowTheSidecar(t *testing.T) {
	var requests []retryRequest
	for _, m := range []string{"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "POST", "PATCH"} {
		requests = append(requests, retryRequest{method: m}, retryRequest{method: m, key: true})
	}
	requests = append(requests, retryRequest{method: "POST", grpc: true}, retryRequest{method: "POST", grpc: true, key: true})
	for _, retryOn := range [][]string{
		{"connect-failure"},
		{"connect-failure", "503"},
		{"connect-failure", "reset", "503"},
		{"connect-failure", "grpc-unavailable"},
		{"connect-failure", "reset", "503", "grpc-unavailable"},
		{"connect-failure", "reset", "5xx"},
		{"503", "grpc-unavailable"},
		{"503"},
		{"grpc-unavailable"},
	} {
		for _, perTry := range []string{"", ", perTryTimeout: 1s"} {
			spec := fmt.Sprintf("{service: geo, retries: {attempts: 2, retryOn: [%s]%s}}", strings.Join(retryOn, ", "), perTry)
			out, err := Export(decodeYAML(t, spec), "shop", Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, routes := readBack(t, out) // Envoy's validation, as Envoy loads them
			vh := routes[0].VirtualHosts[0]
			c := decodeYAML(t, spec)[0].Spec.Retries.RetryOn
			for _, r := range requests {
				for _, outcome := range []string{outConnect, outRefused, outReset, out503, outUnavailable} {
					if r.grpc != (outcome == outUnavailable) && (outcome == out503 || outcome == outUnavailable) {
						continue // an answer of the other kind
					}
					if outcome == outUnavailable && !c.GRPCStatus(14) && c.Status(503) {
						// The sidecar reads a gRPC code as its HTTP
						// equivalent too; Envoy's 5xx and status codes read
						// only :status (a note says so for failOn).
						continue
					}
					if want, got := minimeshRetries(c, r, outcome), envoyRetries(t, vh, r, outcome); got != want {
						t.Errorf("retryOn [%s]%s: %s, %s: Envoy retries %v, the sidecar %v", strings.Join(retryOn, ", "), perTry, r, outcome, got, want)
					}
				}
			}
			// The per-try timeout limits every try, retried or not.
			for _, rt := range vh.Routes {
				rp := rt.GetRoute().RetryPolicy
				if perTry != "" && rp.GetPerTryTimeout().AsDuration().String() != "1s" {
					t.Errorf("retryOn [%s]%s: route %q has per_try_timeout %v, want 1s", strings.Join(retryOn, ", "), perTry, rt.Name, rp.GetPerTryTimeout().AsDuration())
				}
			}
		}
	}
}

// TestRetryRoutesShape: the routes each kind of retryOn gets, by name and
// retry_on: one route when every request is retried alike, else a route
// for each kind of safe request before the catch-all.
func TestRetryRoutesShape(t *testing.T) {
	for _, tt := range []struct {
		retryOn string
		want    []string // name=retry_on; "" for no retry policy
	}{
		{"[connect-failure]", []string{"=connect-failure,refused-stream"}},
		{"[connect-failure, reset]", []string{"idempotent-method=connect-failure,refused-stream,reset", "idempotency-key=connect-failure,refused-stream,reset", "other=connect-failure,refused-stream"}},
		{"[reset]", []string{"idempotent-method=reset", "idempotency-key=reset", "other="}},
		{"[connect-failure, grpc-unavailable]", []string{"grpc=connect-failure,refused-stream,unavailable", "other=connect-failure,refused-stream"}},
		{"[connect-failure, 503, grpc-unavailable]", []string{"idempotent-method=connect-failure,refused-stream,retriable-status-codes,unavailable", "idempotency-key=connect-failure,refused-stream,retriable-status-codes,unavailable", "grpc=connect-failure,refused-stream,unavailable", "other=connect-failure,refused-stream"}},
		// A code Envoy cannot name retries nothing there: no retry_on.
		{"[grpc-aborted]", []string{"="}},
	} {
		res, err := Translate(decodeYAML(t, "{service: geo, retries: {attempts: 2, retryOn: "+tt.retryOn+"}}"), "shop")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, rt := range res.Routes.VirtualHosts[0].Routes {
			got = append(got, rt.Name+"="+rt.GetRoute().RetryPolicy.GetRetryOn())
			if rp := rt.GetRoute().RetryPolicy; rp != nil && rp.RetryOn == "" {
				t.Errorf("retryOn %s: route %q has a retry policy %v with nothing to retry on", tt.retryOn, rt.Name, rp)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("retryOn %s: routes %q, want %q", tt.retryOn, got, tt.want)
		}
	}
}
