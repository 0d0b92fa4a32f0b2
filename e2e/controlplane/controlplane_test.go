// Package controlplane_test proves the policy control plane with real
// parts: ResiliencePolicy objects applied with kubectl to a real API server
// reach a running sidecar (the built binary) through the built controller
// over xDS, and change what the sidecar does.
package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/injector/policyctl"
)

const geo = "geo-service:8000"

type plane struct {
	c        *kube.Cluster
	xdsAddr  string
	ctrlArgs []string
	ctrl     *proc.Proc
	sidecar  string // admin URL
	client   *http.Client
	upstream *httptest.Server
}

func bin(t testing.TB, name string) string {
	t.Helper()
	p, err := tools.Binary(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// setup starts the API server with the CRD, the controller (policies
// only: no webhook) and a sidecar in namespace shop whose geo-service
// always fails.
func setup(t testing.TB) *plane {
	t.Helper()
	p := startPlane(t)
	p.startSidecar(t, "shop")
	return p
}

// startPlane starts the API server with the CRD and the controller (with
// extra flags), and nothing else: what production starts from.
func startPlane(t testing.TB, extra ...string) *plane {
	t.Helper()
	p := &plane{c: kube.Start(t)}
	p.installCRD(t)
	ports := controller.FreePorts(t, 2)
	p.xdsAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	p.ctrlArgs = []string{"controller", "--kubeconfig", p.c.Kubeconfig, "--xds-addr", p.xdsAddr,
		"--admin-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--namespace", "minimesh",
		"--shutdown-delay", "0"} // a stop is a test's restart, not a rollout
	p.ctrlArgs = append(p.ctrlArgs, extra...)
	p.startController(t)
	p.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	t.Cleanup(p.upstream.Close)
	return p
}

// startSidecar starts the built sidecar in namespace ns, following the
// controller, with geo-service pointed at the always-failing upstream,
// and returns how long it took to be ready. It waits for the control
// plane's first answer as long as the test does: ready means answered.
func (p *plane) startSidecar(t testing.TB, ns string) time.Duration {
	t.Helper()
	ports := controller.FreePorts(t, 2)
	out := fmt.Sprintf("127.0.0.1:%d", ports[0])
	p.sidecar = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	start := time.Now()
	sc := proc.StartT(t, "sidecar", bin(t, "minimesh-proxy"), []string{"run",
		"--outbound-addr", out, "--admin-addr", strings.TrimPrefix(p.sidecar, "http://"),
		"--xds-address", p.xdsAddr, "--xds-initial-timeout", "1m", "--namespace", ns, "--pod-name", "web-1", "--service-name", "web",
		"--resolve", geo + "=" + strings.TrimPrefix(p.upstream.URL, "http://"), "--access-log", "off"}, proc.Options{})
	if err := sc.WaitReady(20*time.Second, func() error { return get(p.sidecar + "/ready") }); err != nil {
		t.Fatalf("sidecar in namespace %s: no answer from the control plane: %v", ns, err)
	}
	proxyURL, _ := url.Parse("http://" + out)
	p.client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 10 * time.Second}
	return time.Since(start)
}

// installCRD installs the chart's CRD and the namespaces of the tests.
func (p *plane) installCRD(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	root, err := tools.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := p.c.Kubectl(ctx, "apply", "-f", filepath.Join(root, "charts", "minimesh", "crds")); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := p.c.WaitEstablished(ctx, "resiliencepolicies.minimesh.io"); err != nil {
		t.Fatal(err)
	}
	p.c.CreateNamespace(t, "shop", nil)
	p.c.CreateNamespace(t, "minimesh", nil)
}

func (p *plane) startController(t testing.TB) {
	t.Helper()
	p.ctrl = proc.StartT(t, "controller", bin(t, "minimesh"), p.ctrlArgs, proc.Options{})
	admin := ""
	for i, a := range p.ctrlArgs {
		if a == "--admin-addr" {
			admin = "http://" + p.ctrlArgs[i+1]
		}
	}
	if err := p.ctrl.WaitReady(30*time.Second, func() error { return get(admin + "/readyz") }); err != nil {
		t.Fatal(err)
	}
}

func get(u string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %d", u, resp.StatusCode)
	}
	return nil
}

