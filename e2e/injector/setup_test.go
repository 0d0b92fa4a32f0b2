// Package injector_test proves the injector against a real Kubernetes API
// server: the built `minimesh controller` serves the webhook over TLS, the
// API server calls it through clientConfig.url, and what the API server
// stores is then run as a local process. No kubelet runs, so pods stay
// Pending; admission, Pod Security and validation are the real thing.
package injector_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/internal/pki"
	"github.com/minimesh/minimesh/wellknown"
)

// Labels on test namespaces that route the API server's webhook calls: the
// real injector serves every namespace but those labelled "down", whose
// webhooks point at a port where nothing listens.
const (
	downLabel   = "e2e.minimesh.io/injector-down"
	skipLabel   = "e2e.minimesh.io/no-webhook"
	webhookName = "inject.minimesh.io"
	proxyImage  = "minimesh:e2e"
)

// env is one API server with the injector registered, shared by the tests
// of this package: starting it is most of their time.
type env struct {
	cluster   *kube.Cluster
	client    kubernetes.Interface
	warnings  *warningLog
	adminURL  string // the controller's admin listener
	ca        *pki.CA
	adminPort int // the injected sidecar's admin port (config)
	outPort   int // the injected sidecar's outbound port (config)
	ctrl      *proc.Proc
}

// warningLog collects the warnings the API server returns (the webhook's
// AdmissionResponse.Warnings arrive as Warning headers).
type warningLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningLog) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	w.msgs = append(w.msgs, text)
	w.mu.Unlock()
}

func (w *warningLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// setup starts the API server and the controller and registers the
// webhooks; everything is stopped and removed at the end of t.
func setup(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{cluster: kube.Start(t), warnings: &warningLog{}}
	cfg := rest.CopyConfig(e.cluster.Config)
	cfg.WarningHandler = e.warnings
	cfg.QPS, cfg.Burst = 500, 1000 // the figures create pods 50 at a time
	var err error
	if e.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}

	// The sidecar's ports come from the injection config, so that the
	// injected spec can run on this shared machine.
	ports := controller.FreePorts(t, 3)
	e.adminPort, e.outPort = ports[0], ports[1]
	c := controller.Start(t, e.cluster.Kubeconfig, controller.Options{
		Config: fmt.Sprintf("proxy:\n  image: %s\n  adminPort: %d\n  outboundPort: %d\n", proxyImage, e.adminPort, e.outPort),
	})
	e.ctrl, e.ca, e.adminURL = c.Proc, c.CA, c.AdminURL
	up := c.URL

	// Where nothing listens: the injector "down".
	deadURL := fmt.Sprintf("https://127.0.0.1:%d/inject", ports[2])
	e.register(t, ctx, "minimesh", up, admissionregistrationv1.Fail, &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: downLabel, Operator: metav1.LabelSelectorOpDoesNotExist},
			{Key: skipLabel, Operator: metav1.LabelSelectorOpDoesNotExist},
		},
	})
	e.register(t, ctx, "minimesh-down-ignore", deadURL, admissionregistrationv1.Ignore, &metav1.LabelSelector{
		MatchLabels: map[string]string{downLabel: "ignore"},
	})
	e.register(t, ctx, "minimesh-down-fail", deadURL, admissionregistrationv1.Fail, &metav1.LabelSelector{
		MatchLabels: map[string]string{downLabel: "fail"},
	})
	e.waitWebhookActive(t, ctx)
	return e
}

// register creates a MutatingWebhookConfiguration like the chart's, with
// the URL form that reaches an injector outside the cluster.
func (e *env) register(t testing.TB, ctx context.Context, name, url string, fp admissionregistrationv1.FailurePolicyType, nsSel *metav1.LabelSelector) {
	t.Helper()
	none := admissionregistrationv1.SideEffectClassNone
	ifNeeded := admissionregistrationv1.IfNeededReinvocationPolicy
	timeout := int32(5)
	scope := admissionregistrationv1.NamespacedScope
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    webhookName,
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: e.ca.PEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: &scope}}},
			FailurePolicy:           &fp,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
			ReinvocationPolicy:      &ifNeeded,
			NamespaceSelector:       nsSel,
		}},
	}
	if _, err := e.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, wh, metav1.CreateOptions{}); err != nil {
		t.Fatalf("register webhook %s: %v", name, err)
	}
}

// waitWebhookActive dry-runs an annotated pod until it comes back injected:
// the API server picks up webhook configurations asynchronously.
func (e *env) waitWebhookActive(t testing.TB, ctx context.Context) {
	t.Helper()
	ns := e.namespace(t, ctx, "probe", nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("probe", map[string]string{wellknown.AnnotationInject: "enabled"}),
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && injected(p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook was not called within 30 s (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var nsSeq struct {
	sync.Mutex
	n int
}

// namespace creates a namespace named after prefix with labels.
func (e *env) namespace(t testing.TB, ctx context.Context, prefix string, labels map[string]string) string {
	t.Helper()
	nsSeq.Lock()
	nsSeq.n++
	name := prefix + "-" + strconv.Itoa(nsSeq.n)
	nsSeq.Unlock()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := e.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// appPod is a pod that Pod Security "restricted" admits.
func appPod(name string, ann map[string]string) *corev1.Pod {
	p := kube.RestrictedPod(name, ann)
	p.Labels = map[string]string{"app": "shop"}
	p.Spec.Containers[0].Image = "example/shop:1"
	p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}}
	return p
}

func injected(p *corev1.Pod) bool {
	if p.Annotations[wellknown.AnnotationStatus] != wellknown.StatusInjected {
		return false
	}
	for _, c := range p.Spec.InitContainers {
		if c.Name == wellknown.ProxyContainerName {
			return true
		}
	}
	return false
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeDir(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}
