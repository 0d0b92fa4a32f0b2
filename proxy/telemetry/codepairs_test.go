package telemetry

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// allMethods are the method labels' sources: the standard ones and one
// counted as "other".
var allMethods = append(methods[:], "FOO")

// seriesBound is the most series of minimesh_requests_total one
// destination has: MaxCodePairs with a code of their own, and per
// method label the five classes and "other" (docs/metrics.md).
const seriesBound = MaxCodePairs + (len(methods)+1)*(len(codeClasses)+1)

// requestsBy returns dest's minimesh_requests_total by "method code".
func requestsBy(t *testing.T, m *Metrics, direction, dest string) map[string]float64 {
	t.Helper()
	fams, _ := scrape(t, m)
	got := map[string]float64{}
	for _, s := range fams["minimesh_requests_total"].series {
		if s.labels["direction"] == direction && s.labels["destination"] == dest {
			got[s.labels["method"]+" "+s.labels["code"]] += s.value
		}
	}
	return got
}

// TestCodePairsAreBounded: MaxCodes capped a destination's codes per
// method, so the app's methods multiplied the upstream's codes: 10
// method labels × (32 codes, 5 classes, other) = 380 series of
// minimesh_requests_total for one destination, 76,380 at the outbound
// cap. MaxCodePairs caps the pairs with a code of their own across
// methods; past it a code is counted as its class, as past MaxCodes.
func TestCodePairsAreBounded(t *testing.T) {
	// The 64 pairs of the first 8 methods and 8 codes, each counted once.
	first64 := func() map[string]float64 {
		w := map[string]float64{}
		for _, method := range methods[:8] {
			for _, code := range []int{200, 201, 204, 400, 404, 500, 503, 504} {
				w[method+" "+strconv.Itoa(code)] = 1
			}
		}
		return w
	}
	fill64 := func(observe func(string, int)) {
		for _, method := range methods[:8] {
			for _, code := range []int{200, 201, 204, 400, 404, 500, 503, 504} {
				observe(method, code)
			}
		}
	}
	for _, tc := range []struct {
		name string
		do   func(observe func(method string, code int))
		// want is the destination's requests_total by "method code";
		// nil: only the bound and the total are looked at.
		want   map[string]float64
		series int // the number of series, when want is nil
	}{
		{
			name: "every method and every code",
			do: func(observe func(string, int)) {
				for _, method := range allMethods {
					for code := 0; code <= 999; code++ {
						observe(method, code)
					}
				}
			},
			series: seriesBound,
		},
		{
			name: "few codes, every method: past the pairs their class",
			do: func(observe func(string, int)) {
				fill64(observe)
				for _, code := range []int{200, 201, 204, 400, 404, 500, 503, 504} {
					observe("PATCH", code)
				}
				observe("FOO", 503)
			},
			want: func() map[string]float64 {
				w := first64()
				w["PATCH 2xx"], w["PATCH 4xx"], w["PATCH 5xx"], w["other 5xx"] = 3, 2, 3, 1
				return w
			}(),
		},
		{
			name: "a pair made before the cap keeps its label",
			do: func(observe func(string, int)) {
				fill64(observe)
				observe("GET", 503)
				observe("PATCH", 503)
				observe("PATCH", 0)
				observe("PATCH", 1000)
			},
			want: func() map[string]float64 {
				w := first64()
				w["GET 503"], w["PATCH 5xx"], w["PATCH other"] = 2, 1, 2
				return w
			}(),
		},
		{
			name: "below the cap a code has its label for every method",
			do: func(observe func(string, int)) {
				for _, method := range allMethods {
					observe(method, 503)
				}
			},
			want: func() map[string]float64 {
				w := map[string]float64{}
				for _, method := range allMethods {
					w[methodLabel(methodIndex(method))+" 503"] = 1
				}
				return w
			}(),
		},
	} {
		for _, direction := range []string{Outbound, Inbound} {
			t.Run(tc.name+"/"+direction, func(t *testing.T) {
				m := New(0)
				d, label := m.Destination("geo-service:8000"), "geo-service:8000"
				if direction == Inbound {
					d, label = m.Inbound("8080"), "8080"
				}
				n := 0
				tc.do(func(method string, code int) { d.Observe(method, code, 0.001); n++ })
				got := requestsBy(t, m, direction, label)
				if tc.want != nil && !sameValues(got, tc.want) {
					t.Errorf("requests by method and code = %v (%d series), want %v (%d)", got, len(got), tc.want, len(tc.want))
				}
				if tc.series != 0 && len(got) != tc.series {
					t.Errorf("%d series, want %d", len(got), tc.series)
				}
				if len(got) > seriesBound {
					t.Errorf("%d series, past the bound of %d", len(got), seriesBound)
				}
				own, total := 0, 0.0
				for k, v := range got {
					total += v
					if _, err := strconv.Atoi(k[strings.IndexByte(k, ' ')+1:]); err == nil {
						own++
					}
				}
				if own > MaxCodePairs {
					t.Errorf("%d pairs with a code of their own, want at most %d", own, MaxCodePairs)
				}
				if total != float64(n) {
					t.Errorf("%v requests counted, want %d", total, n)
				}
			})
		}
	}
}

