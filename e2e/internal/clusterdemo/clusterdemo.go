// Package clusterdemo is `make demo`'s bakery story played in the one-node
// cluster (make demo-cluster; docs/demo.md): the chart installed with its
// injector, namespace bakery-ia labelled for injection, a flaky
// nominatim-service and a tenant that geocodes bakeries through it with no
// resilience code of its own, the ResiliencePolicy served over xDS. The
// tenant's sidecar opens the breaker while Nominatim fails, answers at once
// without reaching it, and closes once it is back.
//
// Both workloads are e2e/cluster/testapp: nominatim-service is its
// backend (failure switched from outside), the tenant its agent, which
// makes each call when told to and reports status and headers; the story's
// clock and screen run here, outside the cluster.
package clusterdemo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
)

// Manifests are what a user would apply: the namespace opted in, the
// policy, Nominatim and the tenant. The policy is make demo's, openTimeout
// shortened so that the story fits in a minute.
const Manifests = `apiVersion: v1
kind: Namespace
metadata: {name: bakery-ia, labels: {minimesh.io/inject: enabled}}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: nominatim, namespace: bakery-ia}
spec:
  service: nominatim-service
  timeout: 2s
  circuitBreaker:
    consecutiveFailures: 5
    openTimeout: 5s   # production default: 60s
    halfOpenRequests: 2
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: nominatim, namespace: bakery-ia}
spec:
  selector: {matchLabels: {app: nominatim}}
  template:
    metadata: {labels: {app: nominatim}}
    spec:
      containers:
      - name: nominatim
        image: ` + cluster.TestappImage + `
        imagePullPolicy: Never
        args: [serve, ":8080"]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: nominatim-service, namespace: bakery-ia}
spec:
  selector: {app: nominatim}
  ports: [{port: 8000, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tenant, namespace: bakery-ia}
spec:
  selector: {matchLabels: {app: tenant}}
  template:
    metadata: {labels: {app: tenant}}
    spec:
      containers:
      - name: tenant
        image: ` + cluster.TestappImage + `
        imagePullPolicy: Never
        args: [agent, "http://nominatim-service.bakery-ia.svc.cluster.local:8000", ":8081"]
        readinessProbe: {httpGet: {path: /ready, port: 8081}, periodSeconds: 1}
`

const (
	nominatimURL = "http://nominatim-service.bakery-ia.svc.cluster.local:8000"
	destination  = "nominatim-service:8000"
)

// Options shape the story.
type Options struct {
	Out io.Writer
	// Healthy, Outage and Recovery are the lengths of the three acts
	// (defaults 6 s, 10 s, 12 s: the recovery covers openTimeout).
	Healthy, Outage, Recovery time.Duration
	// Interval between the tenant's registrations (default 300 ms).
	Interval time.Duration
}

// Report is what happened.
type Report struct {
	Requests, OK, NominatimErrors, FastFails, Other int
	// NominatimHits is how many geocoding calls reached Nominatim;
	// Reached is how many of the tenant's calls should have (all but the
	// fast-fails).
	NominatimHits, Reached int
	Transitions            map[string]float64 // "closed->open" → count, from the sidecar's metrics
	FinalState             string
	LastStatus             int
}

// Check says whether the story happened: the breaker opened and answered
// at once, no fast-fail reached Nominatim, and it closed again.
func (r Report) Check() error {
	var errs []error
	if r.FastFails == 0 {
		errs = append(errs, errors.New("the breaker never answered circuit-open"))
	}
	// Every answer from Nominatim is a call it got; a call the sidecar
	// answered otherwise (a timeout, a connect failure) may or may not have
	// reached it; a fast-fail never does.
	if answered := r.OK + r.NominatimErrors; r.NominatimHits < answered || r.NominatimHits > r.Reached {
		errs = append(errs, fmt.Errorf("nominatim got %d calls, want between the %d it answered and the %d that were not fast-failed (%d fast-fails must not reach it)",
			r.NominatimHits, answered, r.Reached, r.FastFails))
	}
	if r.Transitions["closed->open"] < 1 || r.Transitions["half-open->closed"] < 1 {
		errs = append(errs, fmt.Errorf("breaker transitions %v: want closed->open and half-open->closed", r.Transitions))
	}
	if r.FinalState != "closed" || r.LastStatus != http.StatusOK {
		errs = append(errs, fmt.Errorf("at the end the breaker is %q and the last call got %d, want closed and 200", r.FinalState, r.LastStatus))
	}
	return errors.Join(errs...)
}

