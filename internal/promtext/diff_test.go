package promtext

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"
)

// The differential tests register the same families in this package and
// in client_golang (a test dependency only: never linked into the
// sidecar), do the same operations on both, and require the same text,
// byte for byte, and the same families once parsed by expfmt.

// awkward label values: the escapes of the format, separators, UTF-8.
var labelValues = []string{"", "a", "b", "GET", "200", `back\slash`, `"quoted"`, "new\nline", `\n`, "a,b=c}", "{", "ünï cödé", "x y"}

// awkward values: NaN, both infinities, -0, exponent forms.
var floatValues = []float64{0, 1, -1, 0.5, 2.5, 1e-7, 1e6, 1.5e300, 123456789, math.NaN(), math.Inf(+1), math.Inf(-1),
	math.Copysign(0, -1), 0.0001, 0.1 + 0.2}

const awkwardHelp = "Help with a backslash \\, a \"quote\" and a\nnewline."

// twin is one family made in both packages.
type twin struct {
	ours   Collector
	theirs prometheus.Collector
	op     func(r *rand.Rand) // one random operation on both
}

func label(r *rand.Rand) string  { return labelValues[r.IntN(len(labelValues))] }
func float(r *rand.Rand) float64 { return floatValues[r.IntN(len(floatValues))] }

func twins() []twin {
	var ts []twin

	oc := NewCounterVec("test_requests_total", awkwardHelp, "method", "code")
	tc := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "test_requests_total", Help: awkwardHelp}, []string{"method", "code"})
	ts = append(ts, twin{oc, tc, func(r *rand.Rand) {
		m, c := label(r), label(r)
		switch r.IntN(3) {
		case 0:
			oc.With(m, c).Inc()
			tc.WithLabelValues(m, c).Inc()
		case 1:
			v := math.Abs(float(r))
			if math.IsNaN(v) {
				v = 3
			}
			oc.With(m, c).Add(v)
			tc.WithLabelValues(m, c).Add(v)
		default: // whole numbers, large ones too
			v := float64(r.Uint64N(1 << 40))
			oc.With(m, c).Add(v)
			tc.WithLabelValues(m, c).Add(v)
		}
	}})

	og := NewGaugeVec("test_gauge", "A gauge.", "z", "a")
	tg := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "test_gauge", Help: "A gauge."}, []string{"z", "a"})
	ts = append(ts, twin{og, tg, func(r *rand.Rand) {
		z, a, v := label(r), label(r), float(r)
		switch r.IntN(4) {
		case 0:
			og.With(z, a).Set(v)
			tg.WithLabelValues(z, a).Set(v)
		case 1:
			og.With(z, a).Add(v)
			tg.WithLabelValues(z, a).Add(v)
		case 2:
			og.With(z, a).Inc()
			tg.WithLabelValues(z, a).Inc()
		default:
			og.With(z, a).Dec()
			tg.WithLabelValues(z, a).Dec()
		}
	}})

	buckets := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	oh := NewHistogramVec("test_duration_seconds", "A histogram.", buckets, "direction", "destination")
	th := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "test_duration_seconds", Help: "A histogram.", Buckets: buckets},
		[]string{"direction", "destination"})
	ts = append(ts, twin{oh, th, func(r *rand.Rand) {
		d, s := label(r), label(r)
		v := float(r)
		if r.IntN(2) == 0 {
			v = buckets[r.IntN(len(buckets))] // on a bound: le is inclusive
		}
		oh.With(d, s).Observe(v)
		th.WithLabelValues(d, s).Observe(v)
	}})

	// Many buckets: the binary search.
	many := prometheus.ExponentialBuckets(1e-6, 1.5, 40)
	om := NewHistogramVec("test_many_buckets", "Many buckets.", many)
	tm := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "test_many_buckets", Help: "Many buckets.", Buckets: many})
	ts = append(ts, twin{om, tm, func(r *rand.Rand) {
		v := r.Float64() * 20
		if r.IntN(4) == 0 {
			v = many[r.IntN(len(many))]
		}
		om.With().Observe(v)
		tm.Observe(v)
	}})

	// Functions of label values.
	vals := map[string]float64{}
	ofn := NewGaugeFuncVec("test_func_gauge", "Functions.", "listener")
	ts = append(ts, twin{ofn, nil, func(r *rand.Rand) {
		l := label(r)
		if _, ok := vals[l]; ok {
			vals[l] = float(r)
			return
		}
		vals[l] = float(r)
		ofn.Set(func() float64 { return vals[l] }, l)
	}})
	ts[len(ts)-1].theirs = funcCollector(func(ch chan<- prometheus.Metric) {
		d := prometheus.NewDesc("test_func_gauge", "Functions.", []string{"listener"}, nil)
		for l, v := range vals {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l)
		}
	})

	var cnt float64
	ocf := NewCounterFunc("test_func_total", "A counter function.", func() float64 { return cnt })
	tcf := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "test_func_total", Help: "A counter function."}, func() float64 { return cnt })
	ts = append(ts, twin{ocf, tcf, func(r *rand.Rand) { cnt += float64(r.IntN(10)) }})

	// Emitted at scrape time, summaries too.
	states := map[[2]string]float64{}
	oe := NewGaugeCollectFunc("test_state", "Emitted.", []string{"destination", "state"}, func(emit Emit) {
		for k, v := range states {
			emit(v, k[0], k[1])
		}
	})
	te := funcCollector(func(ch chan<- prometheus.Metric) {
		d := prometheus.NewDesc("test_state", "Emitted.", []string{"destination", "state"}, nil)
		for k, v := range states {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, k[0], k[1])
		}
	})
	ts = append(ts, twin{oe, te, func(r *rand.Rand) { states[[2]string{label(r), label(r)}] = float(r) }})

	sums := map[string]Summary{}
	os := NewSummaryCollectFunc("test_summary_seconds", "A summary.", []string{"kind"}, func(emit func(Summary, ...string)) {
		for k, s := range sums {
			emit(s, k)
		}
	})
	tsu := funcCollector(func(ch chan<- prometheus.Metric) {
		d := prometheus.NewDesc("test_summary_seconds", "A summary.", []string{"kind"}, nil)
		for k, s := range sums {
			q := map[float64]float64{}
			for _, x := range s.Quantiles {
				q[x.Quantile] = x.Value
			}
			ch <- prometheus.MustNewConstSummary(d, s.Count, s.Sum, q, k)
		}
	})
	ts = append(ts, twin{os, tsu, func(r *rand.Rand) {
		s := Summary{Count: r.Uint64N(1000), Sum: float(r)}
		for _, q := range []float64{0, 0.25, 0.5, 0.75, 1} {
			s.Quantiles = append(s.Quantiles, Quantile{q, float(r)})
		}
		sums[label(r)] = s
	}})
	return ts
}

