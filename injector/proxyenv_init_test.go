package injector

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/wellknown"
)

// podWithInits is appPod with the user's init containers: a migration
// that runs to completion, then a native sidecar of the app's own.
func podWithInits(ann map[string]string, own ...corev1.EnvVar) *corev1.Pod {
	p := appPod(ann)
	p.Spec.InitContainers = []corev1.Container{
		{Name: "pre", Image: "example/migrate:1", Env: own},
		{Name: "log", Image: "example/shipper:1", RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)},
	}
	return p
}

// envNames is each init container's env names, by container name.
func envNames(pod *corev1.Pod) map[string][]string {
	m := map[string][]string{}
	for _, c := range pod.Spec.InitContainers {
		var names []string
		for _, e := range c.Env {
			names = append(names, e.Name)
		}
		m[c.Name] = names
	}
	return m
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

var (
	fullProxyEnv = []string{"HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", javaToolOptions}
	sidecarEnv   = []string{"POD_NAME", "POD_NAMESPACE", "GOMAXPROCS", "GOGC"}
)

// TestInitContainersGetProxyEnv: the user's init containers start after
// the sidecar is ready (it is the first init container, and its startup
// probe holds the next back), so under proxy-env they get the proxy
// environment by the rules of the app's containers: the one-shot init
// container and the app's own native sidecar alike. Before, only
// spec.containers got it, and their HTTP bypassed the sidecar unseen.
func TestInitContainersGetProxyEnv(t *testing.T) {
	const ours = "http://127.0.0.1:15001"
	tests := []struct {
		name string
		pod  *corev1.Pod
		want map[string][]string // env names per init container
		// warning: a substring of the one warning expected, "" for none.
		warning string
	}{
		{"proxy-env", podWithInits(enabled()), map[string][]string{
			wellknown.ProxyContainerName: sidecarEnv, "pre": fullProxyEnv, "log": fullProxyEnv,
		}, ""},
		{"proxy-https", podWithInits(map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled, "minimesh.io/proxy-https": "enabled"}),
			map[string][]string{
				wellknown.ProxyContainerName: sidecarEnv,
				"pre":                        {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", javaToolOptions},
				"log":                        {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", javaToolOptions},
			}, ""},
		// As for an app container: its own value wins, in either spelling,
		// with a warning naming the container.
		{"init container's own http_proxy", podWithInits(enabled(), corev1.EnvVar{Name: "http_proxy", Value: "http://corp:3128"}),
			map[string][]string{
				wellknown.ProxyContainerName: sidecarEnv,
				"pre":                        {"http_proxy", "NO_PROXY", "no_proxy", javaToolOptions},
				"log":                        fullProxyEnv,
			}, `container "pre" sets http_proxy=http://corp:3128 itself`},
		// Redirected by the rules that minimesh-init writes first: no
		// variables, as for the app.
		{"iptables", podWithInits(iptables()), map[string][]string{
			initContainerName: nil, wellknown.ProxyContainerName: sidecarEnv, "pre": nil, "log": nil,
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Inject(Input{Pod: tt.pod, Namespace: "shop",
				NamespaceLabels: map[string]string{PodSecurityEnforceLabel: "privileged"}}, testConfig())
			if err != nil || !res.Injected {
				t.Fatalf("not injected: %v %+v", err, res)
			}
			got := envNames(res.Pod)
			for name, want := range tt.want {
				if !slices.Equal(got[name], want) {
					t.Errorf("init container %s: env %q, want %q", name, got[name], want)
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("init containers %v, want %d", got, len(tt.want))
			}
			for i := range res.Pod.Spec.InitContainers {
				c := &res.Pod.Spec.InitContainers[i]
				if v := envValue(c, "HTTP_PROXY"); v != "" && v != ours {
					t.Errorf("init container %s: HTTP_PROXY=%s, want %s", c.Name, v, ours)
				}
			}
			var warned []string
			for _, w := range res.Warnings {
				if strings.Contains(w, "itself") {
					warned = append(warned, w)
				}
			}
			switch {
			case tt.warning == "" && len(warned) > 0:
				t.Errorf("warnings %q, want none", warned)
			case tt.warning != "" && (len(warned) != 1 || !strings.Contains(warned[0], tt.warning)):
				t.Errorf("warnings %q, want one with %q", warned, tt.warning)
			}
			// The webhook's patch writes the init containers' env too.
			if _, err := Patch(tt.pod, res.Pod); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReinvocationInitContainers: an init container that a later webhook
// adds after the sidecar gets the proxy environment like a container
// added since (the port the pod's sidecar listens on); one it puts before
// the sidecar runs before the proxy exists and gets nothing. A pod
// injected before init containers got it (its migration without the
// variables) gets them too. The patch applies to the pod as sent, and a
// third call changes nothing.
func TestReinvocationInitContainers(t *testing.T) {
	added := corev1.Container{Name: "added", Image: "x"}
	tests := []struct {
		name   string
		edit   func(p *corev1.Pod)
		reason string
		want   map[string][]string // env names of the init containers named
		paths  []string            // the patch's distinct paths
	}{
		{"appended after the sidecar", func(p *corev1.Pod) {
			p.Spec.InitContainers = append(p.Spec.InitContainers, added)
		}, ReasonReinvoked, map[string][]string{"added": fullProxyEnv, "pre": fullProxyEnv}, []string{"/spec/initContainers/3/env"}},
		{"a native sidecar appended", func(p *corev1.Pod) {
			c := added
			c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
			p.Spec.InitContainers = append(p.Spec.InitContainers, c)
		}, ReasonReinvoked, map[string][]string{"added": fullProxyEnv}, []string{"/spec/initContainers/3/env"}},
		{"put before the sidecar", func(p *corev1.Pod) {
			p.Spec.InitContainers = append([]corev1.Container{added}, p.Spec.InitContainers...)
		}, ReasonAlreadyInjected, map[string][]string{"added": nil, wellknown.ProxyContainerName: sidecarEnv}, nil},
		{"appended with its own HTTP_PROXY", func(p *corev1.Pod) {
			c := added
			c.Env = []corev1.EnvVar{{Name: "HTTP_PROXY", Value: "http://corp:3128"}}
			p.Spec.InitContainers = append(p.Spec.InitContainers, c)
		}, ReasonAlreadyInjected, map[string][]string{"added": {"HTTP_PROXY"}}, nil},
		{"injected before init containers got the variables", func(p *corev1.Pod) {
			p.Spec.InitContainers[1].Env = nil
			p.Spec.InitContainers[2].Env = nil
		}, ReasonReinvoked, map[string][]string{"pre": fullProxyEnv, "log": fullProxyEnv},
			[]string{"/spec/initContainers/1/env", "/spec/initContainers/2/env"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			first, err := Inject(Input{Pod: podWithInits(enabled()), Namespace: "shop"}, cfg)
			if err != nil || !first.Injected {
				t.Fatalf("first: %v %+v", err, first)
			}
			later := first.Pod.DeepCopy()
			tt.edit(later)
			raw, err := json.Marshal(later)
			if err != nil {
				t.Fatal(err)
			}
			// The API server's pod, decoded as the webhook does.
			before, err := decodeRaw(raw)
			if err != nil {
				t.Fatal(err)
			}
			// Another injector's config: the variables name the port of
			// the pod's sidecar, not the config's.
			cfg2 := testConfig()
			cfg2.Proxy.OutboundPort = 16001
			second, err := Inject(Input{Pod: before, Namespace: "shop"}, cfg2)
			if err != nil || second.Reason != tt.reason || second.Injected != (tt.reason == ReasonReinvoked) {
				t.Fatalf("second: %v %+v, want %q", err, second, tt.reason)
			}
			got := envNames(second.Pod)
			for name, want := range tt.want {
				if !slices.Equal(got[name], want) {
					t.Errorf("init container %s: env %q, want %q", name, got[name], want)
				}
			}
			for i := range second.Pod.Spec.InitContainers {
				c := &second.Pod.Spec.InitContainers[i]
				if v := envValue(c, "HTTP_PROXY"); v != "" && v != "http://127.0.0.1:15001" && v != "http://corp:3128" {
					t.Errorf("init container %s: HTTP_PROXY=%s, want the pod's sidecar's port 15001", c.Name, v)
				}
			}
			if !second.Injected {
				return
			}
			patch, _ := applyPatch(t, raw, before, second.Pod)
			var ops []struct{ Path string }
			if err := json.Unmarshal(patch, &ops); err != nil {
				t.Fatal(err)
			}
			var paths []string
			for _, op := range ops {
				if !slices.Contains(paths, op.Path) {
					paths = append(paths, op.Path)
				}
			}
			if !slices.Equal(paths, tt.paths) {
				t.Errorf("patch paths %q, want %q\npatch: %s", paths, tt.paths, patch)
			}
			third, err := Inject(Input{Pod: second.Pod, Namespace: "shop"}, cfg2)
			if err != nil || third.Injected || third.Reason != ReasonAlreadyInjected {
				t.Fatalf("third: %v %+v", err, third)
			}
		})
	}
}

// TestGoldenInitContainers pins the injected pod with init containers of
// the user's, as `kubectl get pod -o yaml` shows it.
func TestGoldenInitContainers(t *testing.T) {
	res, err := Inject(Input{Pod: podWithInits(enabled()), Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	got, err := yaml.Marshal(res.Pod)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "init-containers.golden.yaml")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./injector -run TestGoldenInitContainers -update)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s differs (go test ./injector -run TestGoldenInitContainers -update rewrites it):\n%s", path, got)
	}
}
