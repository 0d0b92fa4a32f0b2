package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// This file renders -plot's figures (gonum.org/v1/plot, pure Go):
//
//   - benchmarks-latency.png: p50 and p99 against the request rate for
//     every loopback target, one line per target over the fixed rates and
//     its maximum-rate run as a separate mark at its achieved rate;
//   - benchmarks-cost.png: each proxy's CPU per 1,000 requests at each
//     rate, and its RSS idle, at its peak over the fixed rates and after
//     the maximum-rate runs.

const (
	latencyPNG = "benchmarks-latency.png"
	costPNG    = "benchmarks-cost.png"
)

// plot writes both figures into dir.
func (r *report) plot(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	lat, err := r.latencyPlots()
	if err != nil {
		return err
	}
	if err := savePlots(filepath.Join(dir, latencyPNG), lat); err != nil {
		return err
	}
	cost, err := r.costPlots()
	if err != nil {
		return err
	}
	if err := savePlots(filepath.Join(dir, costPNG), cost); err != nil {
		return err
	}
	logf("figures written to %s and %s", filepath.Join(dir, latencyPNG), filepath.Join(dir, costPNG))
	return nil
}

// caption says what the figures were measured with.
func (r *report) caption() string {
	return fmt.Sprintf("%s UTC, %d connections, %v per run, medians of %d rounds",
		r.start.Format("2006-01-02 15:04"), r.o.conns, r.o.duration, r.o.runs)
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latencyPlots are p50 and p99 (log scales) against the rate.
func (r *report) latencyPlots() ([]*plot.Plot, error) {
	var ps []*plot.Plot
	for _, p := range []float64{50, 99} {
		pl := plot.New()
		pl.Title.Text = fmt.Sprintf("p%s latency against request rate", rateString(p))
		pl.X.Label.Text = "requests/s (fixed rates; open marks: maximum rate)"
		pl.Y.Label.Text = "ms"
		pl.X.Scale, pl.Y.Scale = plot.LogScale{}, plot.LogScale{}
		pl.X.Tick.Marker, pl.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
		pl.Legend.Top, pl.Legend.Left = true, true
		for i, t := range r.sweepTargets() {
			var xys plotter.XYs
			for _, q := range r.o.rates() {
				s := r.summarizeAt(t, q)
				if v := msf(s.lat[p]); v > 0 && s.qps > 0 {
					xys = append(xys, plotter.XY{X: q, Y: v})
				}
			}
			if len(xys) == 0 {
				continue
			}
			l, sc, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			c := plotutil.Color(i)
			l.Color, sc.Color = c, c
			l.Width = vg.Points(1.5)
			sc.Shape = plotutil.Shape(i)
			pl.Add(l, sc)
			pl.Legend.Add(t.name, l, sc)
			if len(r.maxSamples[t.key]) > 0 {
				s := r.summarizeAt(t, 0)
				if v := msf(s.lat[p]); v > 0 {
					m, err := plotter.NewScatter(plotter.XYs{{X: r.maxQPS(t.key), Y: v}})
					if err != nil {
						return nil, err
					}
					m.Color, m.Shape, m.Radius = c, draw.RingGlyph{}, vg.Points(5)
					pl.Add(m)
				}
			}
		}
		pl.Add(plotter.NewGrid())
		// Room above the data for the legend (log scale: a factor).
		pl.Y.Max *= 4
		ps = append(ps, pl)
	}
	ps[0].Title.Text += "\n" + r.caption()
	return ps, nil
}

// costPlots are CPU per 1,000 requests per proxy at each rate, and RSS.
func (r *report) costPlots() ([]*plot.Plot, error) {
	var proxies []*target
	for _, t := range r.sweepTargets() {
		if t.proc != nil {
			proxies = append(proxies, t)
		}
	}
	names := make([]string, len(proxies))
	for i, t := range proxies {
		names[i] = t.name
	}

	cpu := plot.New()
	cpu.Title.Text = "CPU per 1,000 requests\n" + r.caption()
	cpu.Y.Label.Text = "ms CPU (user + system) / 1,000 requests"
	type group struct {
		label string
		rate  float64 // 0: maximum rate
	}
	var groups []group
	for _, q := range r.o.rates() {
		groups = append(groups, group{rateString(q) + " requests/s", q})
	}
	if len(r.maxSamples[keyDirect]) > 0 {
		groups = append(groups, group{"maximum rate", 0})
	}
	if err := bars(cpu, len(groups), func(g int) (string, plotter.Values) {
		vs := make(plotter.Values, len(proxies))
		for i, t := range proxies {
			vs[i] = msf(r.summarizeAt(t, groups[g].rate).cpuPer1k)
		}
		return groups[g].label, vs
	}); err != nil {
		return nil, err
	}
	cpu.NominalX(names...)

	rss := plot.New()
	rss.Title.Text = "Resident memory\n(MB = 10⁶ bytes, all of the proxy's processes)"
	rss.Y.Label.Text = "MB"
	kinds := []struct {
		label string
		v     func(t *target) int64
	}{
		{"idle (VmRSS)", func(t *target) int64 { return r.usageIdle[t.key].RSS }},
		{"peak over the fixed rates (VmHWM)", func(t *target) int64 { return r.usage[t.key].PeakRSS }},
	}
	if len(r.usageAfterMax) > 0 && len(r.maxSamples[keyDirect]) > 0 {
		kinds = append(kinds, struct {
			label string
			v     func(t *target) int64
		}{"peak after the maximum rate", func(t *target) int64 { return r.usageAfterMax[t.key].PeakRSS }})
	}
	if err := bars(rss, len(kinds), func(g int) (string, plotter.Values) {
		vs := make(plotter.Values, len(proxies))
		for i, t := range proxies {
			vs[i] = float64(kinds[g].v(t)) / 1e6
		}
		return kinds[g].label, vs
	}); err != nil {
		return nil, err
	}
	target, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: targetRSS / 1e6}, {X: float64(len(proxies)) - 0.5, Y: targetRSS / 1e6}})
	if err != nil {
		return nil, err
	}
	target.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
	target.Width = vg.Points(1.5)
	rss.Add(target)
	rss.Legend.Add("minimesh-proxy's target: 15 MB", target)
	rss.NominalX(names...)
	for _, p := range []*plot.Plot{cpu, rss} {
		p.Y.Max *= 1.35 // room for the legend
	}
	return []*plot.Plot{cpu, rss}, nil
}

