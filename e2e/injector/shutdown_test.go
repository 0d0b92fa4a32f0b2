package injector_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/injector/webhook"
	"github.com/minimesh/minimesh/internal/pki"
	"github.com/minimesh/minimesh/wellknown"
)

// brokenNamespaces is an injector that cannot read namespaces: not in the
// informer's cache, and the API server's GET failing.
type brokenNamespaces struct{}

func (brokenNamespaces) Labels(context.Context, string) (map[string]string, error) {
	return nil, errors.New("get namespace: the server is currently unable to handle the request")
}

// TestInjectorFailures runs, against the real API server, what the
// injector does when it cannot do its job.
func TestInjectorFailures(t *testing.T) {
	ctx := context.Background()
	e := &env{cluster: kube.Start(t), warnings: &warningLog{}}
	var err error
	if e.client, err = kubernetes.NewForConfig(e.cluster.Config); err != nil {
		t.Fatal(err)
	}
	enabled := map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}

	// An injector that cannot read the namespace answers 500, so the
	// webhook's failurePolicy decides: Ignore creates the pod without a
	// sidecar, Fail refuses it with the injector's reason. Before, the
	// injector denied the pod (allowed: false), which the API server
	// applies whatever the failurePolicy: refused under Ignore too.
	t.Run("a failure of the injector is left to failurePolicy", func(t *testing.T) {
		const label = "e2e.minimesh.io/broken"
		cfg := injector.DefaultConfig()
		h := &webhook.Handler{Config: &cfg, Namespaces: brokenNamespaces{}, Metrics: webhook.NewMetrics(),
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		ca, err := pki.NewCA("broken-injector-ca")
		if err != nil {
			t.Fatal(err)
		}
		pair, err := ca.IssueValid("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(h)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		e.ca = ca
		url := srv.URL + "/inject"
		e.register(t, ctx, "broken-ignore", url, admissionregistrationv1.Ignore, &metav1.LabelSelector{MatchLabels: map[string]string{label: "ignore"}})
		e.register(t, ctx, "broken-fail", url, admissionregistrationv1.Fail, &metav1.LabelSelector{MatchLabels: map[string]string{label: "fail"}})
		nsFail := e.namespace(t, ctx, "broken-fail", map[string]string{label: "fail"})
		// The API server picks up webhook configurations asynchronously:
		// once Fail refuses with the injector's reason, both are active.
		var failErr error
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			_, failErr = e.client.CoreV1().Pods(nsFail).Create(ctx, appPod("web", enabled), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if failErr != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the webhook of the Fail namespace was not called within 30 s")
			}
		}
		for _, want := range []string{"failed calling webhook", "minimesh: namespace " + nsFail, "unable to handle the request"} {
			if !strings.Contains(failErr.Error(), want) {
				t.Errorf("failurePolicy Fail: %v; want it to hold %q", failErr, want)
			}
		}
		nsIgnore := e.namespace(t, ctx, "broken-ignore", map[string]string{label: "ignore"})
		p, err := e.client.CoreV1().Pods(nsIgnore).Create(ctx, appPod("web", enabled), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("failurePolicy Ignore: the pod was refused: %v", err)
		}
		if injected(p) {
			t.Fatal("failurePolicy Ignore: injected by an injector that failed?")
		}
	})

	// On SIGTERM the controller turns unready and serves on for
	// --shutdown-delay (5 s, the default) while its endpoint is dropped:
	// a pod created then is still injected, under failurePolicy Fail.
	// Before, its ports refused within a millisecond of SIGTERM, and the
	// API server, which does not retry, refused the pod (Ignore: created
	// without a sidecar).
	t.Run("the controller serves through its shutdown delay", func(t *testing.T) {
		const label = "e2e.minimesh.io/draining"
		c := controller.Start(t, e.cluster.Kubeconfig, controller.Options{ShutdownDelay: 5 * time.Second})
		e.ca = c.CA
		e.register(t, ctx, "draining", c.URL, admissionregistrationv1.Fail, &metav1.LabelSelector{MatchLabels: map[string]string{label: "yes"}})
		ns := e.namespace(t, ctx, "draining", map[string]string{label: "yes"})
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			p, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("probe", enabled), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err == nil && injected(p) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the webhook was not called within 30 s (last: %v)", err)
			}
		}

		signalled := time.Now()
		if err := syscall.Kill(c.Proc.Pid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.Proc.WaitReady(10*time.Second, func() error {
			resp, err := http.Get(c.AdminURL + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				return errors.New("/readyz " + resp.Status + " after SIGTERM, want 503")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		p, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("web", enabled), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("a pod created while the controller shuts down: %v", err)
		}
		if !injected(p) {
			t.Fatal("a pod created while the controller shuts down was not injected")
		}
		select {
		case <-c.Proc.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("the controller did not exit within 30 s of SIGTERM")
		}
		if d := time.Since(signalled); d < 5*time.Second {
			t.Errorf("the controller exited %v after SIGTERM, before its 5 s shutdown delay", d)
		}
		if _, err := c.Proc.Exited(); err != nil {
			t.Errorf("the controller after SIGTERM: %v; want exit status 0\n%s", err, c.Proc.Output())
		}
	})
}
