package injector_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/wellknown"
)

// concurrentPods is the load: 50 pod creations at once.
const concurrentPods = 50

// BenchmarkPodCreate50 creates 50 pods at once against the real API server,
// in a namespace the injector serves ("webhook") and, side by side, in one
// the webhook does not match ("baseline"): the difference is what the
// webhook adds to a pod creation. It reports the creation latency p50/p99,
// the controller's own time per admission (from its histogram), its CPU per
// pod and its peak memory.
//
//	go test -run '^$' -bench PodCreate -benchtime 10x -count 5 ./e2e/injector/
func BenchmarkPodCreate50(b *testing.B) { benchPodCreate(b, concurrentPods) }

// BenchmarkPodCreate1 is the same 50 pods one at a time: the webhook's cost
// without 50 requests queueing for two cores.
func BenchmarkPodCreate1(b *testing.B) { benchPodCreate(b, 1) }

func benchPodCreate(b *testing.B, concurrent int) {
	e := setup(b)
	ctx := context.Background()
	nss := map[string]string{
		"webhook":  e.namespace(b, ctx, "bench-webhook", map[string]string{wellknown.AnnotationInject: "enabled"}),
		"baseline": e.namespace(b, ctx, "bench-baseline", map[string]string{skipLabel: "true"}),
	}
	for _, mode := range []string{"baseline", "webhook"} {
		b.Run(mode, func(b *testing.B) {
			ns := nss[mode]
			sum0, n0 := e.admissionTime(b)
			u0, _ := e.ctrl.Usage()
			var lat []time.Duration
			var mu sync.Mutex
			round := 0
			for b.Loop() {
				round++
				var wg sync.WaitGroup
				// 50 pods per round, by `concurrent` workers.
				errs := make(chan error, concurrentPods)
				for w := range concurrent {
					wg.Go(func() {
						for i := w; i < concurrentPods; i += concurrent {
							pod := appPod(fmt.Sprintf("p-%d-%d", round, i), nil)
							start := time.Now()
							_, err := e.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
							d := time.Since(start)
							if err != nil {
								errs <- err
								return
							}
							mu.Lock()
							lat = append(lat, d)
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				b.StopTimer()
				// Keep etcd small between rounds; deletion is not measured.
				if err := e.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			slices.Sort(lat)
			b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
			b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
			if sum1, n1 := e.admissionTime(b); n1 > n0 {
				b.ReportMetric((sum1-sum0)/(n1-n0)*1000, "admission-ms")
			}
			if u, err := e.ctrl.Usage(); err == nil {
				b.ReportMetric(float64(u.PeakRSS)/(1<<20), "controller-peak-rss-MB")
				if mode == "webhook" {
					b.ReportMetric(ms(u.CPU-u0.CPU)/float64(len(lat)), "controller-cpu-ms/pod")
				}
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// admissionTime reads the controller's admission histogram: total seconds
// and count.
func (e *env) admissionTime(b testing.TB) (sum, count float64) {
	resp, err := http.Get(e.adminURL + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(val, 64)
		switch name {
		case "minimesh_injector_admission_duration_seconds_sum":
			sum = v
		case "minimesh_injector_admission_duration_seconds_count":
			count = v
		}
	}
	return sum, count
}
