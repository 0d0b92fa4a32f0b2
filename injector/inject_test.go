package injector

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/wellknown"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testConfig pins the image so that golden files do not depend on the build.
func testConfig() *Config {
	cfg := DefaultConfig()
	cfg.Proxy.Image = "ghcr.io/minimesh/minimesh:v0.0.0-test"
	return &cfg
}

func appPod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-7d9f8-abcde", GenerateName: "web-7d9f8-", Namespace: "shop",
			Labels:      map[string]string{"pod-template-hash": "7d9f8"},
			Annotations: ann,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f8", UID: "u1", Controller: ptr(true),
			}},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example/web:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}},
			Env:   []corev1.EnvVar{{Name: "LOG", Value: "1"}},
		}}},
	}
}

func enabled() map[string]string {
	return map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}
}

// iptables is enabled() with iptables interception and the key-value
// pairs kv.
func iptables(kv ...string) map[string]string {
	ann := enabled()
	ann["minimesh.io/interception"] = "iptables"
	for i := 0; i+1 < len(kv); i += 2 {
		ann[kv[i]] = kv[i+1]
	}
	return ann
}

func TestInjectDecides(t *testing.T) {
	nsOn := map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}
	hostNet := appPod(enabled())
	hostNet.Spec.HostNetwork = true
	tests := []struct {
		name     string
		in       Input
		injected bool
		reason   string
		warning  string
	}{
		{"pod annotation", Input{Pod: appPod(enabled()), Namespace: "shop"}, true, ReasonInjected, ""},
		{"namespace label", Input{Pod: appPod(nil), Namespace: "shop", NamespaceLabels: nsOn}, true, ReasonInjected, ""},
		{"neither", Input{Pod: appPod(nil), Namespace: "shop"}, false, ReasonNotOptedIn, ""},
		{"pod opts out of its namespace", Input{Pod: appPod(map[string]string{wellknown.AnnotationInject: "disabled"}), Namespace: "shop", NamespaceLabels: nsOn}, false, ReasonDisabled, ""},
		{"kube-system", Input{Pod: appPod(enabled()), Namespace: "kube-system"}, false, ReasonIgnoredNS, ""},
		{"namespace from the pod", Input{Pod: func() *corev1.Pod { p := appPod(enabled()); p.Namespace = "kube-node-lease"; return p }()}, false, ReasonIgnoredNS, ""},
		{"hostNetwork", Input{Pod: hostNet, Namespace: "shop"}, false, ReasonHostNetwork, "hostNetwork"},
		{"manual", Input{Pod: appPod(nil), Manual: true}, true, ReasonInjected, ""},
		{"manual respects disabled", Input{Pod: appPod(map[string]string{wellknown.AnnotationInject: "disabled"}), Manual: true}, false, ReasonDisabled, ""},
	}
	tests = append(tests, osTests(nsOn)...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.in.Pod.DeepCopy()
			res, err := Inject(tt.in, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			if res.Injected != tt.injected || res.Reason != tt.reason {
				t.Fatalf("Injected=%v Reason=%q, want %v %q", res.Injected, res.Reason, tt.injected, tt.reason)
			}
			if !equality.Semantic.DeepEqual(before, tt.in.Pod) {
				t.Fatal("Inject changed its input pod")
			}
			if tt.injected != (res.Pod.Annotations[wellknown.AnnotationStatus] == wellknown.StatusInjected) {
				t.Fatalf("status annotation = %q", res.Pod.Annotations[wellknown.AnnotationStatus])
			}
			if tt.injected != slices.ContainsFunc(res.Pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == wellknown.ProxyContainerName }) {
				t.Fatalf("init containers %v", res.Pod.Spec.InitContainers)
			}
			if tt.warning != "" && !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, tt.warning) }) {
				t.Fatalf("warnings %q lack %q", res.Warnings, tt.warning)
			}
			if tt.warning == "" && len(res.Warnings) > 0 {
				t.Fatalf("warnings %q, want none", res.Warnings)
			}
			if tt.in.Manual && tt.injected && res.Pod.Annotations[wellknown.AnnotationInject] != wellknown.InjectEnabled {
				t.Fatal("manual injection did not mark the workload enabled")
			}
		})
	}
}

