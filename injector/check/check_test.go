package check

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/internal/pki"
)

// certs makes a CA and a serving certificate for host valid until
// notAfter, PEM encoded.
func certs(t *testing.T, host string, notAfter time.Time) (caPEM, certPEM []byte) {
	t.Helper()
	ca, err := pki.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue([]string{host}, time.Now().Add(-time.Hour), notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return ca.PEM, p.CertPEM
}

// cluster is a fake cluster with the chart installed in service mode and
// the given extra objects; the injector Deployment has ready replicas.
func cluster(t *testing.T, minor string, certValid time.Duration, objs ...runtime.Object) *fake.Clientset {
	caPEM, certPEM := certs(t, "minimesh-injector.minimesh.svc", time.Now().Add(certValid))
	base := []runtime.Object{
		&admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "minimesh", Labels: map[string]string{"app.kubernetes.io/name": "minimesh"}},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "pods.inject.minimesh.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service: &admissionregistrationv1.ServiceReference{Namespace: "minimesh", Name: "minimesh-injector"}, CABundle: caPEM,
			}}, {Name: "namespaces.inject.minimesh.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service: &admissionregistrationv1.ServiceReference{Namespace: "minimesh", Name: "minimesh-injector"}, CABundle: caPEM,
			}}},
		},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "minimesh", Name: TLSSecret}, Data: map[string][]byte{"tls.crt": certPEM}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "minimesh", Name: Deployment}, Status: appsv1.DeploymentStatus{AvailableReplicas: 2}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted", Labels: map[string]string{"minimesh.io/inject": "enabled"}}},
	}
	c := fake.NewClientset(append(base, objs...)...)
	c.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{Major: "1", Minor: minor, GitVersion: "v1." + minor + ".0"}
	return c
}

func verdicts(rs []Result) map[string]string {
	m := map[string]string{}
	for _, r := range rs {
		m[r.Name] = "ok"
		if r.Err != nil {
			m[r.Name] = r.Err.Error()
		}
	}
	return m
}

func pod(ns, name string, ann map[string]string, phase corev1.PodPhase, initStatus *bool) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{Phase: phase}}
	if ann["minimesh.io/status"] == "injected" {
		// What injector.IsInjected recognises as the sidecar.
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = []corev1.Container{{Name: "minimesh-proxy", RestartPolicy: &always,
			Command: []string{"/minimesh-proxy"}, Args: []string{"run", "--outbound-addr=127.0.0.1:15001"}}}
		if initStatus != nil {
			p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "minimesh-proxy", Ready: *initStatus}}
		}
	}
	return p
}

// redirected gives an injected pod the init container that iptables
// interception adds (what injector.Inject recognises as one).
func redirected(p *corev1.Pod) *corev1.Pod {
	p.Spec.InitContainers = append([]corev1.Container{{Name: "minimesh-init", Command: []string{"/minimesh-proxy"}, Args: []string{"init"}}}, p.Spec.InitContainers...)
	return p
}