// TestRetryCodesOutsidePairs: the pairs cap is requests_total's; a
// retry's code has a reason label of its own while the destination has
// fewer than MaxCodes codes, however many methods its requests had.
func TestRetryCodesOutsidePairs(t *testing.T) {
	m := New(0)
	d := m.Destination("geo-service:8000")
	for _, method := range methods {
		for _, code := range []int{200, 201, 204, 400, 404, 500, 503, 504} {
			d.Observe(method, code, 0.001)
		}
	}
	d.Retry("503")
	d.Retry("502")
	d.Observe("GET", 502, 0.001) // a code the retries made, past the pairs
	fams, _ := scrape(t, m)
	if got, want := fams["minimesh_retries_total"].values("reason"), map[string]float64{"503": 1, "502": 1}; !sameValues(got, want) {
		t.Errorf("retries by reason = %v, want %v", got, want)
	}
	if got := requestsBy(t, m, Outbound, "geo-service:8000")["GET 5xx"]; got != 1 {
		t.Errorf("GET 502 past the pairs cap counted %v times as 5xx, want 1", got)
	}
}

// TestPastCapsAllocatesNothing: a request whose code is past the caps is
// counted without allocating and, once its class exists, without the
// destination's lock: past MaxCodePairs a destination may see such codes
// on every request.
func TestPastCapsAllocatesNothing(t *testing.T) {
	d := New(0).Destination("geo-service:8000")
	for _, method := range allMethods {
		for code := 100; code <= 599; code++ {
			d.Observe(method, code, 0.001)
		}
	}
	d.Retry("599")
	for _, tc := range []struct {
		name string
		do   func()
	}{
		{"GET 100, a pair of its own", func() { d.Observe("GET", 100, 0.001) }},
		{"PATCH 503, past the pairs", func() { d.Observe("PATCH", 503, 0.001) }},
		{"GET 599, past the codes", func() { d.Observe("GET", 599, 0.001) }},
		{"FOO 404, past both", func() { d.Observe("FOO", 404, 0.001) }},
		{"PATCH 0, other", func() { d.Observe("PATCH", 0, 0.001) }},
		{"a retry on 599, past the codes", func() { d.Retry("599") }},
	} {
		if n := testing.AllocsPerRun(100, tc.do); n != 0 {
			t.Errorf("%s: %v allocations, want 0", tc.name, n)
		}
		d.mu.Lock()
		done := make(chan struct{})
		go func() { tc.do(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s: waits for the destination's lock", tc.name)
		}
		d.mu.Unlock()
		<-done
	}
}

// TestMetricsAtCaps fills minimesh_requests_total to its caps, every
// destination of both directions to seriesBound series, and reports the
// exposition's size (docs/metrics.md states it): with cluster DNS names,
// and with names of MaxLabelLen bytes, the longest a label may be.
func TestMetricsAtCaps(t *testing.T) {
	for _, tc := range []struct {
		name     string
		dest     func(i int) string
		maxBytes int // requests_total's lines
	}{
		{"cluster names", func(i int) string { return fmt.Sprintf("service-%03d.shop.svc.cluster.local:8080", i) }, 5 << 20},
		{"259-byte names", func(i int) string {
			s := fmt.Sprintf("%03d", i)
			return strings.Repeat("h", MaxLabelLen-len(s)-5) + s + ":8080"
		}, 12 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(0)
			var dests []*Destination
			for i := range DefaultMaxDestinations + 1 { // the last one is "other"
				dests = append(dests, m.Destination(tc.dest(i)))
			}
			for i := range MaxInbound + 1 {
				dests = append(dests, m.Inbound(strconv.Itoa(8000+i)))
			}
			for _, d := range dests {
				for _, method := range allMethods {
					for code := 100; code < 100+MaxCodes; code++ {
						d.Observe(method, code, 0.001)
					}
				}
				for _, method := range allMethods {
					for _, code := range []int{199, 299, 399, 499, 599, 0} {
						d.Observe(method, code, 0.001)
					}
				}
			}
			var b strings.Builder
			if err := m.Registry.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			series, size := 0, 0
			for line := range strings.Lines(b.String()) {
				if strings.HasPrefix(line, "minimesh_requests_total{") {
					series++
					size += len(line)
				}
			}
			if want := (DefaultMaxDestinations + 1 + MaxInbound + 1) * seriesBound; series != want {
				t.Errorf("%d series of minimesh_requests_total, want %d", series, want)
			}
			if size > tc.maxBytes {
				t.Errorf("minimesh_requests_total takes %d bytes, want at most %d", size, tc.maxBytes)
			}
			t.Logf("%d series of minimesh_requests_total, %d bytes; the whole exposition %d bytes", series, size, b.Len())
		})
	}
}