// osTests are TestInjectDecides's cases of pods for nodes other than
// Linux, where the sidecar, a Linux container, cannot run: the API server
// refused such a pod with spec.os.name windows for the sidecar's
// securityContext, and one sent to Windows nodes by its nodeSelector or
// node affinity got the sidecar and never started. Skipped with a warning
// that names the field, as hostNetwork pods are; a pod that may still
// land on Linux is injected.
func osTests(nsOn map[string]string) []struct {
	name     string
	in       Input
	injected bool
	reason   string
	warning  string
} {
	pod := func(ann map[string]string, mod func(*corev1.PodSpec)) *corev1.Pod {
		p := appPod(ann)
		mod(&p.Spec)
		return p
	}
	term := func(es ...corev1.NodeSelectorRequirement) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: es}
	}
	os := func(op corev1.NodeSelectorOperator, vs ...string) corev1.NodeSelectorRequirement {
		return corev1.NodeSelectorRequirement{Key: "kubernetes.io/os", Operator: op, Values: vs}
	}
	zone := corev1.NodeSelectorRequirement{Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}
	affinity := func(terms ...corev1.NodeSelectorTerm) func(*corev1.PodSpec) {
		return func(s *corev1.PodSpec) {
			s.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
		}
	}
	windowsOS := func(s *corev1.PodSpec) { s.OS = &corev1.PodOS{Name: corev1.Windows} }
	sel := func(k, v string) func(*corev1.PodSpec) {
		return func(s *corev1.PodSpec) { s.NodeSelector = map[string]string{k: v} }
	}
	return []struct {
		name     string
		in       Input
		injected bool
		reason   string
		warning  string
	}{
		{"spec.os windows", Input{Pod: pod(enabled(), windowsOS), Namespace: "shop"}, false, ReasonNotLinux, `(spec.os.name: "windows")`},
		{"spec.os windows in an opted-in namespace", Input{Pod: pod(nil, windowsOS), Namespace: "shop", NamespaceLabels: nsOn}, false, ReasonNotLinux, "the sidecar is a Linux container"},
		{"spec.os windows, iptables where Pod Security forbids it", Input{Pod: pod(iptables(), windowsOS), Namespace: "shop",
			NamespaceLabels: map[string]string{PodSecurityEnforceLabel: "restricted"}}, false, ReasonNotLinux, "spec.os.name"},
		{"spec.os windows, manual", Input{Pod: pod(nil, windowsOS), Manual: true}, false, ReasonNotLinux, "spec.os.name"},
		{"spec.os linux", Input{Pod: pod(enabled(), func(s *corev1.PodSpec) { s.OS = &corev1.PodOS{Name: corev1.Linux} }), Namespace: "shop"}, true, ReasonInjected, ""},
		{"nodeSelector windows", Input{Pod: pod(enabled(), sel("kubernetes.io/os", "windows")), Namespace: "shop"}, false, ReasonNotLinux,
			`(spec.nodeSelector[kubernetes.io/os]: "windows")`},
		{"nodeSelector on the beta label", Input{Pod: pod(nil, sel("beta.kubernetes.io/os", "windows")), Namespace: "shop", NamespaceLabels: nsOn}, false, ReasonNotLinux,
			`spec.nodeSelector[beta.kubernetes.io/os]`},
		{"nodeSelector linux", Input{Pod: pod(enabled(), sel("kubernetes.io/os", "linux")), Namespace: "shop"}, true, ReasonInjected, ""},
		{"affinity In windows", Input{Pod: pod(enabled(), affinity(term(zone, os(corev1.NodeSelectorOpIn, "windows")))), Namespace: "shop"}, false, ReasonNotLinux,
			`nodeSelectorTerms[0].matchExpressions[1]: "kubernetes.io/os In [windows]"`},
		{"affinity NotIn linux in every term", Input{Pod: pod(enabled(), affinity(term(os(corev1.NodeSelectorOpNotIn, "linux")), term(zone, os(corev1.NodeSelectorOpDoesNotExist)))), Namespace: "shop"},
			false, ReasonNotLinux, `"kubernetes.io/os NotIn [linux]"`},
		{"affinity In windows or linux", Input{Pod: pod(enabled(), affinity(term(os(corev1.NodeSelectorOpIn, "windows", "linux")))), Namespace: "shop"}, true, ReasonInjected, ""},
		{"affinity with a term for any node", Input{Pod: pod(enabled(), affinity(term(os(corev1.NodeSelectorOpIn, "windows")), term(zone))), Namespace: "shop"}, true, ReasonInjected, ""},
		{"affinity Exists", Input{Pod: pod(enabled(), affinity(term(os(corev1.NodeSelectorOpExists)))), Namespace: "shop"}, true, ReasonInjected, ""},
		{"preferred affinity only", Input{Pod: pod(enabled(), func(s *corev1.PodSpec) {
			s.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{
				{Weight: 1, Preference: term(os(corev1.NodeSelectorOpIn, "windows"))}}}}
		}), Namespace: "shop"}, true, ReasonInjected, ""},
		{"spec.os windows, not asked", Input{Pod: pod(nil, windowsOS), Namespace: "shop"}, false, ReasonNotOptedIn, ""},
	}
}

