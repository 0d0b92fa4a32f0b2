package injector

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/minimesh/minimesh/wellknown"
)

// injectedPod is appPod(ann) injected with cfg, as the webhook or
// `minimesh inject` leaves it.
func injectedPod(t *testing.T, ann map[string]string, cfg *Config) *corev1.Pod {
	t.Helper()
	res, err := Inject(Input{Pod: appPod(ann), Namespace: "shop", NamespaceLabels: map[string]string{PodSecurityEnforceLabel: "privileged"}}, cfg)
	if err != nil || !res.Injected {
		t.Fatalf("injecting %v: %v %+v", ann, err, res)
	}
	return res.Pod
}

// hasProxyEnv says whether any app container got minimesh's HTTP_PROXY.
func hasProxyEnv(pod *corev1.Pod) bool {
	return slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool {
		return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "HTTP_PROXY" && strings.HasPrefix(e.Value, "http://127.0.0.1:")
		})
	})
}

// TestIsInjected: "injected" means the sidecar is in the pod, recognised
// by what only the injector writes (an init container named
// minimesh-proxy, restartPolicy Always, `/minimesh-proxy run`), whatever
// the config that injected it; neither the status annotation nor the name
// alone.
func TestIsInjected(t *testing.T) {
	other := testConfig()
	other.Proxy.Image, other.Proxy.OutboundPort = "mirror.example/minimesh:v0.1.0", 16001
	tests := []struct {
		name string
		pod  func() *corev1.Pod
		want bool
	}{
		{"injected", func() *corev1.Pod { return injectedPod(t, enabled(), testConfig()) }, true},
		{"injected by another config", func() *corev1.Pod { return injectedPod(t, enabled(), other) }, true},
		{"injected with iptables", func() *corev1.Pod { return injectedPod(t, iptables(), testConfig()) }, true},
		{"injected, status annotation removed", func() *corev1.Pod {
			p := injectedPod(t, enabled(), testConfig())
			delete(p.Annotations, wellknown.AnnotationStatus)
			return p
		}, true},
		{"status annotation without the sidecar", func() *corev1.Pod {
			return appPod(map[string]string{wellknown.AnnotationStatus: wellknown.StatusInjected})
		}, false},
		{"app container named minimesh-proxy", func() *corev1.Pod {
			p := appPod(enabled())
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: wellknown.ProxyContainerName, Image: "my/own-proxy"})
			return p
		}, false},
		{"init container named minimesh-proxy that is not a native sidecar", func() *corev1.Pod {
			p := injectedPod(t, enabled(), testConfig())
			p.Spec.InitContainers[0].RestartPolicy = nil
			return p
		}, false},
		{"native sidecar named minimesh-proxy running something else", func() *corev1.Pod {
			p := appPod(enabled())
			p.Spec.InitContainers = []corev1.Container{{Name: wellknown.ProxyContainerName, Image: "my/own-proxy",
				RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways), Args: []string{"run"}}}
			return p
		}, false},
		{"minimesh-proxy init in the sidecar's name", func() *corev1.Pod {
			p := appPod(enabled())
			p.Spec.InitContainers = []corev1.Container{{Name: wellknown.ProxyContainerName,
				RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways), Command: []string{"/minimesh-proxy"}, Args: []string{"init"}}}
			return p
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsInjected(tt.pod()); got != tt.want {
				t.Fatalf("IsInjected = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestNotReallyInjected: a pod that only looks injected (the probe's
// inputs: its own container named minimesh-proxy, a hand-copied status
// annotation) never gets the proxy environment without the sidecar. The
// first is refused, naming the container (injecting would give the pod two
// containers of one name); the second is injected as if the annotation
// were not there, as Linkerd's injector, which keys on its proxy
// container, would do. Whatever was injected, injecting it again changes
// nothing.
func TestNotReallyInjected(t *testing.T) {
	namedPod := func(ann map[string]string) *corev1.Pod {
		p := appPod(ann)
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: wellknown.ProxyContainerName, Image: "my/own-proxy"})
		return p
	}
	namedInit := func(ann map[string]string) *corev1.Pod {
		p := appPod(ann)
		p.Spec.InitContainers = []corev1.Container{{Name: wellknown.ProxyContainerName, Image: "my/own-proxy"}}
		return p
	}
	stale := func(ann map[string]string) map[string]string {
		ann[wellknown.AnnotationStatus] = wellknown.StatusInjected
		return ann
	}
	const denied = "the name of the minimesh sidecar, which this container (image \"my/own-proxy\") is not"
	tests := []struct {
		name     string
		in       Input
		field    string // a denial of this field, value minimesh-proxy
		injected bool
		reason   string
		warning  string
	}{
		{"own container named minimesh-proxy", Input{Pod: namedPod(enabled()), Namespace: "shop"}, "spec.containers[1].name", false, "", ""},
		{"own container named minimesh-proxy, minimesh inject", Input{Pod: namedPod(nil), Manual: true, WorkloadName: "web"}, "spec.containers[1].name", false, "", ""},
		{"own container named minimesh-proxy, namespace label", Input{Pod: namedPod(nil), Namespace: "shop", NamespaceLabels: enabled()}, "spec.containers[1].name", false, "", ""},
		{"own init container named minimesh-proxy", Input{Pod: namedInit(enabled()), Namespace: "shop"}, "spec.initContainers[0].name", false, "", ""},
		{"own container named minimesh-proxy, not asked", Input{Pod: namedPod(nil), Namespace: "shop"}, "", false, ReasonNotOptedIn, ""},
		{"own container named minimesh-proxy, opted out", Input{Pod: namedPod(map[string]string{wellknown.AnnotationInject: wellknown.InjectDisabled}), Namespace: "shop"}, "", false, ReasonDisabled, ""},
		{"stale status annotation", Input{Pod: appPod(stale(enabled())), Namespace: "shop"}, "", true, ReasonInjected, "minimesh.io/status]: \"injected\" without minimesh's sidecar"},
		{"stale status annotation, minimesh inject", Input{Pod: appPod(stale(map[string]string{})), Manual: true, WorkloadName: "web"}, "", true, ReasonInjected, "without minimesh's sidecar"},
		{"stale status annotation, iptables", Input{Pod: appPod(stale(iptables())), Namespace: "shop"}, "", true, ReasonInjected, "without minimesh's sidecar"},
		{"stale status annotation, not asked", Input{Pod: appPod(stale(map[string]string{})), Namespace: "shop"}, "", false, ReasonNotOptedIn, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			before := tt.in.Pod.DeepCopy()
			res, err := Inject(tt.in, cfg)
			if tt.field != "" {
				var d *DenyError
				if !errors.As(err, &d) || d.Field != tt.field || d.Value != wellknown.ProxyContainerName {
					t.Fatalf("err = %v, want a denial of %s=%q", err, tt.field, wellknown.ProxyContainerName)
				}
				if !strings.Contains(err.Error(), denied) || !strings.Contains(err.Error(), "rename the container") {
					t.Fatalf("message %q lacks %q and what to do", err, denied)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Injected != tt.injected || res.Reason != tt.reason {
				t.Fatalf("Injected=%v Reason=%q, want %v %q", res.Injected, res.Reason, tt.injected, tt.reason)
			}
			if !equality.Semantic.DeepEqual(before, tt.in.Pod) {
				t.Fatal("Inject changed its input pod")
			}
			if tt.warning != "" && !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, tt.warning) }) {
				t.Fatalf("warnings %q lack %q", res.Warnings, tt.warning)
			}
			if !tt.injected {
				if hasProxyEnv(res.Pod) {
					t.Fatal("proxy environment in a pod without the sidecar")
				}
				return
			}
			if !IsInjected(res.Pod) {
				t.Fatalf("injected pod without the sidecar: %+v", res.Pod.Spec.InitContainers)
			}
			// The annotation changed nothing: the same pod as injecting
			// without it.
			clean := tt.in.Pod.DeepCopy()
			delete(clean.Annotations, wellknown.AnnotationStatus)
			in := tt.in
			in.Pod = clean
			want, err := Inject(in, cfg)
			if err != nil || !equality.Semantic.DeepEqual(want.Pod, res.Pod) {
				t.Fatalf("differs from injecting without the stale annotation (%v)", err)
			}
			// Idempotent.
			in.Pod = res.Pod
			again, err := Inject(in, cfg)
			if err != nil || again.Injected || again.Reason != ReasonAlreadyInjected || !equality.Semantic.DeepEqual(again.Pod, res.Pod) {
				t.Fatalf("injecting twice: %v %+v", err, again)
			}
		})
	}
}