func TestRun(t *testing.T) {
	yes, no := true, false
	injected := map[string]string{"minimesh.io/status": "injected"}
	tests := []struct {
		name      string
		minor     string
		certValid time.Duration
		objs      []runtime.Object
		failing   map[string]string // check name → part of its error; the rest must pass
	}{
		{"healthy", "37", 300 * 24 * time.Hour, []runtime.Object{
			pod("shop", "web", injected, corev1.PodRunning, &yes),
			pod("shop", "plain", nil, corev1.PodRunning, nil),
			pod("opted", "waiting", injected, corev1.PodPending, nil),
		}, nil},
		{"old cluster", "28+", 300 * 24 * time.Hour, nil, map[string]string{"Kubernetes version supports native sidecars": "1.28"}},
		{"expiring", "37", 48 * time.Hour, nil, map[string]string{"serving certificate is not about to expire": "expires on"}},
		{"expired", "37", -time.Minute, nil, map[string]string{"serving certificate is not about to expire": "expired on"}},
		{"missing sidecars", "37", 300 * 24 * time.Hour, []runtime.Object{
			pod("shop", "asked", map[string]string{"minimesh.io/inject": "enabled"}, corev1.PodRunning, nil),
			pod("opted", "before-label", nil, corev1.PodRunning, nil),
			pod("opted", "out", map[string]string{"minimesh.io/inject": "disabled"}, corev1.PodRunning, nil),
			pod("minimesh", "own", map[string]string{"minimesh.io/inject": "enabled"}, corev1.PodRunning, nil),
			// Asked in a way the injector refuses: listed with why.
			pod("shop", "typo", map[string]string{"minimesh.io/inject": "true"}, corev1.PodRunning, nil),
			pod("kube-system", "typo", map[string]string{"minimesh.io/inject": "true"}, corev1.PodRunning, nil),
			// The status annotation copied without the sidecar.
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "stale", Annotations: map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/status": "injected"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		}, map[string]string{"pods that ask for injection have the sidecar": "4 pods without the sidecar: opted/before-label, shop/asked, shop/stale, shop/typo (minimesh: metadata.annotations[minimesh.io/inject]: \"true\": want enabled or disabled)"}},
		{"namespace label typo", "37", 300 * 24 * time.Hour, []runtime.Object{
			// Silently ignored by the webhook's namespaceSelector: the
			// running pod lacks its sidecar, and no check said so.
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "typo", Labels: map[string]string{"minimesh.io/inject": "true"}}},
			pod("typo", "web", nil, corev1.PodRunning, nil),
		}, map[string]string{"namespace labels minimesh.io/inject are enabled or disabled": `1 namespaces labelled with a value the webhook ignores, not enabled or disabled: typo (minimesh.io/inject="true"): kubectl label namespace typo minimesh.io/inject=enabled --overwrite`}},
		// Pods the injector never injects (injector.Inject's rule): not
		// missing their sidecar, however they asked.
		{"pods never injected", "37", 300 * 24 * time.Hour, []runtime.Object{
			func() *corev1.Pod {
				p := pod("opted", "windows", nil, corev1.PodPending, nil)
				p.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
				return p
			}(),
			func() *corev1.Pod {
				p := pod("shop", "windows-node", map[string]string{"minimesh.io/inject": "enabled"}, corev1.PodRunning, nil)
				p.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "windows"}
				return p
			}(),
			func() *corev1.Pod {
				p := pod("opted", "agent", nil, corev1.PodRunning, nil)
				p.Spec.HostNetwork = true
				return p
			}(),
		}, nil},
		{"iptables where Pod Security forbids it", "37", 300 * 24 * time.Hour, []runtime.Object{
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "locked", Labels: map[string]string{"pod-security.kubernetes.io/enforce": "baseline"}}},
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "open", Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged", "minimesh.io/inject": "enabled"}}},
			// Labelled after the pod was injected: it will not come back.
			redirected(pod("locked", "old", map[string]string{"minimesh.io/status": "injected", "minimesh.io/interception": "iptables"}, corev1.PodRunning, &yes)),
			// Injected without iptables, whatever the annotation says now.
			pod("locked", "unredirected", map[string]string{"minimesh.io/status": "injected", "minimesh.io/interception": "iptables"}, corev1.PodRunning, &yes),
			// Never injected: the webhook skips a pod for Windows nodes.
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "locked", Name: "windows"}, Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/interception": "iptables"}},
				Spec:       corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Windows}}}}},
			// Its pods are refused; the Deployment is what to fix.
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "locked", Name: "orders"}, Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/interception": "iptables"}}}}},
			// A namespace without the label: the cluster's default, unknown.
			&batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "backup"}, Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/interception": "iptables"}}}}}}},
			// Fine: proxy-env, opted out, allowed, or not asked.
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "locked", Name: "web"}, Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"minimesh.io/inject": "enabled"}}}}},
			&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "locked", Name: "db"}, Spec: appsv1.StatefulSetSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"minimesh.io/interception": "iptables"}}}}},
			&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "open", Name: "agent"}, Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"minimesh.io/interception": "iptables"}}}}},
			pod("open", "ok", map[string]string{"minimesh.io/status": "injected", "minimesh.io/interception": "iptables"}, corev1.PodRunning, &yes),
		}, map[string]string{"iptables interception only where Pod Security allows it": "2 ask for iptables interception where Pod Security forbids NET_ADMIN: deployment locked/orders (pod-security.kubernetes.io/enforce=baseline), pod locked/old (pod-security.kubernetes.io/enforce=baseline)"}},
		{"workloads whose pods are refused", "37", 300 * 24 * time.Hour, []runtime.Object{
			// A Deployment's pods, refused while the injector is down
			// (failurePolicy Fail): its ReplicaSet says so.
			&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-5d8f", OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", UID: "1", Controller: &yes}}},
				Status: appsv1.ReplicaSetStatus{Conditions: []appsv1.ReplicaSetCondition{{Type: appsv1.ReplicaSetReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
					Message: `Internal error occurred: failed calling webhook "pods.inject.minimesh.io": failed to call webhook: Post "https://minimesh-injector.minimesh.svc:443/inject?timeout=5s": no endpoints available for service "minimesh-injector"`}}}},
			// Refused for another reason: not minimesh's to report.
			&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "quota-1"},
				Status: appsv1.ReplicaSetStatus{Conditions: []appsv1.ReplicaSetCondition{{Type: appsv1.ReplicaSetReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
					Message: `pods "quota-1-x" is forbidden: exceeded quota: compute`}}}},
			// A StatefulSet short of pods, with the webhook's refusal in its
			// events; one at full strength whose event is an old story.
			&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"}, Spec: appsv1.StatefulSetSpec{Replicas: new(int32(3))},
				Status: appsv1.StatefulSetStatus{Replicas: 1}},
			&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cache"}, Spec: appsv1.StatefulSetSpec{Replicas: new(int32(1))},
				Status: appsv1.StatefulSetStatus{Replicas: 1}},
			&corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db.1"}, Reason: "FailedCreate",
				InvolvedObject: corev1.ObjectReference{Kind: "StatefulSet", Namespace: "shop", Name: "db"},
				Message:        `Create Pod db-1 in StatefulSet db failed error: admission webhook "namespaces.inject.minimesh.io" denied the request: minimesh: metadata.annotations: "x": y`},
			&corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db.2"}, Reason: "FailedCreate",
				InvolvedObject: corev1.ObjectReference{Kind: "StatefulSet", Namespace: "shop", Name: "db"},
				Message:        `Create Pod db-2 in StatefulSet db failed error: admission webhook "namespaces.inject.minimesh.io" denied the request: minimesh: metadata.annotations: "x": y`},
			&corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cache.1"}, Reason: "FailedCreate",
				InvolvedObject: corev1.ObjectReference{Kind: "StatefulSet", Namespace: "shop", Name: "cache"},
				Message:        `Create Pod cache-0 in StatefulSet cache failed error: admission webhook "pods.inject.minimesh.io" denied the request: minimesh: x`},
			// A DaemonSet short of pods for its own reasons.
			&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "agent"}, Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 2}},
		}, map[string]string{"no workload's pods are refused by the webhook": `2 workloads whose pods are refused: deployment shop/web (Internal error occurred: failed calling webhook "pods.inject.minimesh.io": failed to call webhook: Post "https://minimesh-injector.minimesh.svc:443/inject?timeout=5s": no endpoints available for service "minimesh-injector"), statefulset shop/db (Create Pod db-1 in StatefulSet db failed error: admission webhook "namespaces.inject.minimesh.io" denied the request: minimesh: metadata.annotations: "x": y)`}},
		{"finished and terminating pods", "37", 300 * 24 * time.Hour, []runtime.Object{
			// A Job's pods that ended before their namespace opted in:
			// they never run again, and no restart reaches them.
			pod("opted", "job-done", nil, corev1.PodSucceeded, nil),
			pod("opted", "job-failed", nil, corev1.PodFailed, nil),
			// Pods being deleted: one without the sidecar, one whose
			// sidecar drains (its /ready says 503 on purpose).
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "opted", Name: "going", DeletionTimestamp: &metav1.Time{Time: time.Now()}, Finalizers: []string{"x"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
			func() *corev1.Pod {
				p := pod("shop", "draining", injected, corev1.PodRunning, &no)
				p.DeletionTimestamp, p.Finalizers = &metav1.Time{Time: time.Now()}, []string{"x"}
				return p
			}(),
			// Still there to run: listed.
			pod("opted", "pending", nil, corev1.PodPending, nil),
		}, map[string]string{"pods that ask for injection have the sidecar": "1 pods without the sidecar: opted/pending"}},
		{"policy in two keys", "37", 300 * 24 * time.Hour, []runtime.Object{
			// Each key decodes alone; the sidecar reads the keys as one
			// directory, and refuses it whole.
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: PolicyConfig}, Data: map[string]string{
				"b.yaml": "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: b}\nspec: {service: geo, timeout: 1s}\n",
				"a.yaml": "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: a}\nspec: {service: geo, timeout: 2s}\n",
				"README": "not a policy",
			}},
		}, map[string]string{"policies validate": `shop/minimesh-policies/b.yaml:4:17: spec.service: service "geo" already has a policy at shop/minimesh-policies/a.yaml:1:1`,
			"policy ConfigMaps hold no key the sidecars skip": "1 keys the sidecars skip, not .yaml, .yml or .json: shop/minimesh-policies/README"}},
		{"policy in a key and a binaryData key", "37", 300 * 24 * time.Hour, []runtime.Object{
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: PolicyConfig},
				Data:       map[string]string{"b.yaml": "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: b}\nspec: {service: geo}\n"},
				BinaryData: map[string][]byte{"a.json": []byte(`{"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy", "metadata": {"name": "a"}, "spec": {"service": "geo"}}`)}},
		}, map[string]string{"policies validate": `shop/minimesh-policies/b.yaml:4:17: spec.service: service "geo" already has a policy at shop/minimesh-policies/a.json:1:1`}},
		{"sidecar not ready", "37", 300 * 24 * time.Hour, []runtime.Object{
			pod("shop", "web", injected, corev1.PodRunning, &no),
		}, map[string]string{"sidecars are ready": "1 sidecars not ready: shop/web"}},
		{"bad policy", "37", 300 * 24 * time.Hour, []runtime.Object{
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: PolicyConfig}, Data: map[string]string{
				"geo.yaml": "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo\n  timeout: fast\n",
				"README":   "not a policy",
			}},
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "other"}, Data: map[string]string{"x.yaml": "{"}},
		}, map[string]string{"policies validate": "shop/minimesh-policies/geo.yaml:6:12", "policy ConfigMaps hold no key the sidecars skip": "1 keys the sidecars skip, not .yaml, .yml or .json: shop/minimesh-policies/README"}},
		{"policy in a key without its extension", "37", 300 * 24 * time.Hour, []runtime.Object{
			// kubectl create configmap --from-file=geo=geo.yaml: the
			// sidecars skip the key, and its policy with it. A hidden key
			// is skipped too, as Load skips hidden files, without a word.
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: PolicyConfig}, Data: map[string]string{
				"geo":     "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec: {service: geo, timeout: banana}\n",
				"a.yaml":  "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: a}\nspec: {service: a}\n",
				".hidden": "x",
			}, BinaryData: map[string][]byte{"maps.yaml.gz": {0x1f, 0x8b}}},
		}, map[string]string{"policy ConfigMaps hold no key the sidecars skip": "2 keys the sidecars skip, not .yaml, .yml or .json: shop/minimesh-policies/geo, shop/minimesh-policies/maps.yaml.gz"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(t, tt.minor, tt.certValid, tt.objs...)
			got := verdicts(Run(context.Background(), Options{Client: c, Namespace: "minimesh"}))
			if len(got) != 14 {
				t.Fatalf("%d checks ran, want 14: %v", len(got), got)
			}
			for name, v := range got {
				want, bad := tt.failing[name]
				switch {
				case bad && (v == "ok" || !strings.Contains(v, want)):
					t.Errorf("%s: %q, want a failure containing %q", name, v, want)
				case !bad && v != "ok":
					t.Errorf("%s failed: %s", name, v)
				}
			}
		})
	}
}