func TestInjectDenies(t *testing.T) {
	tests := []struct {
		name  string
		ann   map[string]string
		mod   func(*corev1.Pod)
		field string
		value string
	}{
		{"inject value", map[string]string{"minimesh.io/inject": "true"}, nil, "metadata.annotations[minimesh.io/inject]", "true"},
		{"cpu quantity", map[string]string{"minimesh.io/proxy-cpu-limit": "lots"}, nil, "metadata.annotations[minimesh.io/proxy-cpu-limit]", "lots"},
		{"memory quantity", map[string]string{"minimesh.io/proxy-memory-request": "12 MB"}, nil, "metadata.annotations[minimesh.io/proxy-memory-request]", "12 MB"},
		{"zero", map[string]string{"minimesh.io/proxy-memory-limit": "0"}, nil, "metadata.annotations[minimesh.io/proxy-memory-limit]", "0"},
		{"memory beyond any node", map[string]string{"minimesh.io/proxy-memory-limit": "999999999999999999Ei"}, nil, "metadata.annotations[minimesh.io/proxy-memory-limit]", "999999999999999999Ei"},
		{"memory above the bound", map[string]string{"minimesh.io/proxy-memory-limit": "9Gi"}, nil, "metadata.annotations[minimesh.io/proxy-memory-limit]", "9Gi"},
		{"cpu beyond any node", map[string]string{"minimesh.io/proxy-cpu-limit": "1e308"}, nil, "metadata.annotations[minimesh.io/proxy-cpu-limit]", "1e308"},
		{"cpu request above the bound", map[string]string{"minimesh.io/proxy-cpu-request": "9", "minimesh.io/proxy-cpu-limit": "16"}, nil, "metadata.annotations[minimesh.io/proxy-cpu-request]", "9"},
		// resource.ParseQuantity computes 10^999999999 for this one: minutes of CPU.
		{"exponent that never ends", map[string]string{"minimesh.io/proxy-cpu-limit": "1e999999999"}, nil, "metadata.annotations[minimesh.io/proxy-cpu-limit]", "1e999999999"},
		{"negative exponent", map[string]string{"minimesh.io/proxy-memory-request": "1e-308"}, nil, "metadata.annotations[minimesh.io/proxy-memory-request]", "1e-308"},
		{"too many containers", nil, func(p *corev1.Pod) {
			for i := range 100 {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i)})
			}
		}, "spec.containers", "101"},
		{"request over limit", map[string]string{"minimesh.io/proxy-cpu-request": "2"}, nil, "metadata.annotations[minimesh.io/proxy-cpu-request]", "2"},
		{"limit under request", map[string]string{"minimesh.io/proxy-memory-request": "100Mi", "minimesh.io/proxy-memory-limit": "64Mi"}, nil, "metadata.annotations[minimesh.io/proxy-memory-limit]", "64Mi"},
		{"unknown interception", map[string]string{"minimesh.io/interception": "ebpf"}, nil, "metadata.annotations[minimesh.io/interception]", "ebpf"},
		{"interception in capitals", map[string]string{"minimesh.io/interception": "IPTABLES"}, nil, "metadata.annotations[minimesh.io/interception]", "IPTABLES"},
		{"port out of range", map[string]string{"minimesh.io/skip-outbound-ports": "5432,70000"}, nil, "metadata.annotations[minimesh.io/skip-outbound-ports]", "5432,70000"},
		{"port range open", map[string]string{"minimesh.io/skip-outbound-ports": "8000-"}, nil, "metadata.annotations[minimesh.io/skip-outbound-ports]", "8000-"},
		{"port range backwards", iptables("minimesh.io/skip-outbound-ports", "8100-8000"), nil, "metadata.annotations[minimesh.io/skip-outbound-ports]", "8100-8000"},
		{"port zero", iptables("minimesh.io/skip-outbound-ports", "0"), nil, "metadata.annotations[minimesh.io/skip-outbound-ports]", "0"},
		{"port with a sign", iptables("minimesh.io/skip-outbound-ports", "+80"), nil, "metadata.annotations[minimesh.io/skip-outbound-ports]", "+80"},
		{"port name", iptables("minimesh.io/skip-outbound-ports", "postgres"), nil, "metadata.annotations[minimesh.io/skip-outbound-ports]", "postgres"},
		{"inbound port", iptables("minimesh.io/skip-inbound-ports", "80,http"), nil, "metadata.annotations[minimesh.io/skip-inbound-ports]", "80,http"},
		{"inbound port with proxy-env", map[string]string{"minimesh.io/skip-inbound-ports": "99999"}, nil, "metadata.annotations[minimesh.io/skip-inbound-ports]", "99999"},
		{"opaque port", iptables("minimesh.io/opaque-ports", "3306,5432;6379"), nil, "metadata.annotations[minimesh.io/opaque-ports]", "3306,5432;6379"},
		{"cidr", map[string]string{"minimesh.io/skip-outbound-cidrs": "10.0.0.0"}, nil, "metadata.annotations[minimesh.io/skip-outbound-cidrs]", "10.0.0.0"},
		{"cidr with iptables", iptables("minimesh.io/skip-outbound-cidrs", "10.0.0.0/8,metadata.google.internal"), nil, "metadata.annotations[minimesh.io/skip-outbound-cidrs]", "10.0.0.0/8,metadata.google.internal"},
		{"cidr with host bits", iptables("minimesh.io/skip-outbound-cidrs", "10.1.2.3/8"), nil, "metadata.annotations[minimesh.io/skip-outbound-cidrs]", "10.1.2.3/8"},
		{"cidr prefix too long", iptables("minimesh.io/skip-outbound-cidrs", "10.0.0.0/33"), nil, "metadata.annotations[minimesh.io/skip-outbound-cidrs]", "10.0.0.0/33"},
		{"cidrs too many for java", map[string]string{"minimesh.io/skip-outbound-cidrs": "10.0.0.0/9,11.0.0.0/9,12.0.0.0/9,13.0.0.0/9"}, nil, "metadata.annotations[minimesh.io/skip-outbound-cidrs]", "10.0.0.0/9,11.0.0.0/9,12.0.0.0/9,13.0.0.0/9"},
		{"capture-inbound value", iptables("minimesh.io/capture-inbound", "true"), nil, "metadata.annotations[minimesh.io/capture-inbound]", "true"},
		{"proxy-https value", map[string]string{"minimesh.io/proxy-https": "yes"}, nil, "metadata.annotations[minimesh.io/proxy-https]", "yes"},
		{"app runs as the proxy's uid", iptables(), func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr(int64(15000))}
		}, "spec.containers[0].securityContext.runAsUser", "15000"},
		{"pod runs as the proxy's uid", iptables(), func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr(int64(15000))}
		}, "spec.securityContext.runAsUser", "15000"},
		{"app init container runs as the proxy's uid", iptables(), func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr(int64(1000))}
			p.Spec.InitContainers = []corev1.Container{{Name: "migrate", SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(15000))}}}
		}, "spec.initContainers[0].securityContext.runAsUser", "15000"},
		{"init container name taken", iptables(), func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "minimesh-init"}}
		}, "spec.initContainers[0].name", "minimesh-init"},
		{"init volume name taken", iptables(), func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{{Name: "minimesh-xtables-lock"}} }, "spec.volumes[0].name", "minimesh-xtables-lock"},
		{"inbound port taken", iptables("minimesh.io/capture-inbound", "enabled"), func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 15006 },
			"spec.containers[0].ports[0].containerPort", "15006"},
		{"service name", map[string]string{"minimesh.io/service-name": "Web_API"}, nil, "metadata.annotations[minimesh.io/service-name]", "Web_API"},
		{"log level", map[string]string{"minimesh.io/proxy-log-level": "loud"}, nil, "metadata.annotations[minimesh.io/proxy-log-level]", "loud"},
		{"admin port taken", nil, func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 15020 }, "spec.containers[0].ports[0].containerPort", "15020"},
		{"outbound port taken", nil, func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "x", Ports: []corev1.ContainerPort{{ContainerPort: 15001}}}}
		}, "spec.initContainers[0].ports[0].containerPort", "15001"},
		{"port name taken", nil, func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].Name = "minimesh-admin" }, "spec.containers[0].ports[0].name", "minimesh-admin"},
		{"volume name taken", nil, func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{{Name: "minimesh-policies"}} }, "spec.volumes[0].name", "minimesh-policies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ann := enabled()
			for k, v := range tt.ann {
				ann[k] = v
			}
			pod := appPod(ann)
			if tt.mod != nil {
				tt.mod(pod)
			}
			_, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			var d *DenyError
			if !errors.As(err, &d) {
				t.Fatalf("err = %v, want a *DenyError", err)
			}
			if d.Field != tt.field || d.Value != tt.value {
				t.Fatalf("denied %s=%q, want %s=%q (%v)", d.Field, d.Value, tt.field, tt.value, err)
			}
			if !strings.Contains(err.Error(), tt.field) || !strings.Contains(err.Error(), `"`+tt.value+`"`) {
				t.Fatalf("message %q does not name the field and the value", err)
			}
		})
	}
}