// TestReinvocationOfInjected: the "containers added since" path keeps
// working for pods that really are injected, and gives a container added
// since the port the pod's own sidecar listens on.
func TestReinvocationOfInjected(t *testing.T) {
	added := corev1.Container{Name: "added", Image: "x"}
	tests := []struct {
		name  string
		pod   func() *corev1.Pod
		cfg   func(*Config) // the injector's config at the reinvocation
		proxy string        // the added container's HTTP_PROXY; "" none
	}{
		{"proxy-env", func() *corev1.Pod { return injectedPod(t, enabled(), testConfig()) }, nil, "http://127.0.0.1:15001"},
		{"injected by another release", func() *corev1.Pod {
			cfg := testConfig()
			cfg.Proxy.Image = "mirror.example/minimesh:v0.1.0"
			return injectedPod(t, enabled(), cfg)
		}, nil, "http://127.0.0.1:15001"},
		{"outbound port changed since", func() *corev1.Pod { return injectedPod(t, enabled(), testConfig()) },
			func(c *Config) { c.Proxy.OutboundPort = 16001 }, "http://127.0.0.1:15001"},
		{"iptables", func() *corev1.Pod { return injectedPod(t, iptables(), testConfig()) }, nil, ""},
		// Injected with proxy-env, the annotation edited since: no
		// minimesh-init redirects the added container's connections.
		{"iptables annotation without minimesh-init", func() *corev1.Pod {
			p := injectedPod(t, enabled(), testConfig())
			p.Annotations[AnnotationInterception] = InterceptionIPTables
			return p
		}, nil, "http://127.0.0.1:15001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			if tt.cfg != nil {
				tt.cfg(cfg)
			}
			later := tt.pod()
			later.Spec.Containers = append(later.Spec.Containers, added)
			res, err := Inject(Input{Pod: later, Namespace: "shop"}, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Pod.Spec.InitContainers) != len(later.Spec.InitContainers) {
				t.Fatalf("%d init containers after reinvocation, want %d", len(res.Pod.Spec.InitContainers), len(later.Spec.InitContainers))
			}
			got := res.Pod.Spec.Containers[len(res.Pod.Spec.Containers)-1].Env
			i := slices.IndexFunc(got, func(e corev1.EnvVar) bool { return e.Name == "HTTP_PROXY" })
			switch {
			case tt.proxy == "" && (i >= 0 || res.Injected || res.Reason != ReasonAlreadyInjected):
				t.Fatalf("Injected=%v %q, env %v: want the pod left alone", res.Injected, res.Reason, got)
			case tt.proxy != "" && (i < 0 || got[i].Value != tt.proxy || !res.Injected || res.Reason != ReasonReinvoked):
				t.Fatalf("Injected=%v %q, env %v: want HTTP_PROXY=%s", res.Injected, res.Reason, got, tt.proxy)
			}
			if tt.proxy != "" {
				java := got[slices.IndexFunc(got, func(e corev1.EnvVar) bool { return e.Name == "JAVA_TOOL_OPTIONS" })].Value
				if port := tt.proxy[strings.LastIndex(tt.proxy, ":")+1:]; !strings.Contains(java, "-Dhttp.proxyPort="+port+" ") {
					t.Fatalf("JAVA_TOOL_OPTIONS %q: want the sidecar's port %s", java, port)
				}
			}
			again, err := Inject(Input{Pod: res.Pod, Namespace: "shop"}, cfg)
			if err != nil || again.Injected || again.Reason != ReasonAlreadyInjected {
				t.Fatalf("third call: %v %+v", err, again)
			}
		})
	}
}