// TestNamespaceLabels: every value of the namespace label but the two the
// webhook knows is a failure naming the namespace, the value and the fix,
// except where no pod is ever injected.
func TestNamespaceLabels(t *testing.T) {
	cfg := injector.DefaultConfig() // ignores kube-system and kube-node-lease
	fix := func(ns ...string) string {
		return ": kubectl label namespace " + strings.Join(ns, " ") + " minimesh.io/inject=enabled --overwrite"
	}
	tests := []struct {
		name   string
		labels map[string]map[string]string
		want   string // "" passes
	}{
		{"none", map[string]map[string]string{"shop": nil, "web": {"team": "a"}}, ""},
		{"enabled and disabled", map[string]map[string]string{"shop": {"minimesh.io/inject": "enabled"}, "web": {"minimesh.io/inject": "disabled"}}, ""},
		{"true", map[string]map[string]string{"shop": {"minimesh.io/inject": "true"}}, `1 namespaces labelled with a value the webhook ignores, not enabled or disabled: shop (minimesh.io/inject="true")` + fix("shop")},
		{"case and empty", map[string]map[string]string{"web": {"minimesh.io/inject": "Enabled"}, "shop": {"minimesh.io/inject": ""}, "ok": {"minimesh.io/inject": "enabled"}},
			`2 namespaces labelled with a value the webhook ignores, not enabled or disabled: shop (minimesh.io/inject=""), web (minimesh.io/inject="Enabled")` + fix("shop", "web")},
		{"release and ignored namespaces", map[string]map[string]string{"minimesh": {"minimesh.io/inject": "yes"}, "kube-system": {"minimesh.io/inject": "yes"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := namespaceLabels(tt.labels, "minimesh", cfg)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestRunStopsWithoutWebhook(t *testing.T) {
	c := fake.NewClientset()
	c.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{Major: "1", Minor: "37"}
	rs := Run(context.Background(), Options{Client: c, Namespace: "minimesh"})
	last := rs[len(rs)-1]
	if last.Name != "webhook configuration exists" || last.Err == nil || !strings.Contains(last.Hint, "helm install") {
		t.Fatalf("results %+v: want to stop at the missing webhook configuration with a hint", rs)
	}
	pre := verdicts(Run(context.Background(), Options{Client: c, Pre: true}))
	if pre["no minimesh webhook configuration yet"] != "ok" {
		t.Fatalf("--pre on an empty cluster: %v", pre)
	}
}

func TestServiceCertForOtherName(t *testing.T) {
	c := cluster(t, "37", 300*24*time.Hour)
	caPEM, certPEM := certs(t, "elsewhere.svc", time.Now().Add(300*24*time.Hour))
	w, _ := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), "minimesh", metav1.GetOptions{})
	w.Webhooks[0].ClientConfig.CABundle = caPEM
	_, _ = c.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(context.Background(), w, metav1.UpdateOptions{})
	s, _ := c.CoreV1().Secrets("minimesh").Get(context.Background(), TLSSecret, metav1.GetOptions{})
	s.Data["tls.crt"] = certPEM
	_, _ = c.CoreV1().Secrets("minimesh").Update(context.Background(), s, metav1.UpdateOptions{})
	got := verdicts(Run(context.Background(), Options{Client: c, Namespace: "minimesh"}))
	if v := got["webhook CA bundle verifies the serving certificate"]; !strings.Contains(v, "does not verify for minimesh-injector.minimesh.svc") {
		t.Fatalf("a certificate for another name: %q", v)
	}
}

func TestObjectsAccepted(t *testing.T) {
	obj := func(name, status, msg string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy",
			"metadata": map[string]any{"name": name, "namespace": "shop"},
			"status":   map[string]any{"conditions": []any{map[string]any{"type": "Accepted", "status": status, "message": msg}}},
		}}
	}
	scheme := runtime.NewScheme()
	d := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{resiliencePolicies: "ResiliencePolicyList"},
		obj("geo", "True", "served"), obj("maps", "False", "spec.service: label too long"))
	err := objectsAccepted(context.Background(), d)
	if err == nil || !strings.Contains(err.Error(), "1 refused: shop/maps (spec.service: label too long)") {
		t.Fatalf("objectsAccepted = %v", err)
	}
}

