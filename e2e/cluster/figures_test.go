package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
)

// TestClusterFigures measures, for docs/cluster.md and docs/benchmarks.md,
// the time from `kubectl apply` of a Deployment to its pod Ready with and
// without injection (median of 5 each), and the sidecar's memory working
// set and CPU from the kubelet's summary API, idle and under ~1,000
// requests a second from its app. It asserts no figure, and runs only
// with MINIMESH_CLUSTER_FIGURES=1 (about a minute and a half).
func TestClusterFigures(t *testing.T) {
	if os.Getenv("MINIMESH_CLUSTER_FIGURES") != "1" {
		t.Skip("MINIMESH_CLUSTER_FIGURES=1 runs it")
	}
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	importImages(ctx, t, c)
	if out, err := c.KubectlStdin(ctx, backend, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "demo", "backend")

	// Apply → Ready, plain and injected in turn.
	var plain, injected []time.Duration
	for i := 0; i < 5; i++ {
		for _, injectIt := range []bool{false, true} {
			name := fmt.Sprintf("plain-%d", i)
			if injectIt {
				name = fmt.Sprintf("injected-%d", i)
			}
			d := strings.NewReplacer("name: client", "name: "+name, "app: client", "app: "+name).Replace(client)
			if injectIt {
				d = inject(ctx, t, d)
			}
			t0 := time.Now()
			if out, err := c.KubectlStdin(ctx, d, "apply", "-f", "-"); err != nil {
				t.Fatal(out, err)
			}
			for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
				dep, err := c.Client.AppsV1().Deployments("demo").Get(ctx, name, metav1.GetOptions{})
				if err == nil && readyOne(dep) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("deployment %s not Ready in 2 minutes", name)
				}
			}
			if injectIt {
				injected = append(injected, time.Since(t0))
			} else {
				plain = append(plain, time.Since(t0))
			}
			if out, err := c.Kubectl(ctx, "-n", "demo", "delete", "deployment", name, "--wait=false"); err != nil {
				t.Fatal(out, err)
			}
		}
	}
	t.Logf("kubectl apply → pod Ready: without injection median %s %v; injected median %s %v",
		median(plain), plain, median(injected), injected)

	// The sidecar's resources: an injected agent calling the backend.
	app := strings.NewReplacer("namespace: breaker", "namespace: demo",
		"http://flaky.breaker.svc.cluster.local", "http://backend.demo.svc.cluster.local").Replace(agentApp)
	app = inject(ctx, t, app)
	if out, err := c.KubectlStdin(ctx, app, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "demo", "app")
	pods, err := c.Client.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{LabelSelector: "app=app"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("app pods: %v", err)
	}
	a := agentOf(t, pods.Items[0])
	podName := pods.Items[0].Name

	s0 := sidecarStats(ctx, t, c, podName)
	time.Sleep(5 * time.Second) // a measurement window
	s1 := sidecarStats(ctx, t, c, podName)
	t.Logf("minimesh-proxy processes on the host, idle: %s", procRSS())
	t.Logf("sidecar idle: working set %.1f MiB (RSS %.1f MiB), CPU %.1f millicores (over %s)",
		mib(s1.workingSet), mib(s1.rss), s1.millicoresSince(s0), s1.at.Sub(s0.at).Round(time.Millisecond))

	var res struct {
		Sent, OK, Errors int64
		Seconds          float64
	}
	var wg sync.WaitGroup
	wg.Add(1)
	l0 := sidecarStats(ctx, t, c, podName)
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: time.Minute}
		resp, err := c.Get("http://" + a.ip + ":8081/load?rps=1000&seconds=10&url=" + "http://backend.demo.svc.cluster.local/load")
		if err != nil {
			t.Errorf("load: %v", err)
			return
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
			t.Errorf("load: %s: %v", resp.Status, err)
		}
	}()
	// The working set near the end of the load.
	var peak, peakRSS float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		s := sidecarStats(ctx, t, c, podName)
		peak, peakRSS = max(peak, s.workingSet), max(peakRSS, s.rss)
	}
	wg.Wait()
	l1 := sidecarStats(ctx, t, c, podName)
	t.Logf("minimesh-proxy processes on the host, after the load: %s", procRSS())
	t.Logf("load: %d sent, %d ok, %d errors in %.1f s (%.0f req/s)", res.Sent, res.OK, res.Errors, res.Seconds, float64(res.Sent)/res.Seconds)
	t.Logf("sidecar under load: working set %.1f MiB at most (%.1f MiB after; RSS %.1f MiB at most), CPU %.0f millicores (average over %s)",
		mib(peak), mib(l1.workingSet), mib(peakRSS), l1.millicoresSince(l0), l1.at.Sub(l0.at).Round(time.Millisecond))
}

// procRSS is the VmRSS of each minimesh-proxy process on the host (the
// cgroup's rss above counts anonymous memory only).
func procRSS() string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), "Name:\tminimesh-proxy\n") {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmRSS:") || strings.HasPrefix(line, "RssAnon:") || strings.HasPrefix(line, "RssFile:") {
				out = append(out, strings.Join(strings.Fields(line), " "))
			}
		}
		out = append(out, "|")
	}
	return strings.Join(out, " ")
}

func readyOne(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.ReadyReplicas == 1 && d.Status.UpdatedReplicas == 1
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func mib(b float64) float64 { return b / (1 << 20) }

type stats struct {
	at         time.Time
	workingSet float64
	rss        float64
	cpuNanos   float64 // usageCoreNanoSeconds
}

func (s stats) millicoresSince(before stats) float64 {
	return (s.cpuNanos - before.cpuNanos) / float64(s.at.Sub(before.at).Nanoseconds()) * 1000
}

// kubeletSummary is the kubelet's summary API. The API server does not
// proxy to this node (`kubectl get --raw
// /api/v1/nodes/localhost/proxy/stats/summary`: "address not allowed", as
// the node's address is loopback), so it asks the kubelet on its own port
// (anonymous, AlwaysAllow; a self-signed serving certificate).
func kubeletSummary(ctx context.Context, c *cluster.Cluster) (string, error) {
	out, err := c.Kubectl(ctx, "get", "--raw", "/api/v1/nodes/"+cluster.NodeName+"/proxy/stats/summary")
	if err == nil {
		return out, nil
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // loopback, the test's own kubelet
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:10250/stats/summary", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("kubelet /stats/summary: %s: %.200s", resp.Status, b)
	}
	return string(b), err
}

// sidecarStats reads the minimesh-proxy container of pod in the kubelet's
// summary API.
func sidecarStats(ctx context.Context, t *testing.T, c *cluster.Cluster, pod string) stats {
	t.Helper()
	out, err := kubeletSummary(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	var summary struct {
		Pods []struct {
			PodRef     struct{ Name string }
			Containers []struct {
				Name string
				CPU  struct {
					Time                 time.Time
					UsageCoreNanoSeconds float64
				}
				Memory struct {
					Time            time.Time
					WorkingSetBytes float64
					RSSBytes        float64
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &summary); err != nil {
		t.Fatal(err)
	}
	for _, p := range summary.Pods {
		if p.PodRef.Name != pod {
			continue
		}
		for _, ct := range p.Containers {
			if ct.Name == "minimesh-proxy" {
				return stats{at: ct.CPU.Time, workingSet: ct.Memory.WorkingSetBytes, rss: ct.Memory.RSSBytes, cpuNanos: ct.CPU.UsageCoreNanoSeconds}
			}
		}
	}
	t.Fatalf("no minimesh-proxy container of pod %s in the summary:\n%.4000s", pod, out)
	return stats{}
}
