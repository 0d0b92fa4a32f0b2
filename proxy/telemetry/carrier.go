package telemetry

import (
	"net/http"
	"net/textproto"
)

// headerCarrier is a header map as the propagators read and write it.
// propagation.HeaderCarrier goes through http.Header's Get and Set, which
// canonicalize the key on every call, and the propagators name their
// fields in lower case: every look-up made a new string, ten per
// traced request (docs/benchmarks.md, "Tracing at 0.01"). Their names map
// to the keys here without one.
type headerCarrier http.Header

// Get returns key's first value, as http.Header's Get.
func (c headerCarrier) Get(key string) string {
	if v := c[headerKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values returns key's values, as http.Header's Values.
func (c headerCarrier) Values(key string) []string { return c[headerKey(key)] }

// Set replaces key's values with value, as http.Header's Set.
func (c headerCarrier) Set(key, value string) { c[headerKey(key)] = []string{value} }

// Keys returns the map's keys.
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// headerKey is key as a header map holds it.
func headerKey(key string) string {
	switch key {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	}
	return textproto.CanonicalMIMEHeaderKey(key)
}