func (p *plane) apply(t testing.TB, ns, name, spec string) {
	t.Helper()
	doc := fmt.Sprintf("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: %s, namespace: %s}\nspec: %s\n", name, ns, spec)
	if out, err := p.c.KubectlStdin(context.Background(), doc, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

type sidecarConfig struct {
	Source     string `json:"source"`
	XDSVersion string `json:"xdsVersion"`
	Policies   []struct {
		Source string `json:"source"`
		Spec   struct {
			Service        string `json:"service"`
			CircuitBreaker struct {
				ConsecutiveFailures int `json:"consecutiveFailures"`
			} `json:"circuitBreaker"`
		} `json:"spec"`
	} `json:"policies"`
}

// config is the sidecar's /debug/config.
func (p *plane) config(t testing.TB) sidecarConfig {
	t.Helper()
	resp, err := http.Get(p.sidecar + "/debug/config")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c sidecarConfig
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// failures is the sidecar's consecutiveFailures for geo-service, from
// /debug/config; -1 when it has no policy for it.
func (p *plane) failures(t testing.TB) (int, string) {
	t.Helper()
	c := p.config(t)
	for _, pol := range c.Policies {
		if pol.Spec.Service == "geo-service" {
			return pol.Spec.CircuitBreaker.ConsecutiveFailures, c.Source
		}
	}
	return -1, c.Source
}

// policySource is where the sidecar's policy for service came from
// (its xDS cluster), from /debug/config.
func (p *plane) policySource(t testing.TB, service string) string {
	t.Helper()
	for _, pol := range p.config(t).Policies {
		if pol.Spec.Service == service {
			return pol.Source
		}
	}
	return ""
}

func (p *plane) waitFailures(t testing.TB, want int) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if n, src := p.failures(t); n == want && src == "xds" {
			return time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			n, src := p.failures(t)
			t.Fatalf("sidecar has consecutiveFailures %d from %q, want %d from xds", n, src, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// opensAfter sends failing requests until the breaker answers
// circuit-open and returns how many were sent before.
func (p *plane) opensAfter(t testing.TB) int {
	t.Helper()
	resp, err := http.Post(p.sidecar+"/debug/breakers/reset?destination="+url.QueryEscape(geo), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 && resp.StatusCode != 404 { // 404: no traffic to it yet
		t.Fatalf("reset the breaker: %d", resp.StatusCode)
	}
	for i := 0; i < 20; i++ {
		resp, err := p.client.Get("http://" + geo + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Header.Get("X-Minimesh-Error") == "circuit-open" {
			return i
		}
	}
	t.Fatal("the breaker never opened")
	return 0
}

func (p *plane) accepted(t testing.TB, ns, name string) (status, message string) {
	t.Helper()
	dc, err := dynamic.NewForConfig(p.c.Config)
	if err != nil {
		t.Fatal(err)
	}
	u, err := dc.Resource(policyctl.GVR).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructuredSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m := c.(map[string]any)
		if m["type"] == "Accepted" {
			return fmt.Sprint(m["status"]), fmt.Sprint(m["message"])
		}
	}
	return "", ""
}

func TestPolicyReachesSidecar(t *testing.T) {
	p := setup(t)

	p.apply(t, "shop", "geo", "{service: geo-service, circuitBreaker: {consecutiveFailures: 3}}")
	t.Logf("apply → sidecar: %s", p.waitFailures(t, 3))
	if n := p.opensAfter(t); n != 3 {
		t.Fatalf("breaker opened after %d failures, want 3", n)
	}
	waitStatus(t, p, "shop", "geo", "True")

	// A lower threshold opens the breaker sooner, without a restart.
	p.apply(t, "shop", "geo", "{service: geo-service, circuitBreaker: {consecutiveFailures: 2}}")
	p.waitFailures(t, 2)
	if n := p.opensAfter(t); n != 2 {
		t.Fatalf("after the change the breaker opened after %d failures, want 2", n)
	}

	// Valid for the schema, not for the decoder (a DNS label longer than
	// 63): refused in its status, and the last good version keeps serving.
	long := strings.Repeat("a", 64)
	p.apply(t, "shop", "geo", "{service: "+long+", circuitBreaker: {consecutiveFailures: 9}}")
	status, msg := waitStatus(t, p, "shop", "geo", "False")
	if !strings.Contains(msg, "spec.service") || !strings.Contains(msg, "last valid version keeps serving") {
		t.Errorf("Accepted=%s message %q", status, msg)
	}
	time.Sleep(500 * time.Millisecond)
	if n, _ := p.failures(t); n != 2 {
		t.Fatalf("after an invalid update the sidecar has %d, want the last good 2", n)
	}

	// The controller restarts (helm upgrade restarts it) with the object
	// still invalid: its last valid version, recorded in its status,
	// keeps serving. Another policy applied after the restart tells that
	// the sidecar has the new controller's answer. Before, the new
	// process knew nothing of the last valid version and every sidecar
	// dropped it.
	p.ctrl.Stop()
	p.startController(t)
	p.apply(t, "shop", "pay", "{service: pay-service, timeout: 3s}")
	for deadline := time.Now().Add(30 * time.Second); p.policySource(t, "pay-service") == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never got pay-service from the restarted controller")
		}
	}
	if n, src := p.failures(t); n != 2 || src != "xds" {
		t.Fatalf("after a controller restart the sidecar has %d from %q, want the last valid 2 from xds", n, src)
	}

	// The controller goes away: the sidecar keeps serving its policies;
	// it comes back and the sidecar resyncs.
	p.ctrl.Stop()
	time.Sleep(500 * time.Millisecond)
	if n, src := p.failures(t); n != 2 || src != "xds" {
		t.Fatalf("controller gone: sidecar has %d from %q", n, src)
	}
	if n := p.opensAfter(t); n != 2 {
		t.Fatalf("controller gone: breaker opened after %d failures, want 2", n)
	}
	p.apply(t, "shop", "geo", "{service: geo-service, circuitBreaker: {consecutiveFailures: 4}}")
	p.startController(t)
	p.waitFailures(t, 4)
}

func waitStatus(t testing.TB, p *plane, ns, name, want string) (string, string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, m := p.accepted(t, ns, name)
		if s == want {
			return s, m
		}
		if time.Now().After(deadline) {
			t.Fatalf("Accepted=%q (%s), want %s", s, m, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterWidePolicyReachesEveryNamespace starts from what production
// starts from: the controller runs with only cluster-wide policies (in its
// own namespace); then a namespace appears and a sidecar in it connects.
// No policy names that namespace, and nothing tells the controller about
// it beforehand: the sidecar must still get, and apply, the cluster-wide
// policies; take its namespace's own when one comes; and fall back to the
// cluster-wide ones when that goes.
func TestClusterWidePolicyReachesEveryNamespace(t *testing.T) {
	p := startPlane(t)
	p.apply(t, "minimesh", "geo", "{service: geo-service, circuitBreaker: {consecutiveFailures: 4}}")
	waitStatus(t, p, "minimesh", "geo", "True")

	p.c.CreateNamespace(t, "checkout", nil)
	ready := p.startSidecar(t, "checkout")
	p.waitFailures(t, 4)
	t.Logf("sidecar start → ready with the control plane's answer: %v", ready)
	// Its short name is checkout's Service in the resources checkout is
	// served, as the sidecar reads it (an Envoy there routes by them),
	// not the controller namespace's (geo-service.minimesh).
	if src, want := p.policySource(t, "geo-service"), "xds:outbound|0||geo-service.checkout.svc.cluster.local"; src != want {
		t.Errorf("the cluster-wide policy came from %q, want %q", src, want)
	}
	if n := p.opensAfter(t); n != 4 {
		t.Fatalf("the cluster-wide policy: breaker opened after %d failures, want 4", n)
	}

	p.apply(t, "checkout", "geo", "{service: geo-service, circuitBreaker: {consecutiveFailures: 2}}")
	p.waitFailures(t, 2)
	if out, err := p.c.Kubectl(context.Background(), "delete", "resiliencepolicy", "-n", "checkout", "geo"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	t.Logf("the namespace's last policy deleted → the cluster-wide one back: %v", p.waitFailures(t, 4))
	if n := p.opensAfter(t); n != 4 {
		t.Fatalf("after the fall-back the breaker opened after %d failures, want 4", n)
	}
}

// TestConflictingPoliciesServeTheOlder: two ResiliencePolicy objects in
// one namespace for the same service, which the CRD cannot refuse (it
// sees one object at a time). The older is served, the newer says
// Accepted=False with reason Conflict, and the namespace's other
// policies and later changes still reach its sidecars. Before, the
// controller handed both to the xDS server, which refused the
// namespace's whole set: a sidecar starting in that namespace got no
// answer at all (and served the defaults after --xds-initial-timeout),
// no change to the namespace's policies reached any sidecar, and both
// objects said Accepted=True.
func TestConflictingPoliciesServeTheOlder(t *testing.T) {
	p := startPlane(t)
	p.apply(t, "shop", "geo-a", "{service: geo-service, circuitBreaker: {consecutiveFailures: 3}}")
	waitStatus(t, p, "shop", "geo-a", "True")
	p.apply(t, "shop", "geo-b", "{service: geo-service, circuitBreaker: {consecutiveFailures: 6}}")
	_, msg := waitStatus(t, p, "shop", "geo-b", "False")
	if !strings.Contains(msg, "geo-a") {
		t.Errorf("the refused policy's status does not name the one served: %q", msg)
	}
	if s, _ := p.accepted(t, "shop", "geo-a"); s != "True" {
		t.Errorf("the older policy: Accepted=%s", s)
	}

	p.startSidecar(t, "shop")
	p.waitFailures(t, 3)

	if out, err := p.c.Kubectl(context.Background(), "delete", "resiliencepolicy", "-n", "shop", "geo-a"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	t.Logf("the older deleted → the other served: %v", p.waitFailures(t, 6))
	waitStatus(t, p, "shop", "geo-b", "True")
}