// TestRunFollowsTheRelease: a release in another namespace with
// tls.mode=secret (the certificate in the Secret the injector mounts) and
// a namespace excluded in its injection config is healthy, and the hints
// name its namespace, whatever --namespace says.
func TestRunFollowsTheRelease(t *testing.T) {
	caPEM, certPEM := certs(t, "minimesh-injector.mesh.svc", time.Now().Add(300*24*time.Hour))
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: Deployment},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Volumes: []corev1.Volume{
			{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "minimesh-injector-config"}}}},
			{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "my-tls"}}},
		}}}},
		Status: appsv1.DeploymentStatus{AvailableReplicas: 1}}
	c := fake.NewClientset(
		&admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "minimesh", Labels: map[string]string{"app.kubernetes.io/name": "minimesh"}},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "pods.inject.minimesh.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service: &admissionregistrationv1.ServiceReference{Namespace: "mesh", Name: "minimesh-injector"}, CABundle: caPEM,
			}}},
		},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "my-tls"}, Data: map[string][]byte{"tls.crt": certPEM}},
		dep,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "minimesh-injector-config"}, Data: map[string]string{
			"config.yaml": "proxy:\n  image: \"minimesh.local/minimesh:e2e\"\nignoredNamespaces:\n  - kube-system\n  - legacy\n",
		}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy", Labels: map[string]string{"minimesh.io/inject": "enabled"}}},
		pod("legacy", "web", nil, corev1.PodRunning, nil),
	)
	c.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{Major: "1", Minor: "37"}
	rs := Run(context.Background(), Options{Client: c, Namespace: "minimesh"})
	for _, r := range rs {
		if r.Err != nil {
			t.Errorf("%s: %v", r.Name, r.Err)
		}
	}

	if _, err := c.AppsV1().Deployments("mesh").UpdateStatus(context.Background(), &appsv1.Deployment{ObjectMeta: dep.ObjectMeta, Spec: dep.Spec}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range Run(context.Background(), Options{Client: c, Namespace: "minimesh"}) {
		if r.Name == "injector is ready" && (r.Err == nil || !strings.Contains(r.Hint, "kubectl -n mesh ")) {
			t.Errorf("injector down: %v, hint %q: want a failure whose hint names namespace mesh", r.Err, r.Hint)
		}
	}
}