type funcCollector func(ch chan<- prometheus.Metric)

func (f funcCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(f, ch) }
func (f funcCollector) Collect(ch chan<- prometheus.Metric) { f(ch) }

// clientText is what client_golang's registry and promhttp write in the
// text format.
func clientText(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func parse(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("expfmt cannot parse:\n%s\n%v", text, err)
	}
	return mfs
}

func TestDifferential(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 1))
			ts := twins()
			ours, theirs := NewRegistry(), prometheus.NewRegistry()
			for _, tw := range ts {
				ours.MustRegister(tw.ours)
				theirs.MustRegister(tw.theirs)
			}
			for round := 0; round < 5; round++ {
				for range 200 {
					ts[r.IntN(len(ts))].op(r)
				}
				got, want := string(ours.AppendText(nil)), clientText(t, theirs)
				if got != want {
					t.Fatalf("round %d: text differs:\n%s", round, diffLines(got, want))
				}
				gotMF, wantMF := parse(t, got), parse(t, want)
				if len(gotMF) != len(wantMF) {
					t.Fatalf("round %d: %d families parsed, client_golang's %d", round, len(gotMF), len(wantMF))
				}
				for name, w := range wantMF {
					if !proto.Equal(gotMF[name], w) {
						t.Errorf("round %d: %s parses as\n%v\nwant\n%v", round, name, gotMF[name], w)
					}
				}
			}
		})
	}
}

// diffLines shows the first lines that differ.
func diffLines(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var out []string
	for i := 0; i < max(len(g), len(w)) && len(out) < 10; i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			out = append(out, fmt.Sprintf("line %d:\n  got  %q\n  want %q", i+1, a, b))
		}
	}
	return strings.Join(out, "\n")
}
