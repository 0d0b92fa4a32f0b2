package injector_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/prom"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/wellknown"
)

// runStoredSidecar runs the sidecar container that the API server stored
// as a local process, the way a kubelet would: its command (the image's
// /minimesh-proxy is the built binary), args, env with the downward API
// resolved, and its volume mounts mapped to local directories. Then its
// probes must answer and the app's HTTP_PROXY must lead through it: the
// injected spec works, not just parses.
func runStoredSidecar(t *testing.T, e *env, pod *corev1.Pod) {
	t.Helper()
	var c *corev1.Container
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == wellknown.ProxyContainerName {
			c = &pod.Spec.InitContainers[i]
		}
	}
	if c == nil {
		t.Fatal("no sidecar in the stored pod")
	}
	if len(c.Command) != 1 || c.Command[0] != "/minimesh-proxy" {
		t.Fatalf("sidecar command %q: the image holds /minimesh-proxy", c.Command)
	}
	bin, err := tools.Binary("minimesh-proxy")
	if err != nil {
		t.Fatal(err)
	}

	// Volume mounts become local directories; the policy ConfigMap's file
	// is written into the one the sidecar reads.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(t.TempDir(), m.Name)
		writeDir(t, dir)
		mounts[m.MountPath] = dir
	}
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		for from, to := range mounts {
			a = strings.ReplaceAll(a, "="+from, "="+to)
		}
		args[i] = a
	}
	if dir, ok := mounts["/etc/minimesh/policies"]; !ok {
		t.Fatalf("sidecar mounts %v: no policy volume", c.VolumeMounts)
	} else {
		writeFile(t, filepath.Join(dir, "upstream.yaml"), "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: upstream}\nspec:\n  service: \"*\"\n  timeout: 2s\n")
	}

	env := []string{"PATH=/usr/bin:/bin"}
	for _, v := range c.Env {
		val := v.Value
		if v.ValueFrom != nil {
			switch f := v.ValueFrom.FieldRef; {
			case f != nil && f.FieldPath == "metadata.name":
				val = pod.Name
			case f != nil && f.FieldPath == "metadata.namespace":
				val = pod.Namespace
			default:
				t.Fatalf("env %s: a source this test does not resolve: %+v", v.Name, v.ValueFrom)
			}
		}
		env = append(env, v.Name+"="+val)
	}
	p := proc.StartT(t, "sidecar", bin, args, proc.Options{Env: env})

	port := 0
	for _, cp := range c.Ports {
		if cp.Name == c.StartupProbe.HTTPGet.Port.StrVal {
			port = int(cp.ContainerPort)
		}
	}
	if port != e.adminPort {
		t.Fatalf("startup probe port %v resolves to %d, want the config's admin port %d", c.StartupProbe.HTTPGet.Port, port, e.adminPort)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := p.WaitReady(20*time.Second, func() error {
		return status(base+c.StartupProbe.HTTPGet.Path, http.StatusOK)
	}); err != nil {
		t.Fatal(err)
	}
	for _, probe := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if err := status(base+probe.HTTPGet.Path, http.StatusOK); err != nil {
			t.Fatal(err)
		}
	}
	// The Ps the sidecar runs are the ones its env asks for (the injector
	// leaves them to Go only above a limit of one core: Go follows the
	// limit then).
	if want := envMap(*c)["GOMAXPROCS"]; want == "" {
		if l := c.Resources.Limits.Cpu(); l.IsZero() || l.MilliValue() <= 1000 {
			t.Errorf("sidecar env has no GOMAXPROCS under a CPU limit of %v: %v", l, c.Env)
		}
	} else if got, ok := prom.TextValue(get(t, base+"/metrics"), "go_sched_gomaxprocs_threads"); !ok || strconv.FormatFloat(got, 'f', -1, 64) != want {
		t.Errorf("the sidecar runs %v Ps (go_sched_gomaxprocs_threads, found %v), its env says GOMAXPROCS=%s", got, ok, want)
	}

	// The app's side: its HTTP_PROXY leads through this sidecar.
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Header.Get(wellknown.HeaderRequestID))
	}))
	defer upstream.Close()
	proxyURL, err := url.Parse(envMap(pod.Spec.Containers[0])["HTTP_PROXY"])
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 10 * time.Second}
	resp, err := client.Get(upstream.URL + "/orders")
	if err != nil {
		t.Fatalf("through the app's HTTP_PROXY %s: %v", proxyURL, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(body) == 0 || resp.Header.Get(wellknown.HeaderRequestID) != string(body) {
		t.Fatalf("through the sidecar: %d, upstream saw request ID %q, response carries %q", resp.StatusCode, body, resp.Header.Get(wellknown.HeaderRequestID))
	}
}

func status(url string, want int) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: %d, want %d", url, resp.StatusCode, want)
	}
	return nil
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
