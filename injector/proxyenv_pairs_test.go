package injector

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestProxyEnvSpellings: the two spellings of a proxy variable are one
// setting. An app that sets either keeps it alone, in every client: curl
// reads only http_proxy and Python prefers it, Go prefers HTTP_PROXY, so
// minimesh's other spelling would win in some of them.
func TestProxyEnvSpellings(t *testing.T) {
	const (
		ours = "http://127.0.0.1:15001"
		np   = "localhost,127.0.0.1,::1,$(KUBERNETES_SERVICE_HOST),kubernetes,kubernetes.default,kubernetes.default.svc,kubernetes.default.svc.cluster.local"
		corp = "http://corp:3128"
	)
	fromCM := &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "net"}, Key: "no-proxy"}}
	tests := []struct {
		name  string
		https bool
		own   []corev1.EnvVar
		// want is the container's env after LOG and its own, without
		// JAVA_TOOL_OPTIONS, as NAME=value.
		want []string
		// warnings: each the start of a warning's tail after `container
		// "app" sets `, … standing for text left out.
		warnings []string
	}{
		{"nothing of its own", false, nil,
			[]string{"HTTP_PROXY=" + ours, "http_proxy=" + ours, "NO_PROXY=" + np, "no_proxy=" + np}, nil},
		{"upper-case HTTP_PROXY", false, []corev1.EnvVar{{Name: "HTTP_PROXY", Value: corp}},
			[]string{"HTTP_PROXY=" + corp, "NO_PROXY=" + np, "no_proxy=" + np},
			[]string{"HTTP_PROXY=" + corp + " itself; its value wins over minimesh's " + ours + ", so minimesh sets neither HTTP_PROXY nor http_proxy"}},
		{"lower-case http_proxy", false, []corev1.EnvVar{{Name: "http_proxy", Value: corp}},
			[]string{"http_proxy=" + corp, "NO_PROXY=" + np, "no_proxy=" + np},
			[]string{"http_proxy=" + corp + " itself; its value wins over minimesh's " + ours + ", so minimesh sets neither HTTP_PROXY nor http_proxy"}},
		{"both spellings", false, []corev1.EnvVar{{Name: "http_proxy", Value: corp}, {Name: "HTTP_PROXY", Value: corp + "0"}},
			[]string{"http_proxy=" + corp, "HTTP_PROXY=" + corp + "0", "NO_PROXY=" + np, "no_proxy=" + np},
			[]string{"http_proxy=" + corp + " and HTTP_PROXY=" + corp + "0 itself"}},
		// Python's urllib reads a proxy variable in any case.
		{"mixed case", false, []corev1.EnvVar{{Name: "Http_Proxy", Value: corp}},
			[]string{"Http_Proxy=" + corp, "NO_PROXY=" + np, "no_proxy=" + np},
			[]string{"Http_Proxy=" + corp + " itself"}},
		{"upper-case NO_PROXY", false, []corev1.EnvVar{{Name: "NO_PROXY", Value: ".corp"}},
			[]string{"NO_PROXY=.corp", "HTTP_PROXY=" + ours, "http_proxy=" + ours},
			[]string{"NO_PROXY=.corp itself; its value wins over minimesh's localhost,…, so minimesh sets neither NO_PROXY nor no_proxy"}},
		{"lower-case no_proxy from valueFrom", false, []corev1.EnvVar{{Name: "no_proxy", ValueFrom: fromCM}},
			[]string{"no_proxy=", "HTTP_PROXY=" + ours, "http_proxy=" + ours},
			[]string{"no_proxy=(valueFrom) itself"}},
		{"https_proxy under proxy-https", true, []corev1.EnvVar{{Name: "https_proxy", Value: corp}},
			[]string{"https_proxy=" + corp, "HTTP_PROXY=" + ours, "http_proxy=" + ours, "NO_PROXY=" + np, "no_proxy=" + np},
			[]string{"https_proxy=" + corp + " itself; its value wins over minimesh's " + ours + ", so minimesh sets neither HTTPS_PROXY nor https_proxy"}},
		// Without proxy-https minimesh sets no HTTPS_PROXY: nothing to warn about.
		{"https_proxy without proxy-https", false, []corev1.EnvVar{{Name: "https_proxy", Value: corp}},
			[]string{"https_proxy=" + corp, "HTTP_PROXY=" + ours, "http_proxy=" + ours, "NO_PROXY=" + np, "no_proxy=" + np}, nil},
		{"every setting", true, []corev1.EnvVar{{Name: "http_proxy", Value: corp}, {Name: "HTTPS_PROXY", Value: corp}, {Name: "no_proxy", Value: ".corp"}},
			[]string{"http_proxy=" + corp, "HTTPS_PROXY=" + corp, "no_proxy=.corp"},
			[]string{"http_proxy=", "HTTPS_PROXY=", "no_proxy="}},
		// ALL_PROXY is a fallback for every scheme, not a spelling of
		// HTTP_PROXY: minimesh's HTTP_PROXY is meant to take http.
		{"ALL_PROXY", false, []corev1.EnvVar{{Name: "ALL_PROXY", Value: corp}},
			[]string{"ALL_PROXY=" + corp, "HTTP_PROXY=" + ours, "http_proxy=" + ours, "NO_PROXY=" + np, "no_proxy=" + np}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ann := enabled()
			if tt.https {
				ann["minimesh.io/proxy-https"] = "enabled"
			}
			pod := appPod(ann)
			pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, tt.own...)
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			if err != nil || !res.Injected {
				t.Fatalf("Inject: %v %+v", err, res)
			}
			var got []string
			for _, e := range res.Pod.Spec.Containers[0].Env[1:] {
				if e.Name != javaToolOptions {
					got = append(got, e.Name+"="+e.Value)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("env\n%q\nwant\n%q", got, tt.want)
			}
			var warned []string
			for _, w := range res.Warnings {
				if tail, ok := strings.CutPrefix(w, `minimesh: container "app" sets `); ok && !strings.Contains(tail, javaToolOptions) {
					warned = append(warned, tail)
				}
			}
			if len(warned) != len(tt.warnings) {
				t.Fatalf("warnings %q, want %d about the proxy variables", res.Warnings, len(tt.warnings))
			}
			for i, w := range tt.warnings {
				rest, ok := warned[i], true
				for j, part := range strings.Split(w, "…") {
					k := strings.Index(rest, part)
					if ok = k == 0 || j > 0 && k > 0; !ok {
						break
					}
					rest = rest[k+len(part):]
				}
				if !ok {
					t.Errorf("warning %q, want it to start %q", warned[i], w)
				}
			}
			// Injected once, never again: the reinvocation sees a
			// container it has handled, whichever spellings it has.
			again, err := Inject(Input{Pod: res.Pod, Namespace: "shop"}, testConfig())
			if err != nil || again.Injected || again.Reason != ReasonAlreadyInjected {
				t.Fatalf("reinvocation: %v %+v", err, again)
			}
		})
	}
}

