package promtext

import (
	"math"
	"strings"
	"testing"
)

// TestText: what each kind of family writes, byte for byte.
func TestText(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func() []Collector
		want string
	}{{
		name: "counter without labels",
		make: func() []Collector {
			v := NewCounterVec("requests_total", "Requests.")
			v.With().Add(3)
			return []Collector{v}
		},
		want: "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total 3\n",
	}, {
		name: "an empty family is left out",
		make: func() []Collector { return []Collector{NewCounterVec("a_total", "A.", "x"), NewGaugeVec("b", "B.")} },
		want: "",
	}, {
		name: "labels in name order, series sorted by their values in that order",
		make: func() []Collector {
			v := NewCounterVec("r_total", "R.", "method", "code")
			v.With("POST", "200").Inc()
			v.With("GET", "503").Inc()
			v.With("GET", "200").Add(2)
			return []Collector{v}
		},
		want: `# HELP r_total R.
# TYPE r_total counter
r_total{code="200",method="GET"} 2
r_total{code="200",method="POST"} 1
r_total{code="503",method="GET"} 1
`,
	}, {
		name: "families sorted by name",
		make: func() []Collector {
			b, a := NewGaugeVec("b", "B."), NewGaugeVec("a", "A.")
			b.With().Set(1)
			a.With().Set(2)
			return []Collector{b, a}
		},
		want: "# HELP a A.\n# TYPE a gauge\na 2\n# HELP b B.\n# TYPE b gauge\nb 1\n",
	}, {
		name: "escaping: HELP backslash and newline, label values also the double quote",
		make: func() []Collector {
			v := NewGaugeVec("g", "a \\ and a\nnewline, \"quoted\"", "v")
			v.With("back\\slash \"q\"\nline").Set(1)
			return []Collector{v}
		},
		want: `# HELP g a \\ and a\nnewline, "quoted"
# TYPE g gauge
g{v="back\\slash \"q\"\nline"} 1
`,
	}, {
		name: "values: NaN, infinities, -0, exponent forms",
		make: func() []Collector {
			v := NewGaugeVec("g", "G.", "k")
			for k, x := range map[string]float64{"a": math.NaN(), "b": math.Inf(+1), "c": math.Inf(-1), "d": math.Copysign(0, -1),
				"e": 1e6, "f": 0.0001, "g": 1444753, "h": 1e-5, "i": -2.5, "j": 1.8446744073709552e+19} {
				v.With(k).Set(x)
			}
			return []Collector{v}
		},
		want: `# HELP g G.
# TYPE g gauge
g{k="a"} NaN
g{k="b"} +Inf
g{k="c"} -Inf
g{k="d"} 0
g{k="e"} 1e+06
g{k="f"} 0.0001
g{k="g"} 1.444753e+06
g{k="h"} 1e-05
g{k="i"} -2.5
g{k="j"} 1.8446744073709552e+19
`,
	}, {
		name: "histogram: cumulative buckets, le last, +Inf, _sum, _count",
		make: func() []Collector {
			v := NewHistogramVec("d_seconds", "D.", []float64{.0001, .5, 1, 2.5, 10}, "dir")
			h := v.With("out")
			for _, x := range []float64{0.00005, 0.0001, 0.3, 1, 7, 11} {
				h.Observe(x)
			}
			return []Collector{v}
		},
		want: `# HELP d_seconds D.
# TYPE d_seconds histogram
d_seconds_bucket{dir="out",le="0.0001"} 2
d_seconds_bucket{dir="out",le="0.5"} 3
d_seconds_bucket{dir="out",le="1"} 4
d_seconds_bucket{dir="out",le="2.5"} 4
d_seconds_bucket{dir="out",le="10"} 5
d_seconds_bucket{dir="out",le="+Inf"} 6
d_seconds_sum{dir="out"} 19.300150000000002
d_seconds_count{dir="out"} 6
`,
	}, {
		name: "histogram without labels, NaN in +Inf",
		make: func() []Collector {
			v := NewHistogramVec("h", "H.", []float64{1, math.Inf(+1)})
			v.With().Observe(math.NaN())
			return []Collector{v}
		},
		want: "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum NaN\nh_count 1\n",
	}, {
		name: "summary: quantiles sorted, quantile label last",
		make: func() []Collector {
			return []Collector{NewSummaryCollectFunc("s_seconds", "S.", []string{"z"}, func(emit func(Summary, ...string)) {
				emit(Summary{Count: 3, Sum: 0.5, Quantiles: []Quantile{{1, 0.3}, {0, 0.1}, {0.5, 0.2}}}, "v")
			})}
		},
		want: `# HELP s_seconds S.
# TYPE s_seconds summary
s_seconds{z="v",quantile="0"} 0.1
s_seconds{z="v",quantile="0.5"} 0.2
s_seconds{z="v",quantile="1"} 0.3
s_seconds_sum{z="v"} 0.5
s_seconds_count{z="v"} 3
`,
	}, {
		name: "functions: gauge and counter vectors and single series",
		make: func() []Collector {
			open := NewGaugeFuncVec("conns_open", "Open.", "listener")
			open.Set(func() float64 { return 7 }, "outbound")
			open.Set(func() float64 { return 1 }, "admin")
			return []Collector{open, NewCounterFunc("x_total", "X.", func() float64 { return 2 })}
		},
		want: `# HELP conns_open Open.
# TYPE conns_open gauge
conns_open{listener="admin"} 1
conns_open{listener="outbound"} 7
# HELP x_total X.
# TYPE x_total counter
x_total 2
`,
	}, {
		name: "collect functions emit series at scrape time",
		make: func() []Collector {
			return []Collector{NewGaugeCollectFunc("state", "State.", []string{"destination", "state"}, func(emit Emit) {
				emit(1, "b", "open")
				emit(0, "a", "closed")
			})}
		},
		want: "# HELP state State.\n# TYPE state gauge\nstate{destination=\"a\",state=\"closed\"} 0\nstate{destination=\"b\",state=\"open\"} 1\n",
	}, {
		name: "label values that are not UTF-8",
		make: func() []Collector {
			v := NewCounterVec("c_total", "C.", "v")
			v.With("a\xffb").Inc()
			v.With("a\xffb").Inc()
			return []Collector{v}
		},
		want: "# HELP c_total C.\n# TYPE c_total counter\nc_total{v=\"a\uFFFDb\"} 2\n",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRegistry()
			r.MustRegister(tc.make()...)
			var b strings.Builder
			if err := r.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// TestPanics: programming errors are caught when a family is made,
// registered or a child resolved, as client_golang catches them.
func TestPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"bad metric name":        func() { NewCounterVec("1x", "") },
		"bad label name":         func() { NewCounterVec("x", "", "a-b") },
		"reserved label name":    func() { NewCounterVec("x", "", "__name") },
		"le on a histogram":      func() { NewHistogramVec("x", "", []float64{1}, "le") },
		"label twice":            func() { NewGaugeVec("x", "", "a", "a") },
		"buckets not increasing": func() { NewHistogramVec("x", "", []float64{1, 1}) },
		"wrong number of values": func() { NewCounterVec("x", "", "a").With("1", "2") },
		"counter going down":     func() { NewCounterVec("x", "").With().Add(-1) },
		"name registered twice":  func() { NewRegistry().MustRegister(NewGaugeVec("x", ""), NewCounterVec("x", "")) },
		"quantile on a summary":  func() { NewSummaryCollectFunc("x", "", []string{"quantile"}, nil) },
		"emitted values mismatch": func() {
			r := NewRegistry()
			r.MustRegister(NewGaugeCollectFunc("x", "", []string{"a"}, func(e Emit) { e(1) }))
			r.AppendText(nil)
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestAcceptsGzip(t *testing.T) {
	for v, want := range map[string]bool{
		"": false, "gzip": true, "identity": false, "deflate, gzip;q=1.0, *;q=0.5": true, "GZIP": true,
		"gzip;q=0": false, "gzip; q=0.000": false, "gzip;q=0.05": true, "*": true, "br, zstd": false,
	} {
		if got := acceptsGzip(v); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", v, got, want)
		}
	}
}