// Run applies the manifests in a cluster where the chart is installed,
// plays the story and returns what happened.
func Run(ctx context.Context, c *cluster.Cluster, opt Options) (Report, error) {
	if opt.Healthy <= 0 {
		opt.Healthy, opt.Outage, opt.Recovery = 6*time.Second, 10*time.Second, 12*time.Second
	}
	if opt.Interval <= 0 {
		opt.Interval = 300 * time.Millisecond
	}
	say := func(format string, a ...any) { fmt.Fprintf(opt.Out, format+"\n", a...) }
	var rep Report

	if out, err := c.KubectlStdin(ctx, Manifests, "apply", "-f", "-"); err != nil {
		return rep, fmt.Errorf("kubectl apply: %v: %s", err, out)
	}
	for _, d := range []string{"nominatim", "tenant"} {
		if out, err := c.Kubectl(ctx, "-n", "bakery-ia", "rollout", "status", "deployment/"+d, "--timeout=3m"); err != nil {
			return rep, fmt.Errorf("rollout of %s: %v: %s", d, err, out)
		}
	}
	nom, err := podIP(ctx, c, "app=nominatim")
	if err != nil {
		return rep, err
	}
	tenant, err := podIP(ctx, c, "app=tenant")
	if err != nil {
		return rep, err
	}
	say("bakery-ia: nominatim-service (pod %s) and the tenant (pod %s), both injected by the webhook", nom, tenant)
	say("the tenant's sidecar has the nominatim policy from the controller over xDS:")
	hc := &http.Client{Timeout: 10 * time.Second}
	nomAdmin := "http://" + nom + ":8080/admin"
	agent := "http://" + tenant + ":8081/get?url="
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		var r call
		err := getJSON(ctx, hc, agent+url.QueryEscape("http://127.0.0.1:15020/debug/config")+"&direct=1", &r)
		if err == nil && strings.Contains(r.Body, `"openTimeout": "5s"`) {
			say("  /debug/config: nominatim-service, timeout 2s, 5 failures open the breaker for 5s")
			break
		}
		if time.Now().After(deadline) {
			return rep, fmt.Errorf("the tenant's sidecar has no nominatim policy after 30 s: %v %s", err, r.Body)
		}
	}

	acts := []struct {
		name string
		fail bool
		d    time.Duration
	}{{"Nominatim healthy", false, opt.Healthy}, {"Nominatim fails every call (503)", true, opt.Outage}, {"Nominatim is back", false, opt.Recovery}}
	start := time.Now()
	n := 0
	for _, act := range acts {
		if err := setFailing(ctx, hc, nomAdmin, act.fail); err != nil {
			return rep, err
		}
		say("\n== %5.1fs  %s", time.Since(start).Seconds(), act.name)
		end := time.Now().Add(act.d)
		for time.Now().Before(end) {
			n++
			t0 := time.Now()
			var r call
			u := nominatimURL + "/search?q=" + url.QueryEscape(bakeries[n%len(bakeries)])
			if err := getJSON(ctx, hc, agent+url.QueryEscape(u), &r); err != nil {
				return rep, err
			}
			rep.Requests++
			meshErr := r.Headers.Get("X-Minimesh-Error")
			switch {
			case r.Status == http.StatusOK:
				rep.OK++
			case meshErr == "circuit-open":
				rep.FastFails++
			case r.Status == http.StatusServiceUnavailable && meshErr == "":
				rep.NominatimErrors++
			default:
				rep.Other++
			}
			if meshErr != "circuit-open" {
				rep.Reached++
			}
			rep.LastStatus = r.Status
			state, _ := breakerState(ctx, hc, tenant)
			line := fmt.Sprintf("%5.1fs  #%-3d %-26s %d", time.Since(start).Seconds(), n, bakeries[n%len(bakeries)], r.Status)
			if meshErr != "" {
				line += " " + meshErr
			}
			say("%-52s breaker %-9s %4dms  X-Request-ID %s", line, state, time.Since(t0).Milliseconds(), r.Headers.Get("X-Request-ID"))
			select {
			case <-ctx.Done():
				return rep, ctx.Err()
			case <-time.After(time.Until(t0.Add(opt.Interval))):
			}
		}
	}

	var hits struct {
		Paths map[string]int `json:"paths"`
	}
	if err := getJSON(ctx, hc, nomAdmin+"/hits", &hits); err != nil {
		return rep, err
	}
	rep.NominatimHits = hits.Paths["/search"]
	rep.FinalState, _ = breakerState(ctx, hc, tenant)
	if rep.Transitions, err = transitions(ctx, hc, tenant); err != nil {
		return rep, err
	}
	say("\n%d registrations: %d geocoded, %d failed at Nominatim, %d answered at once by the sidecar (circuit-open), %d other",
		rep.Requests, rep.OK, rep.NominatimErrors, rep.FastFails, rep.Other)
	say("Nominatim received %d calls (the tenant's calls that were not fast-failed: %d)", rep.NominatimHits, rep.Reached)
	say("breaker transitions (the sidecar's minimesh_circuit_breaker_transitions_total): %v; now %s", rep.Transitions, rep.FinalState)
	return rep, nil
}

