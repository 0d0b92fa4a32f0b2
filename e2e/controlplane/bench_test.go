package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(ds []time.Duration, p int) time.Duration {
	slices.Sort(ds)
	return ds[(len(ds)-1)*p/100]
}

// BenchmarkApplyToSidecar is the time from `kubectl apply` of a changed
// ResiliencePolicy (its return) to the running sidecar showing it in
// /debug/config (polled every 2 ms): API server, informer, validation,
// status, snapshot, ADS push, decode and swap.
//
//	go test -run '^$' -bench ApplyToSidecar -benchtime 50x ./e2e/controlplane/
func BenchmarkApplyToSidecar(b *testing.B) {
	p := setup(b)
	var lat []time.Duration
	n := 3
	for b.Loop() {
		n = 3 + (n-2)%5 // 3..7, never the previous value
		p.apply(b, "shop", "geo", fmt.Sprintf("{service: geo-service, circuitBreaker: {consecutiveFailures: %d}}", n))
		start := time.Now()
		for {
			if got, src := p.failures(b); got == n && src == "xds" {
				break
			}
			if time.Since(start) > 10*time.Second {
				b.Fatal("the change did not arrive")
			}
			time.Sleep(2 * time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.ReportMetric(msOf(pct(lat, 50)), "p50-ms")
	b.ReportMetric(msOf(pct(lat, 99)), "p99-ms")
}

// BenchmarkPushTo1000 connects 1,000 xDS clients (the sidecar's own client
// code, in this process) to one built controller and measures, per change
// applied with the API server, the time until every client has applied it,
// and the controller's CPU per push and peak memory.
//
//	go test -run '^$' -bench PushTo1000 -benchtime 10x ./e2e/controlplane/
func BenchmarkPushTo1000(b *testing.B) {
	const clients = 1000
	p := startPlane(b, "--log-level", "warn")
	p.apply(b, "shop", "geo", "{service: geo-service, circuitBreaker: {consecutiveFailures: 3}}")

	var want atomic.Int64
	want.Store(3)
	var mu sync.Mutex
	seen := map[int]time.Time{} // client → when it applied the wanted value
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range clients {
		c := &xdsclient.Client{Addr: p.xdsAddr, Node: xdsclient.Node(fmt.Sprintf("pod-%d", i), "shop", "web"), Log: quiet,
			Apply: func(pols []*policy.ResiliencePolicy, _ string) error {
				for _, pol := range pols {
					if pol.Spec.Service == "geo-service" && int64(pol.Spec.CircuitBreaker.ConsecutiveFailures) == want.Load() {
						mu.Lock()
						if _, ok := seen[i]; !ok {
							seen[i] = time.Now()
						}
						mu.Unlock()
					}
				}
				return nil
			}}
		go c.Run(ctx)
	}
	waitAll := func() time.Time {
		deadline := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			n := len(seen)
			var last time.Time
			for _, t := range seen {
				if t.After(last) {
					last = t
				}
			}
			mu.Unlock()
			if n == clients {
				return last
			}
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d clients got the change", n, clients)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitAll()
	u0, _ := p.ctrl.Usage()
	var all, median []time.Duration
	n := 3
	for b.Loop() {
		n = 3 + (n-2)%5
		mu.Lock()
		clear(seen)
		want.Store(int64(n))
		mu.Unlock()
		start := time.Now()
		p.apply(b, "shop", "geo", fmt.Sprintf("{service: geo-service, circuitBreaker: {consecutiveFailures: %d}}", n))
		last := waitAll()
		all = append(all, last.Sub(start))
		mu.Lock()
		var ds []time.Duration
		for _, t := range seen {
			ds = append(ds, t.Sub(start))
		}
		mu.Unlock()
		median = append(median, pct(ds, 50))
	}
	u1, _ := p.ctrl.Usage()
	b.ReportMetric(msOf(pct(all, 50)), "all-clients-p50-ms")
	b.ReportMetric(msOf(pct(all, 99)), "all-clients-max-ms")
	b.ReportMetric(msOf(pct(median, 50)), "median-client-ms")
	b.ReportMetric(msOf(u1.CPU-u0.CPU)/float64(len(all)), "controller-cpu-ms/push")
	b.ReportMetric(float64(u1.PeakRSS)/(1<<20), "controller-peak-rss-MB")
}