func TestInjectWarns(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		mod  func(*corev1.Pod)
		want string
	}{
		{"typo", map[string]string{"minimesh.io/proxy-cpu-limits": "1"}, nil, "minimesh.io/proxy-cpu-limits is not a minimesh annotation"},
		{"tiny memory", map[string]string{"minimesh.io/proxy-memory-limit": "16Mi"}, nil, "OOM"},
		{"tiny cpu", map[string]string{"minimesh.io/proxy-cpu-limit": "50m"}, nil, "throttles the sidecar (measured: " + documentedCPU + ")"},
		{"ports without iptables", map[string]string{"minimesh.io/skip-outbound-ports": "5432"}, nil, "only applies to iptables"},
		{"inbound ports without iptables", map[string]string{"minimesh.io/skip-inbound-ports": "9000"}, nil, "minimesh.io/skip-inbound-ports only applies to iptables"},
		{"opaque ports without iptables", map[string]string{"minimesh.io/opaque-ports": "3306"}, nil, "minimesh.io/opaque-ports only applies to iptables"},
		{"capture without iptables", map[string]string{"minimesh.io/capture-inbound": "enabled"}, nil, "minimesh.io/capture-inbound only applies to iptables"},
		{"https with iptables", iptables("minimesh.io/proxy-https", "enabled"), nil, "minimesh.io/proxy-https only applies to proxy-env"},
		{"inbound ports without capture", iptables("minimesh.io/skip-inbound-ports", "9000"), nil, "no effect without minimesh.io/capture-inbound: enabled"},
		{"ipv6 prefix in java", map[string]string{"minimesh.io/skip-outbound-cidrs": "10.0.0.0/8,fd00::/8"}, nil, `"fd00::/8" cannot be written in Java's -Dhttp.nonProxyHosts`},
		{"own java proxy", nil, func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: "-Dhttp.proxyHost=corp -Dhttp.proxyPort=3128"})
		}, `container "app" sets -Dhttp.proxyHost in JAVA_TOOL_OPTIONS itself`},
		{"java options from valueFrom", nil, func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", ValueFrom: &corev1.EnvVarSource{
				ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "jvm"}, Key: "opts"}}})
		}, `container "app" sets JAVA_TOOL_OPTIONS from valueFrom`},
		{"envFrom may hold java options", nil, func(p *corev1.Pod) {
			p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}}
		}, `container "app" has envFrom, which may set JAVA_TOOL_OPTIONS`},
		{"own proxy", nil, func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "HTTP_PROXY", Value: "http://corp:3128"})
		}, `container "app" sets HTTP_PROXY=http://corp:3128 itself`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ann := enabled()
			for k, v := range tt.ann {
				ann[k] = v
			}
			pod := appPod(ann)
			if tt.mod != nil {
				tt.mod(pod)
			}
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			if !res.Injected {
				t.Fatal("a warning must not stop injection")
			}
			if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, tt.want) }) {
				t.Fatalf("warnings %q lack %q", res.Warnings, tt.want)
			}
		})
	}
}