// bars adds n groups of bars side by side to p; group g is f(g).
func bars(p *plot.Plot, n int, f func(g int) (string, plotter.Values)) error {
	w := vg.Points(min(90/float64(max(n, 1)), 28))
	p.Legend.Top, p.Legend.Left = true, true
	for g := range n {
		label, vs := f(g)
		for i, v := range vs {
			if math.IsNaN(v) || v < 0 {
				vs[i] = 0
			}
		}
		b, err := plotter.NewBarChart(vs, w)
		if err != nil {
			return err
		}
		b.LineStyle.Width = 0
		b.Color = plotutil.Color(g)
		b.Offset = w * vg.Length(float64(g)-float64(n-1)/2)
		p.Add(b)
		p.Legend.Add(label, b)
	}
	p.Add(&plotter.Grid{Vertical: plotter.DefaultGridLineStyle, Horizontal: plotter.DefaultGridLineStyle})
	p.Y.Min = 0
	return nil
}

// savePlots draws plots side by side into a PNG at path.
func savePlots(path string, plots []*plot.Plot) error {
	const width, height = 1400, 560
	img := vgimg.NewWith(vgimg.UseWH(vg.Points(width), vg.Points(height)), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Points(24), PadY: vg.Points(12),
		PadLeft: vg.Points(8), PadRight: vg.Points(16), PadTop: vg.Points(8), PadBottom: vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
