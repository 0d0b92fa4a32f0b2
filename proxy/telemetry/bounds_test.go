package telemetry

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// scrape returns m's exposition, parsed by Prometheus' own parser (which
// fails on anything Prometheus would refuse), and its size.
func scrape(t *testing.T, m *Metrics) (map[string]*familyText, int) {
	t.Helper()
	var b strings.Builder
	if err := m.Registry.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	out := map[string]*familyText{}
	for name, f := range fams {
		ft := &familyText{}
		for _, s := range f.Metric {
			labels := map[string]string{}
			for _, l := range s.Label {
				if !utf8Valid(l.GetValue()) {
					t.Errorf("%s: label %s=%q is not UTF-8", name, l.GetName(), l.GetValue())
				}
				labels[l.GetName()] = l.GetValue()
			}
			v := 0.0
			if c := s.GetCounter(); c != nil {
				v = c.GetValue()
			}
			ft.series = append(ft.series, seriesText{labels, v})
		}
		out[name] = ft
	}
	return out, b.Len()
}

type familyText struct{ series []seriesText }

type seriesText struct {
	labels map[string]string
	value  float64
}

func utf8Valid(s string) bool { return utf8.ValidString(s) }

// values returns the distinct values of label in f.
func (f *familyText) values(label string) map[string]float64 {
	out := map[string]float64{}
	if f == nil {
		return out
	}
	for _, s := range f.series {
		out[s.labels[label]] += s.value
	}
	return out
}

// TestCodeLabelIsBounded (38: MaxCodes, the 5 classes and other): an upstream chooses its status codes, and one
// that answered every code from 100 to 999 made 900 series of
// minimesh_requests_total per method (a code of 600 or more passes
// through Go's client and ReverseProxy). Codes outside 100–599 count as
// "other"; past MaxCodes distinct codes a destination's further ones
// count as their class, which code=~"5.." still matches; every request
// is counted.
func TestCodeLabelIsBounded(t *testing.T) {
	m := New(0)
	d := m.Destination("evil:80")
	n := 0
	for code := 100; code <= 999; code++ {
		for _, method := range []string{"GET", "POST"} {
			d.Observe(method, code, 0.001)
			n++
		}
	}
	d.Observe("GET", 0, 0.001) // a request whose answer had no status
	n++
	fams, _ := scrape(t, m)
	reqs := fams["minimesh_requests_total"]
	codes := reqs.values("code")
	if len(codes) > 38 {
		t.Errorf("%d distinct code labels for one destination, want at most %d: %v", len(codes), 38, codes)
	}
	if got := len(reqs.series); got > 2*(38) {
		t.Errorf("%d series of minimesh_requests_total for one destination and 2 methods", got)
	}
	total := 0.0
	for label, v := range codes {
		total += v
		if label == Other {
			continue
		}
		if c, err := strconv.Atoi(label); err == nil {
			if c < 100 || c > 599 {
				t.Errorf("code label %q outside 100–599", label)
			}
			continue
		}
		if len(label) != 3 || label[1:] != "xx" || label[0] < '1' || label[0] > '5' {
			t.Errorf("code label %q is neither a code, a class nor other", label)
		}
	}
	if total != float64(n) {
		t.Errorf("%v requests counted, want %d", total, n)
	}
	// 600–999 and 0: 401 GETs and 400 POSTs, as "other".
	if codes[Other] != 801 {
		t.Errorf("code=\"other\" counts %v, want 801", codes[Other])
	}
	// The first MaxCodes codes keep their own label; every 5xx past them
	// is in "5xx".
	if codes["100"] != 2 || codes["5xx"] != 200 {
		t.Errorf("code 100 counts %v (want 2), 5xx %v (want 200)", codes["100"], codes["5xx"])
	}
	// GET and POST took the MaxCodePairs places (codes 100–131): a code
	// with a label of its own is its class for a third method
	// (TestCodePairsAreBounded has it keep its label below the cap).
	d.Observe("PUT", 100, 0.001)
	fams, _ = scrape(t, m)
	found := false
	for _, s := range fams["minimesh_requests_total"].series {
		if s.labels["method"] == "PUT" && s.labels["code"] == "1xx" {
			found = true
		}
	}
	if !found {
		t.Error("PUT 100 past the pairs cap is not counted as code=\"1xx\"")
	}
}

// TestCommonCodesKeepTheirLabel: a destination's usual codes are counted
// under their own labels, as before the cap.
func TestCommonCodesKeepTheirLabel(t *testing.T) {
	m := New(0)
	d := m.Destination("geo:80")
	for _, c := range []int{200, 201, 204, 301, 304, 400, 401, 403, 404, 408, 409, 413, 429, 431, 499, 500, 502, 503, 504, 508} {
		d.Observe("GET", c, 0.001)
	}
	fams, _ := scrape(t, m)
	for label := range fams["minimesh_requests_total"].values("code") {
		if _, err := strconv.Atoi(label); err != nil {
			t.Errorf("code label %q for a common code", label)
		}
	}
}