// TestResourceBounds: the bounds themselves are admitted, in any spelling.
func TestResourceBounds(t *testing.T) {
	ann := enabled()
	ann["minimesh.io/proxy-cpu-limit"] = "8000m"
	ann["minimesh.io/proxy-cpu-request"] = "8"
	ann["minimesh.io/proxy-memory-limit"] = "8Gi"
	ann["minimesh.io/proxy-memory-request"] = "1e3Mi"
	if _, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, testConfig()); err == nil {
		t.Fatal("1e3Mi: an exponent with a binary suffix is not a quantity")
	}
	ann["minimesh.io/proxy-memory-request"] = "1.5e3M"
	if _, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, testConfig()); err == nil {
		t.Fatal("1.5e3M is not a quantity")
	}
	// A negative quantity is named as such, not as no quantity at all.
	for _, v := range []string{"-1Mi", "-100m", "-0.5"} {
		bad := enabled()
		bad["minimesh.io/proxy-memory-limit"] = v
		if _, err := Inject(Input{Pod: appPod(bad), Namespace: "shop"}, testConfig()); err == nil || !strings.Contains(err.Error(), "must be more than zero") {
			t.Errorf("%s: %v, want \"must be more than zero\"", v, err)
		}
	}
	ann["minimesh.io/proxy-memory-request"] = "8589934592"
	res, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, testConfig())
	if err != nil || !res.Injected {
		t.Fatalf("at the bounds: %v", err)
	}
}

// TestHostileValuesEchoCapped: whatever a minimesh annotation holds, the
// denial repeats at most the start of it and says how long it was, and a
// key that never ends is cut in its warning.
func TestHostileValuesEchoCapped(t *testing.T) {
	huge := strings.Repeat("9", 1<<20)
	for _, k := range knownAnnotations {
		if k == wellknown.AnnotationStatus {
			continue
		}
		for _, v := range []string{huge, "10.0.0.0/8," + huge, huge + "Ei", strings.Repeat("10.0.0.0/8,", 1<<16)} {
			ann := enabled()
			ann[k] = v
			_, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, testConfig())
			var d *DenyError
			if !errors.As(err, &d) {
				t.Fatalf("%s: %d bytes admitted: %v", k, len(v), err)
			}
			if msg := err.Error(); len(msg) > 400 || !strings.Contains(msg, fmt.Sprintf("… (%d bytes)", len(v))) {
				t.Errorf("%s: %d-byte denial: %.500s", k, len(msg), msg)
			}
		}
	}

	ann := enabled()
	ann["minimesh.io/"+huge] = "1"
	pod := appPod(ann)
	pod.Spec.Containers[0].Name = huge
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "HTTP_PROXY", Value: huge})
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 2 {
		t.Fatalf("warnings %.1000q", res.Warnings)
	}
	for _, w := range res.Warnings {
		if len(w) > 1000 || !strings.Contains(w, "bytes)") {
			t.Errorf("%d-byte warning: %.1100s", len(w), w)
		}
	}
}

// TestWarningsCapped: twenty containers that set their own proxy earn
// ten warnings and a count of the rest, in a stable order.
func TestWarningsCapped(t *testing.T) {
	pod := appPod(enabled())
	for i := range 20 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Env: []corev1.EnvVar{{Name: "HTTP_PROXY", Value: "x"}}})
	}
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 11 || res.Warnings[10] != "minimesh: 10 more warnings not shown" || !strings.Contains(res.Warnings[0], `container "c0"`) {
		t.Fatalf("warnings %q", res.Warnings)
	}
	if res.Pod.Spec.Containers[20].Env[1].Name != "NO_PROXY" { // its own HTTP_PROXY, then minimesh's NO_PROXY
		t.Fatal("capping the warnings changed the mutation")
	}
}