// TestCRDMissing: without the CRD no ResiliencePolicy can be applied or
// served; the check says so instead of passing.
func TestCRDMissing(t *testing.T) {
	d := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{resiliencePolicies: "ResiliencePolicyList"})
	d.PrependReactor("list", "resiliencepolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(resiliencePolicies.GroupResource(), "")
	})
	c := cluster(t, "37", 300*24*time.Hour)
	got := verdicts(Run(context.Background(), Options{Client: c, Dynamic: d, Namespace: "minimesh"}))
	if v := got["ResiliencePolicy CRD is installed"]; !strings.Contains(v, "CustomResourceDefinition resiliencepolicies.minimesh.io is missing") {
		t.Fatalf("CRD missing: %q (all: %v)", v, got)
	}
	if _, ran := got["ResiliencePolicy CRD is up to date"]; ran {
		t.Errorf("CRD read without the CRD: %v", got)
	}
	if _, ran := got["ResiliencePolicy objects are accepted"]; ran {
		t.Errorf("objects checked without their CRD: %v", got)
	}
}

// TestOutdatedSidecars: after an upgrade the pods injected before it keep
// their old sidecar; the check lists them as a warning, never a failure,
// and only when it knows the image the injector gives now.
func TestOutdatedSidecars(t *testing.T) {
	yes := true
	withImages := func(p *corev1.Pod, proxy, init string) *corev1.Pod {
		p.Spec.InitContainers[0].Image = proxy
		if init != "" {
			p.Spec.InitContainers = append([]corev1.Container{{Name: "minimesh-init", Image: init}}, p.Spec.InitContainers...)
		}
		return p
	}
	injected := func(ns, name string) *corev1.Pod {
		return pod(ns, name, map[string]string{"minimesh.io/status": "injected"}, corev1.PodRunning, &yes)
	}
	deleting := injected("shop", "going")
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	deleting.Finalizers = []string{"x"}
	done := injected("shop", "job-done")
	done.Status.Phase = corev1.PodSucceeded
	const image, initImage = "minimesh.local/minimesh:2", "minimesh.local/minimesh-init:2"
	config := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "minimesh", Name: InjectorConfig}, Data: map[string]string{
		"config.yaml": "proxy:\n  image: " + image + "\n",
	}}
	objs := []runtime.Object{
		withImages(injected("shop", "current"), image, ""),
		withImages(injected("shop", "current-iptables"), image, initImage),
		withImages(injected("shop", "old"), "minimesh.local/minimesh:1", ""),
		withImages(injected("shop", "old-init"), image, "minimesh.local/minimesh-init:1"),
		withImages(deleting, "minimesh.local/minimesh:1", ""),
		withImages(done, "minimesh.local/minimesh:1", ""),
		pod("shop", "plain", nil, corev1.PodRunning, nil),
	}
	const name = "sidecars run the injector's images"

	rs := Run(context.Background(), Options{Client: cluster(t, "37", 300*24*time.Hour, append(objs, config)...), Namespace: "minimesh"})
	i := slices.IndexFunc(rs, func(r Result) bool { return r.Name == name })
	if i < 0 {
		t.Fatalf("%q did not run: %v", name, verdicts(rs))
	}
	want := "2 sidecars of another image: shop/old (minimesh.local/minimesh:1, not " + image + "), shop/old-init (init minimesh.local/minimesh-init:1, not " + initImage + ")"
	if r := rs[i]; r.Err == nil || r.Err.Error() != want || !r.Warn {
		t.Errorf("%s: %v (warning %t), want the warning %q", name, r.Err, r.Warn, want)
	}
	for _, r := range rs {
		if r.Err != nil && r.Name != name {
			t.Errorf("%s: %v", r.Name, r.Err)
		}
	}

	// Without the rendered config (an injector run by hand) the image the
	// injector gives is unknown: no verdict rather than a wrong one.
	rs = Run(context.Background(), Options{Client: cluster(t, "37", 300*24*time.Hour, objs...), Namespace: "minimesh"})
	if slices.ContainsFunc(rs, func(r Result) bool { return r.Name == name }) {
		t.Errorf("%q ran without the injection config: %v", name, verdicts(rs))
	}
}

func TestCut(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly", 7, "exactly"},
		{"longer one", 6, "longer…"},
		{"ééé", 3, "é…"}, // not in the middle of é's two bytes
		{"ééé", 4, "éé…"},
	} {
		if got := cut(tt.s, tt.n); got != tt.want {
			t.Errorf("cut(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
}