// TestProxyEnvSpellingsManySpellings: a container that sets a variable in
// many cases earns one short warning.
func TestProxyEnvSpellingsManySpellings(t *testing.T) {
	pod := appPod(enabled())
	for _, n := range []string{"HTTP_PROXY", "http_proxy", "Http_Proxy", "hTTP_PROXY", "HTTP_proxy"} {
		pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: n, Value: "x"})
	}
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := `minimesh: container "app" sets HTTP_PROXY=x and http_proxy=x and 3 more spellings itself;`
	if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.HasPrefix(w, want) }) {
		t.Fatalf("warnings %q lack %q", res.Warnings, want)
	}
}

// TestReinvocationProxyEnvSpellings: a container another webhook adds
// after injection follows the same rule as one there at the first
// admission: one with either spelling of a setting is the app's, and one
// with none gets both of minimesh's.
func TestReinvocationProxyEnvSpellings(t *testing.T) {
	tests := []struct {
		name string
		env  []corev1.EnvVar
		want []string // the added container's env names after the reinvocation
	}{
		{"none", nil, []string{"HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", javaToolOptions}},
		{"lower-case http_proxy", []corev1.EnvVar{{Name: "http_proxy", Value: "http://corp:3128"}}, []string{"http_proxy"}},
		{"upper-case NO_PROXY", []corev1.EnvVar{{Name: "NO_PROXY", Value: ".corp"}}, []string{"NO_PROXY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := injectedPod(t, enabled(), testConfig())
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "added", Image: "x", Env: tt.env})
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range res.Pod.Spec.Containers[len(res.Pod.Spec.Containers)-1].Env {
				got = append(got, e.Name)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("env %q, want %q", got, tt.want)
			}
		})
	}
}