// TestDestinationLabelIsBounded: a destination's name comes from the
// app's request (its Host or absolute URL, up to the 64 KiB of a head):
// 200 of 30 KB each were written out in every one of their series at
// each scrape (tens of MB). A name longer than MaxLabelLen, or not UTF-8
// (Prometheus refuses the whole scrape), is counted as "other" and takes
// no place under the cap.
func TestDestinationLabelIsBounded(t *testing.T) {
	m := New(3)
	long := strings.Repeat("h", 30000) + ":80"
	m.Destination(long).Observe("GET", 502, 0.001)
	m.Destination("h\xffx:80").Observe("GET", 502, 0.001)
	m.Inbound(strings.Repeat("9", 1000)).Observe("GET", 200, 0.001)
	ok := strings.Repeat("a", 253) + ":65535"
	m.Destination(ok).Observe("GET", 200, 0.001)
	if l := m.Destination(long).Label(); l != Other {
		t.Errorf("a 30 KB destination's label is %d bytes, want %q", len(l), Other)
	}
	fams, size := scrape(t, m)
	dests := fams["minimesh_requests_total"].values("destination")
	for d := range dests {
		if len(d) > 259 {
			t.Errorf("destination label of %d bytes", len(d))
		}
	}
	if dests[Other] != 3 || dests[ok] != 1 {
		t.Errorf("destinations counted %v, want other 3 and the 259-byte name 1", dests)
	}
	if size > 64<<10 {
		t.Errorf("the exposition of 3 destinations is %d bytes", size)
	}
	// The long names took no place under the cap of 3.
	m.Destination("b:80").Observe("GET", 200, 0.001)
	if l := m.Destination("b:80").Label(); l != "b:80" {
		t.Errorf("b:80 is labelled %q: the names past MaxLabelLen used up the cap", l)
	}
}

// TestSpanNameIsBounded: the outbound span was named by the request's
// method as sent, so a client sending FOO, X1, X2... minted a span name
// (a Jaeger operation) each; the HTTP conventions name a span of a
// method that is not a standard one "HTTP", as the inbound span already
// was. Begin and Try name their spans so.
func TestSpanNameIsBounded(t *testing.T) {
	tr := tracingAt(t, 1)
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, h := range []http.Header{{}, {"Traceparent": {tp}}, {"X-B3-Traceid": {"4bf92f3577b34da6a3ce929d0e0e4736"}, "X-B3-Spanid": {"00f067aa0ba902b7"}, "X-B3-Sampled": {"1"}}} {
		for method, want := range map[string]string{"GET": "GET", "PATCH": "PATCH", "FOO": "HTTP", "get": "HTTP", strings.Repeat("X", 1000): "HTTP", "HTTP": "HTTP"} {
			ctx, p := tr.Begin(context.Background(), h, method, trace.SpanKindClient)
			if p.Span == nil {
				t.Fatalf("%v: not recorded at a ratio of 1", h)
			}
			if got := p.Span.(sdktrace.ReadOnlySpan).Name(); got != want {
				t.Errorf("%v: the span of method %.10q is named %.10q, want %q", h, method, got, want)
			}
			_, try := tr.Try(ctx, p, method)
			if got := try.Span.(sdktrace.ReadOnlySpan).Name(); got != want {
				t.Errorf("%v: the try span of method %.10q is named %.10q, want %q", h, method, got, want)
			}
		}
	}
}

// TestSpanMethod: a standard method names its span and is its
// http.request.method; any other is "HTTP" and "_OTHER", with the method
// itself in http.request.method_original (the semantic conventions).
func TestSpanMethod(t *testing.T) {
	for _, tc := range []struct {
		method, name, value string
		other               bool
	}{
		{"GET", "GET", "GET", false},
		{"PATCH", "PATCH", "PATCH", false},
		{"CONNECT", "CONNECT", "CONNECT", false},
		{"get", "HTTP", "_OTHER", true},
		{"FOO", "HTTP", "_OTHER", true},
		{"", "HTTP", "_OTHER", true},
	} {
		if got := SpanName(tc.method); got != tc.name {
			t.Errorf("SpanName(%q) = %q, want %q", tc.method, got, tc.name)
		}
		if v, other := SpanMethod(tc.method); v != tc.value || other != tc.other {
			t.Errorf("SpanMethod(%q) = %q, %v; want %q, %v", tc.method, v, other, tc.value, tc.other)
		}
	}
}
