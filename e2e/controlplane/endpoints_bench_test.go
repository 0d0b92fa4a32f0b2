package controlplane_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// rollPod is one pod of the rolled Deployment.
type rollPod struct {
	ip                          string
	ready, serving, terminating bool
	gone                        bool
}

// rolledService writes the EndpointSlices of one Service as Kubernetes'
// EndpointSlice controller does while a Deployment rolls: one write per
// pod change (its batch period is 0 by default), pods kept in two slices
// of at most 100 (the controller's default maximum), and a pod's slice
// never changes.
type rolledService struct {
	cs    kubernetes.Interface
	ns    string
	name  string
	pods  []*rollPod
	slots [2][]*rollPod
	made  [2]bool
	// writes counts slice writes; lastWrite is when the last returned.
	writes    int
	lastWrite time.Time
}

func (r *rolledService) add(ip string) *rollPod {
	p := &rollPod{ip: ip}
	slot := len(r.pods) % 2
	r.pods = append(r.pods, p)
	r.slots[slot] = append(r.slots[slot], p)
	return p
}

func (r *rolledService) slotOf(p *rollPod) int {
	for i, s := range r.slots {
		for _, q := range s {
			if q == p {
				return i
			}
		}
	}
	return -1
}

// write writes slot i's slice as it is now.
func (r *rolledService) write(ctx context.Context, i int) error {
	var live []*rollPod
	for _, p := range r.slots[i] {
		if !p.gone {
			live = append(live, p)
		}
	}
	r.slots[i] = live
	var ps []pod
	for _, p := range live {
		ps = append(ps, pod{ip: p.ip, zone: "zone-a", ready: p.ready, serving: p.serving, terminating: p.terminating})
	}
	s := endpointSlice(r.ns, r.name, fmt.Sprintf("%s-%d", r.name, i), map[string]int32{"http": 8080}, ps...)
	var err error
	if r.made[i] {
		_, err = r.cs.DiscoveryV1().EndpointSlices(r.ns).Update(ctx, s, metav1.UpdateOptions{})
	} else {
		_, err = r.cs.DiscoveryV1().EndpointSlices(r.ns).Create(ctx, s, metav1.CreateOptions{})
		r.made[i] = true
	}
	r.writes++
	r.lastWrite = time.Now()
	return err
}

func (r *rolledService) change(ctx context.Context, p *rollPod, f func(*rollPod), pause time.Duration) error {
	f(p)
	if err := r.write(ctx, r.slotOf(p)); err != nil {
		return err
	}
	time.Sleep(pause)
	return nil
}

// roll replaces every pod the way a Deployment with maxSurge 25% and
// maxUnavailable 25% does, a quarter at a time: the new pods are created
// (not ready yet), then one by one a new pod becomes ready, an old one
// terminates (serving, not ready) and is removed. nextIP names the new
// pods. pause is the time between two writes.
func (r *rolledService) roll(ctx context.Context, nextIP func(int) string, pause time.Duration) error {
	old := append([]*rollPod(nil), r.pods...)
	surge := (len(old) + 3) / 4
	for w := 0; w*surge < len(old); w++ {
		var fresh []*rollPod
		for k := 0; k < surge && w*surge+k < len(old); k++ {
			p := r.add(nextIP(w*surge + k))
			fresh = append(fresh, p)
			if err := r.change(ctx, p, func(*rollPod) {}, pause); err != nil {
				return err
			}
		}
		for k, p := range fresh {
			o := old[w*surge+k]
			steps := []struct {
				p *rollPod
				f func(*rollPod)
			}{
				{p, func(p *rollPod) { p.ready, p.serving = true, true }},
				{o, func(p *rollPod) { p.ready, p.serving, p.terminating = false, true, true }},
				{o, func(p *rollPod) { p.gone = true }},
			}
			for _, s := range steps {
				if err := r.change(ctx, s.p, s.f, pause); err != nil {
					return err
				}
			}
		}
	}
	var live []*rollPod
	for _, p := range r.pods {
		if !p.gone {
			live = append(live, p)
		}
	}
	r.pods = live
	return nil
}