var bakeries = []string{
	"Calle Mayor 12, Madrid", "Rue de Rivoli 8, Paris", "Via Roma 3, Torino", "Hauptstrasse 5, Berlin",
	"Praça do Comércio 1, Lisboa", "Damrak 20, Amsterdam", "Karlova 4, Praha",
}

type call struct {
	Status  int         `json:"status"`
	Error   string      `json:"error"`
	Headers http.Header `json:"headers"`
	Body    string      `json:"body"`
}

func podIP(ctx context.Context, c *cluster.Cluster, selector string) (string, error) {
	pods, err := c.Client.CoreV1().Pods("bakery-ia").List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			return p.Status.PodIP, nil
		}
	}
	return "", fmt.Errorf("no running pod %s in bakery-ia", selector)
}

func setFailing(ctx context.Context, hc *http.Client, admin string, on bool) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/fail?on="+map[bool]string{true: "1", false: "0"}[on], nil)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("nominatim /admin/fail: %s", resp.Status)
	}
	return nil
}

func getJSON(ctx context.Context, hc *http.Client, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

// sidecarMetrics are the tenant's sidecar's metrics lines for Nominatim,
// from its admin port on the pod's address.
func sidecarMetrics(ctx context.Context, hc *http.Client, ip, name string) ([]string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ip+":15020/metrics", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+"{") && strings.Contains(l, `destination="`+destination+`"`) {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

// breakerState is the state whose minimesh_circuit_breaker_state is 1.
func breakerState(ctx context.Context, hc *http.Client, ip string) (string, error) {
	lines, err := sidecarMetrics(ctx, hc, ip, "minimesh_circuit_breaker_state")
	if err != nil {
		return "?", err
	}
	for _, l := range lines {
		if strings.HasSuffix(l, " 1") {
			return label(l, "state"), nil
		}
	}
	return "closed", nil // no series yet: no call has been made
}

func transitions(ctx context.Context, hc *http.Client, ip string) (map[string]float64, error) {
	lines, err := sidecarMetrics(ctx, hc, ip, "minimesh_circuit_breaker_transitions_total")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, l := range lines {
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", l, err)
		}
		out[label(l, "from")+"->"+label(l, "to")] = v
	}
	return out, nil
}

func label(line, name string) string {
	_, rest, ok := strings.Cut(line, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}