// TestTooManyContainers: the bound holds for the reinvocation of an
// injected pod, which never reaches the denial, and for a pod that only
// carries the status annotation, which is no injected pod.
func TestTooManyContainers(t *testing.T) {
	pod := injectedPod(t, enabled(), testConfig())
	for i := range 10000 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i)})
	}
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil || res.Injected || res.Reason != ReasonAlreadyInjected {
		t.Fatalf("%v %v %q", err, res.Injected, res.Reason)
	}
	ann := enabled()
	ann[wellknown.AnnotationStatus] = wellknown.StatusInjected
	pod = appPod(ann)
	for i := range 10000 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i)})
	}
	var d *DenyError
	if _, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig()); !errors.As(err, &d) || d.Field != "spec.containers" {
		t.Fatalf("status annotation without the sidecar, 10001 containers: %v", err)
	}
	pod = appPod(enabled())
	for i := range 99 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i)})
	}
	if res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig()); err != nil || !res.Injected {
		t.Fatalf("100 containers: %v", err)
	}
}

// TestLimitLowersDefaultRequest: a limit annotated below the config's
// default request is honoured, as Kubernetes honours a lone limit.
func TestLimitLowersDefaultRequest(t *testing.T) {
	ann := enabled()
	ann["minimesh.io/proxy-memory-limit"] = "24Mi"
	res, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	r := res.Pod.Spec.InitContainers[0].Resources
	if got := r.Requests.Memory().String(); got != "24Mi" {
		t.Fatalf("memory request %s, want 24Mi", got)
	}
}

func TestAppsOwnProxyWins(t *testing.T) {
	pod := appPod(enabled())
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "NO_PROXY", Value: "internal"})
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range res.Pod.Spec.Containers[0].Env {
		got = append(got, e.Name+"="+e.Value)
	}
	if !slices.Contains(got, "NO_PROXY=internal") || slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "NO_PROXY=localhost") }) {
		t.Fatalf("env %q: the app's NO_PROXY must stay and not be duplicated", got)
	}
	if !slices.Contains(got, "HTTP_PROXY=http://127.0.0.1:15001") {
		t.Fatalf("env %q lacks HTTP_PROXY", got)
	}
}

// TestReinvocation follows reinvocationPolicy IfNeeded: after another
// webhook adds a container, injecting again gives that container the proxy
// environment and nothing else; a third call changes nothing.
func TestReinvocation(t *testing.T) {
	cfg := testConfig()
	first, err := Inject(Input{Pod: appPod(enabled()), Namespace: "shop"}, cfg)
	if err != nil || !first.Injected {
		t.Fatalf("first: %v %+v", err, first)
	}
	later := first.Pod.DeepCopy()
	later.Spec.Containers = append(later.Spec.Containers, corev1.Container{Name: "added", Image: "x"})
	second, err := Inject(Input{Pod: later, Namespace: "shop"}, cfg)
	if err != nil || !second.Injected || second.Reason != ReasonReinvoked {
		t.Fatalf("second: %v %+v", err, second)
	}
	if n := len(second.Pod.Spec.InitContainers); n != 1 {
		t.Fatalf("%d init containers after reinvocation, want 1", n)
	}
	patch, err := Patch(later, second.Pod)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(patch), "/spec/containers/0") || !strings.Contains(string(patch), "/spec/containers/1/env") {
		t.Fatalf("reinvocation patch touches more than the added container: %s", patch)
	}
	third, err := Inject(Input{Pod: second.Pod, Namespace: "shop"}, cfg)
	if err != nil || third.Injected || third.Reason != ReasonAlreadyInjected {
		t.Fatalf("third: %v %+v", err, third)
	}
}