// BenchmarkEDSRollTo1000 is the time from the last EndpointSlice write of
// a rolling Deployment of 100 replicas to the moment the 1,000th sidecar
// holds the final endpoints, with the built controller (its Service and
// EndpointSlice watch, the debounce, the xDS server) against the real API
// server, and 1,000 xDS clients (the sidecar's own client code, as
// goroutines in this process, spread over 20 namespaces) asking for every
// Service's endpoints (the rolled one's 100 to 125, and those of
// MINIMESH_EDS_OTHERS other Services of 10 each). It reports the
// controller's CPU over the roll and its peak RSS, and how many endpoint
// sets one sidecar received during the roll. Each iteration is one roll
// (400 slice writes, 5 ms apart).
//
//	go test -run '^$' -bench EDSRollTo1000 -benchtime 3x -timeout 30m ./e2e/controlplane/
func BenchmarkEDSRollTo1000(b *testing.B) {
	const (
		clients  = 1000
		replicas = 100
		pause    = 5 * time.Millisecond
	)
	// Other Services of 10 endpoints each, which every push carries too
	// (MINIMESH_EDS_OTHERS, default 0): the 1,000 clients decode every
	// push on this machine's cores, which a cluster spreads over 1,000
	// pods, so a large set measures this process more than the
	// controller.
	others, _ := strconv.Atoi(os.Getenv("MINIMESH_EDS_OTHERS"))
	p := startPlane(b, "--log-level", "warn")
	ctx := context.Background()
	// Not the test cluster's client: client-go's default of 5 requests a
	// second would pace the roll, not the script.
	rc := rest.CopyConfig(p.c.Config)
	rc.QPS, rc.Burst = 1000, 1000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	mkService := func(name string) error {
		_, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 8000}}}}, metav1.CreateOptions{})
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, others+1)
	for i := range others {
		wg.Go(func() {
			name := fmt.Sprintf("svc-%d", i)
			if err := mkService(name); err != nil {
				errs <- err
				return
			}
			var ps []pod
			for j := range 10 {
				ps = append(ps, readyPod(fmt.Sprintf("10.2.%d.%d", i, j+1)))
			}
			if _, err := cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, endpointSlice("shop", name, name+"-0", map[string]int32{"http": 8080}, ps...), metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if err := mkService("geo"); err != nil {
		b.Fatal(err)
	}
	gen := 0
	ipOf := func(gen, i int) string { return fmt.Sprintf("10.%d.%d.%d", 10+gen%2, i/250, i%250+1) }
	geo := &rolledService{cs: cs, ns: "shop", name: "geo"}
	for i := range replicas {
		pd := geo.add(ipOf(gen, i))
		pd.ready, pd.serving = true, true
	}
	for i := range 2 {
		if err := geo.write(ctx, i); err != nil {
			b.Fatal(err)
		}
	}

	// A client holds the final set when geo has exactly the replicas of
	// the current generation, all ready.
	name := wellknown.EndpointName("geo", "shop", 8000)
	var wantGen atomic.Int64
	final := func(eps []xdsclient.Endpoint) bool {
		if len(eps) != replicas {
			return false
		}
		prefix := netip.MustParseAddr(ipOf(int(wantGen.Load()), 0)).As4()[1]
		for _, e := range eps {
			if e.Terminating || e.Addr.Addr().As4()[1] != prefix {
				return false
			}
		}
		return true
	}
	var mu sync.Mutex
	seen := map[int]time.Time{}
	sets := make([]atomic.Int64, clients) // endpoint sets applied, per client
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := range clients {
		c := edsClient(p.xdsAddr, fmt.Sprintf("pod-%d", i), fmt.Sprintf("ns-%d", i%20), nil)
		c.ApplyEndpoints = func(eps map[string][]xdsclient.Endpoint, _ string) error {
			sets[i].Add(1)
			if final(eps[name]) {
				mu.Lock()
				if _, ok := seen[i]; !ok {
					seen[i] = time.Now()
				}
				mu.Unlock()
			}
			return nil
		}
		go c.Run(cctx)
	}
	waitAll := func() []time.Time {
		deadline := time.Now().Add(120 * time.Second)
		for {
			mu.Lock()
			n := len(seen)
			mu.Unlock()
			if n == clients {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d clients hold the final endpoints", n, clients)
			}
			time.Sleep(5 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		var ts []time.Time
		for _, t := range seen {
			ts = append(ts, t)
		}
		return ts
	}
	waitAll()

	var last, median, cpu, rollTime []time.Duration
	var pushes []int64
	var peak int64
	for b.Loop() {
		mu.Lock()
		clear(seen)
		gen++
		wantGen.Store(int64(gen))
		mu.Unlock()
		before := sets[0].Load()
		u0, _ := p.ctrl.Usage()
		start := time.Now()
		writes := geo.writes
		if err := geo.roll(ctx, func(i int) string { return ipOf(gen, i) }, pause); err != nil {
			b.Fatal(err)
		}
		rollTime = append(rollTime, geo.lastWrite.Sub(start))
		ts := waitAll()
		u1, _ := p.ctrl.Usage()
		var ds []time.Duration
		for _, t := range ts {
			ds = append(ds, max(0, t.Sub(geo.lastWrite)))
		}
		last = append(last, pct(ds, 100))
		median = append(median, pct(ds, 50))
		cpu = append(cpu, u1.CPU-u0.CPU)
		pushes = append(pushes, sets[0].Load()-before)
		peak = max(peak, u1.PeakRSS)
		b.Logf("roll %d: %d slice writes in %v; last write → 1,000th sidecar %v (median %v); controller CPU %v; %d endpoint sets to one sidecar; controller peak RSS %.1f MB",
			gen, geo.writes-writes, rollTime[len(rollTime)-1].Round(time.Millisecond), last[len(last)-1].Round(time.Millisecond),
			median[len(median)-1].Round(time.Millisecond), cpu[len(cpu)-1].Round(time.Millisecond), pushes[len(pushes)-1], float64(u1.PeakRSS)/(1<<20))
	}
	b.ReportMetric(msOf(pct(last, 50)), "last-write-to-all-ms")
	b.ReportMetric(msOf(pct(median, 50)), "last-write-to-median-ms")
	b.ReportMetric(msOf(pct(rollTime, 50)), "roll-ms")
	b.ReportMetric(msOf(pct(cpu, 50)), "controller-cpu-ms/roll")
	slices.Sort(pushes)
	b.ReportMetric(float64(pushes[(len(pushes)-1)/2]), "sets/sidecar/roll")
	b.ReportMetric(float64(peak)/(1<<20), "controller-peak-rss-MB")
}