func TestServiceName(t *testing.T) {
	owned := func(kind, name string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr(true)}}}}
	}
	tests := []struct {
		name     string
		pod      *corev1.Pod
		workload string
		want     string
	}{
		{"well-known label", owned("ReplicaSet", "web-1", map[string]string{"app.kubernetes.io/name": "shop", "app": "x"}), "", "shop"},
		{"app label", owned("ReplicaSet", "web-1", map[string]string{"app": "x"}), "", "x"},
		{"deployment", owned("ReplicaSet", "web-5d8f7", map[string]string{"pod-template-hash": "5d8f7"}), "", "web"},
		{"statefulset", owned("StatefulSet", "db", nil), "", "db"},
		{"cronjob", owned("Job", "backup-29384756", nil), "", "backup"},
		{"job", owned("Job", "migrate", nil), "", "migrate"},
		{"manual workload", &corev1.Pod{}, "api", "api"},
		{"generateName", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "batch-"}}, "", "batch"},
		{"name", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "solo"}}, "", "solo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serviceName(tt.pod, tt.workload); got != tt.want {
				t.Fatalf("serviceName = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPatchApplies checks that the webhook's patch, applied to the pod as
// the API server holds it, gives exactly the mutated pod.
func TestPatchApplies(t *testing.T) {
	pod := appPod(enabled())
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	patch, err := Patch(pod, res.Pod)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := json.Marshal(pod)
	patched, err := ops.Apply(orig)
	if err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(&got, res.Pod) {
		t.Fatalf("patched pod differs from the mutated pod\npatch: %s", patch)
	}
}

// TestGolden pins the whole injected pod: the sidecar's command line,
// probes, security context and the apps' environment, as users will read
// them in `kubectl get pod -o yaml`.
func TestGolden(t *testing.T) {
	ratio := 0.1
	tests := []struct {
		name string
		pod  *corev1.Pod
		cfg  func(*Config)
	}{
		{"deployment-pod", appPod(enabled()), nil},
		{"annotations", appPod(map[string]string{
			"minimesh.io/inject": "enabled", "minimesh.io/service-name": "storefront",
			"minimesh.io/proxy-cpu-limit": "500m", "minimesh.io/proxy-memory-limit": "64Mi",
			"minimesh.io/proxy-log-level": "debug", "minimesh.io/skip-outbound-cidrs": "10.0.0.0/8, 192.168.0.0/16",
		}), func(c *Config) {
			c.OTLPEndpoint = "jaeger-collector.observability:4317"
			c.XDSAddress = "minimesh-injector.minimesh.svc:15010"
			c.TraceSampleRatio = &ratio
			c.NoProxy = []string{".corp.example.com"}
		}},
		{"iptables", appPod(iptables(
			"minimesh.io/capture-inbound", "enabled", "minimesh.io/skip-inbound-ports", "9000",
			"minimesh.io/skip-outbound-ports", "5432,6379", "minimesh.io/skip-outbound-cidrs", "169.254.169.254/32",
			"minimesh.io/opaque-ports", "25,3306",
		)), nil},
		{"proxy-https", func() *corev1.Pod {
			p := appPod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/proxy-https": "enabled"})
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: "-Xmx512m"})
			return p
		}(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			if tt.cfg != nil {
				tt.cfg(cfg)
			}
			res, err := Inject(Input{Pod: tt.pod, Namespace: "shop"}, cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := yaml.Marshal(res.Pod)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tt.name+".golden.yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./injector -update)", err)
			}
			if string(got) != string(want) {
				t.Fatalf("%s differs (go test ./injector -update rewrites it):\n%s", path, got)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte("proxy:\n  image: reg/mm:1\n  cpuLimit: 500m\notlpEndpoint: j:4317\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Proxy.Image != "reg/mm:1" || cfg.Proxy.CPULimit != "500m" || cfg.Proxy.MemoryLimit != "128Mi" || cfg.OTLPEndpoint != "j:4317" {
		t.Fatalf("config %+v: file values over defaults", cfg)
	}
	for _, bad := range []struct{ in, want string }{
		{"proxy:\n  imagee: x\n", "line 2: field imagee not found"},
		{"proxy:\n  cpuLimit: lots\n", `proxy.cpuLimit: "lots": not a quantity`},
		{"proxy:\n  cpuLimit: 1e999999999\n", `proxy.cpuLimit: "1e999999999": not a quantity`},
		{"proxy:\n  memoryLimit: 999999999999999999Ei\n", `proxy.memoryLimit: "999999999999999999Ei": more than 8Gi`},
		{"proxy:\n  cpuRequest: 2\n", "proxy.cpuRequest: 2 is more than proxy.cpuLimit 1"},
		{"proxy:\n  adminPort: 15001\n", "proxy.adminPort: 15001 is also the outbound port"},
		{"proxy:\n  inboundPort: 15020\n", "proxy.inboundPort: 15020 is also the outbound or the admin port"},
		{"proxy:\n  inboundPort: 0\n", "proxy.inboundPort: 0 is not a port"},
		{"noProxy: [a b]\n", `noProxy[0]: "a b"`},
		{"noProxy: ['a|b']\n", `noProxy[0]: "a|b"`},
		{"noProxy: [0.0.0.0/1, 128.0.0.0/1, 10.0.0.0/9, 11.0.0.0/9, 12.0.0.0/9, 13.0.0.0/9]\n", "noProxy: more than 4096 bytes"},
		{"proxy:\n  uid: 0\n", "proxy.uid"},
		{"traceSampleRatio: 2\n", "traceSampleRatio"},
		{"proxy:\n  logLevel: loud\n", "proxy.logLevel"},
		{"proxy:\n  image: reg/mm@" + digest1 + "\n", "proxy.initImage: must be set: proxy.image reg/mm@" + digest1 + " is pinned by digest"},
	} {
		_, err := ParseConfig([]byte(bad.in))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseConfig(%q) = %v, want an error containing %q", bad.in, err, bad.want)
		}
	}
}

// TestInitImage: the init image is proxy.initImage, or the proxy image's
// repository with -init and its tag.
func TestInitImage(t *testing.T) {
	for in, want := range map[string]string{
		"ghcr.io/minimesh/minimesh:v1":      "ghcr.io/minimesh/minimesh-init:v1",
		"minimesh.local/minimesh:e2e":       "minimesh.local/minimesh-init:e2e",
		"registry:5000/mesh/minimesh:1.2.3": "registry:5000/mesh/minimesh-init:1.2.3",
		"registry:5000/minimesh":            "registry:5000/minimesh-init",
		"minimesh":                          "minimesh-init",
	} {
		if got, err := DefaultInitImage(in); got != want || err != nil {
			t.Errorf("DefaultInitImage(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"reg/mm:1@sha256:0123", "reg/mm@sha256:0123", ":1"} {
		if got, err := DefaultInitImage(in); err == nil {
			t.Errorf("DefaultInitImage(%s) = %s, want an error", in, got)
		}
	}
	cfg, err := ParseConfig([]byte("proxy:\n  image: reg/mm@" + digest1 + "\n  initImage: reg/mm-init@" + digest2 + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Proxy.InitImageRef(); got != "reg/mm-init@"+digest2 {
		t.Errorf("InitImageRef() = %s, want proxy.initImage", got)
	}
	if got := DefaultConfig().Proxy.InitImageRef(); !strings.HasPrefix(got, "ghcr.io/minimesh/minimesh-init:") {
		t.Errorf("the default init image is %s", got)
	}
}

// FuzzInject: any annotation value is either refused with a *DenyError or
// injected into a pod that injecting again leaves alone.
func FuzzInject(f *testing.F) {
	f.Add("minimesh.io/proxy-cpu-limit", "500m", "minimesh.io/skip-outbound-ports", "80,8000-8100")
	f.Add("minimesh.io/skip-outbound-cidrs", "10.0.0.0/8,", "minimesh.io/service-name", "a-b")
	f.Add("minimesh.io/interception", "proxy-env", "minimesh.io/proxy-memory-request", "1e3")
	f.Add("minimesh.io/interception", "iptables", "minimesh.io/skip-inbound-ports", "80,8000-8100")
	f.Add("minimesh.io/interception", "iptables", "minimesh.io/capture-inbound", "enabled")
	f.Add("minimesh.io/proxy-https", "enabled", "minimesh.io/skip-outbound-cidrs", "172.16.0.0/12,fd00::/8")
	f.Add("minimesh.io/opaque-ports", "3306", "minimesh.io/interception", "iptables")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		ann := enabled()
		ann[k1] = v1
		ann[k2] = v2
		cfg := testConfig()
		res, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, cfg)
		if err != nil {
			var d *DenyError
			if !errors.As(err, &d) {
				t.Fatalf("error %v is not a denial", err)
			}
			return
		}
		if !res.Injected {
			return
		}
		if _, err := Patch(appPod(ann), res.Pod); err != nil {
			t.Fatal(err)
		}
		again, err := Inject(Input{Pod: res.Pod, Namespace: "shop"}, cfg)
		if err != nil || again.Injected {
			t.Fatalf("injecting twice: %v %+v", err, again)
		}
	})
}

// TestGOMAXPROCS: a CPU limit of at most one core gets GOMAXPROCS=1 (Go
// would round it up to 2); above one core Go's own choice from the
// cgroup stands; without a limit, the request's cores rounded up, at
// least one (Go would take the node's every core). Every sidecar gets
// GOGC=50.
func TestGOMAXPROCS(t *testing.T) {
	for _, tc := range []struct {
		request, limit string            // the config's
		ann            map[string]string // the pod's, over the config
		want           string
	}{
		{"100m", "1", nil, "1"},
		{"100m", "500m", nil, "1"},
		{"100m", "1000m", nil, "1"},
		{"100m", "1001m", nil, ""},
		{"100m", "2", nil, ""},
		{"2", "4", nil, ""},
		{"100m", "", nil, "1"},
		{"", "", nil, "1"},
		{"1", "", nil, "1"},
		{"1001m", "", nil, "2"},
		{"2500m", "", nil, "3"},
		{"100m", "1", map[string]string{"minimesh.io/proxy-cpu-limit": ""}, "1"},
		{"100m", "1", map[string]string{"minimesh.io/proxy-cpu-limit": "", "minimesh.io/proxy-cpu-request": "2"}, "2"},
		{"100m", "1", map[string]string{"minimesh.io/proxy-cpu-limit": "", "minimesh.io/proxy-cpu-request": ""}, "1"},
		{"100m", "1", map[string]string{"minimesh.io/proxy-cpu-limit": "3"}, ""},
		{"2", "", map[string]string{"minimesh.io/proxy-cpu-limit": "500m"}, "1"}, // the request lowered to the limit
	} {
		ann := enabled()
		maps.Copy(ann, tc.ann)
		cfg := testConfig()
		cfg.Proxy.CPURequest, cfg.Proxy.CPULimit = tc.request, tc.limit
		res, err := Inject(Input{Pod: appPod(ann), Namespace: "shop"}, cfg)
		if err != nil || !res.Injected {
			t.Fatalf("request %q, limit %q, annotations %v: %v", tc.request, tc.limit, tc.ann, err)
		}
		got, gogc := "", ""
		for _, c := range append(res.Pod.Spec.InitContainers, res.Pod.Spec.Containers...) {
			for _, e := range c.Env {
				switch e.Name {
				case "GOMAXPROCS":
					got = e.Value
				case "GOGC":
					gogc = e.Value
				}
			}
		}
		if gogc != "50" {
			t.Errorf("request %q, limit %q, annotations %v: GOGC %q, want 50", tc.request, tc.limit, tc.ann, gogc)
		}
		if got != tc.want {
			t.Errorf("request %q, limit %q, annotations %v: GOMAXPROCS %q, want %q", tc.request, tc.limit, tc.ann, got, tc.want)
		}
	}
}
