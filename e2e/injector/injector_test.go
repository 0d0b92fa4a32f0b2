package injector_test

import (
	"context"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/wellknown"
)

// manualStream is what a GitOps repository holds before `minimesh inject`.
const manualStream = `apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 8000}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: example/web:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: backup}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: backup, image: example/backup:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug}
spec:
  containers: [{name: sh, image: busybox}]
`

// TestInjector runs every admission case against one API server, because
// starting it is most of the time.
func TestInjector(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	enabled := map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}
	nsOn := map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}

	create := func(t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
		t.Helper()
		got, err := e.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s/%s: %v", ns, pod.Name, err)
		}
		return got
	}

	t.Run("annotated pod is injected", func(t *testing.T) {
		ns := e.namespace(t, ctx, "annotated", nil)
		p := create(t, ns, appPod("web", enabled))
		if !injected(p) {
			t.Fatalf("stored pod not injected: %+v", p.Spec)
		}
		if p.Spec.InitContainers[0].Name != wellknown.ProxyContainerName {
			t.Fatalf("sidecar is not the first init container: %v", p.Spec.InitContainers)
		}
		env := envMap(p.Spec.Containers[0])
		if env["HTTP_PROXY"] == "" || env["http_proxy"] == "" || !strings.Contains(env["NO_PROXY"], "127.0.0.1") {
			t.Fatalf("app env %v lacks the proxy variables", env)
		}
	})

	t.Run("deployment pod template is injected", func(t *testing.T) {
		ns := e.namespace(t, ctx, "deploy", nil)
		dep := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "orders"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "orders"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "orders"}, Annotations: enabled},
					Spec:       appPod("", nil).Spec,
				},
			},
		}
		dep, err := e.client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// No controller-manager runs: create the pod as the Deployment's
		// ReplicaSet would, from the template the API server stored.
		pod := &corev1.Pod{
			ObjectMeta: *dep.Spec.Template.ObjectMeta.DeepCopy(),
			Spec:       *dep.Spec.Template.Spec.DeepCopy(),
		}
		pod.GenerateName = "orders-6f7c9-"
		pod.Labels["pod-template-hash"] = "6f7c9"
		yes := true
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "orders-6f7c9", UID: dep.UID, Controller: &yes}}
		p := create(t, ns, pod)
		if !injected(p) {
			t.Fatal("the Deployment's pod was not injected")
		}
		if args := p.Spec.InitContainers[0].Args; !slices.Contains(args, "--service-name=orders") {
			t.Fatalf("sidecar args %q lack the service name from the template's label", args)
		}
	})

	t.Run("opted-in namespace", func(t *testing.T) {
		ns := e.namespace(t, ctx, "opted-in", nsOn)
		if p := create(t, ns, appPod("plain", nil)); !injected(p) {
			t.Fatal("pod in an opted-in namespace was not injected")
		}
		out := create(t, ns, appPod("out", map[string]string{wellknown.AnnotationInject: "disabled"}))
		if injected(out) || len(out.Spec.InitContainers) != 0 {
			t.Fatal("pod annotated disabled was injected")
		}
	})

	t.Run("not asked, not injected", func(t *testing.T) {
		ns := e.namespace(t, ctx, "plain", nil)
		p := create(t, ns, appPod("plain", nil))
		if injected(p) || len(p.Spec.InitContainers) != 0 || len(envMap(p.Spec.Containers[0])) != 0 {
			t.Fatalf("unannotated pod was changed: %+v", p.Spec)
		}
	})

	t.Run("kube-system is never injected", func(t *testing.T) {
		p := create(t, "kube-system", appPod("sys", enabled))
		if injected(p) {
			t.Fatal("kube-system pod was injected")
		}
	})

	t.Run("hostNetwork is never injected and says so", func(t *testing.T) {
		ns := e.namespace(t, ctx, "hostnet", nil)
		e.warnings.take()
		pod := appPod("hn", enabled)
		pod.Spec.HostNetwork = true
		if p, err := e.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil || injected(p) {
			t.Fatalf("hostNetwork pod: err %v, injected %v", err, err == nil && injected(p))
		}
		if w := e.warnings.take(); !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, "hostNetwork") }) {
			t.Fatalf("warnings %q lack the hostNetwork one", w)
		}
	})

	// The sidecar is a Linux container: injected into a pod with
	// spec.os.name windows, the API server refused the pod for the
	// sidecar's securityContext (seccompProfile, capabilities, runAsUser
	// cannot be set for a windows pod); one sent to Windows nodes by its
	// nodeSelector was created with a sidecar that never starts. Both are
	// created, without the sidecar, with the injector's warning.
	t.Run("pods for Windows nodes are created without the sidecar and say so", func(t *testing.T) {
		ns := e.namespace(t, ctx, "windows", nsOn)
		for name, mod := range map[string]func(*corev1.PodSpec){
			"os": func(s *corev1.PodSpec) {
				// What Windows pods may not set (API validation).
				s.OS, s.SecurityContext, s.Containers[0].SecurityContext = &corev1.PodOS{Name: corev1.Windows}, nil, nil
			},
			"node-selector": func(s *corev1.PodSpec) { s.NodeSelector = map[string]string{"kubernetes.io/os": "windows"} },
		} {
			e.warnings.take()
			pod := appPod("win-"+name, nil)
			mod(&pod.Spec)
			p, err := e.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			if err != nil || injected(p) || len(p.Spec.InitContainers) != 0 {
				t.Fatalf("%s: err %v, injected %v", name, err, err == nil && injected(p))
			}
			if w := e.warnings.take(); !slices.ContainsFunc(w, func(s string) bool {
				return strings.Contains(s, "pods for nodes other than Linux are never injected")
			}) {
				t.Fatalf("%s: warnings %q lack minimesh's", name, w)
			}
		}
	})

	t.Run("pod security restricted admits injected pods", func(t *testing.T) {
		ns := e.namespace(t, ctx, "restricted", map[string]string{
			"pod-security.kubernetes.io/enforce": "restricted",
			wellknown.AnnotationInject:           wellknown.InjectEnabled,
		})
		if p := create(t, ns, appPod("web", nil)); !injected(p) {
			t.Fatal("pod admitted but not injected")
		}
		// The check is real: a pod that breaks "restricted" is refused.
		bad := appPod("root", map[string]string{wellknown.AnnotationInject: "disabled"})
		bad.Spec.Containers[0].SecurityContext = nil
		_, err := e.client.CoreV1().Pods(ns).Create(ctx, bad, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "restricted") {
			t.Fatalf("a non-restricted pod: err %v, want a PodSecurity refusal", err)
		}
	})

	iptables := map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled, "minimesh.io/interception": "iptables"}

	t.Run("iptables: the init container before the sidecar, which runs as the excluded UID", func(t *testing.T) {
		ns := e.namespace(t, ctx, "iptables", nil)
		p := create(t, ns, appPod("web", iptables))
		checkIPTablesPod(t, e, p)
		runStoredInit(t, p)
	})

	t.Run("iptables is admitted where Pod Security is privileged", func(t *testing.T) {
		ns := e.namespace(t, ctx, "privileged", map[string]string{"pod-security.kubernetes.io/enforce": "privileged"})
		checkIPTablesPod(t, e, create(t, ns, appPod("web", iptables)))
	})

	for _, level := range []string{"restricted", "baseline"} {
		t.Run("iptables is refused where Pod Security enforces "+level, func(t *testing.T) {
			ns := e.namespace(t, ctx, level, map[string]string{"pod-security.kubernetes.io/enforce": level})
			_, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("web", iptables), metav1.CreateOptions{})
			if err == nil {
				t.Fatal("admitted")
			}
			for _, want := range []string{webhookName, `metadata.annotations[minimesh.io/interception]: "iptables"`,
				`enforces Pod Security "` + level + `"`, "NET_ADMIN", "minimesh.io/interception: proxy-env", "pod-security.kubernetes.io/enforce=privileged"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("refusal %q lacks %q", err, want)
				}
			}
			// The refusal is Pod Security's own verdict, given sooner and
			// with what to do: the injected spec, created as it is,
			// is refused by the API server's Pod Security admission.
			open := e.namespace(t, ctx, "spec-of-"+level, nil)
			injectedPod := create(t, open, appPod("web", iptables))
			again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Annotations: map[string]string{wellknown.AnnotationInject: wellknown.InjectDisabled}},
				Spec: injectedPod.Spec}
			_, err = e.client.CoreV1().Pods(ns).Create(ctx, again, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err == nil || !strings.Contains(err.Error(), "violates PodSecurity") || !strings.Contains(err.Error(), "NET_ADMIN") {
				t.Fatalf("the injected spec in a %s namespace: %v, want Pod Security's refusal of NET_ADMIN", level, err)
			}
		})
	}

	t.Run("JAVA_TOOL_OPTIONS is appended to the app's own", func(t *testing.T) {
		ns := e.namespace(t, ctx, "java", map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
		pod := appPod("jvm", map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled, "minimesh.io/proxy-https": "enabled"})
		pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "JAVA_TOOL_OPTIONS", Value: "-Xmx256m -XX:+UseSerialGC"}}
		p := create(t, ns, pod)
		env := envMap(p.Spec.Containers[0])
		port := strconv.Itoa(e.outPort)
		want := "-Xmx256m -XX:+UseSerialGC -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=" + port + " -Dhttp.nonProxyHosts=localhost|127.*|[::1]|$(KUBERNETES_SERVICE_HOST)|"
		if got := env["JAVA_TOOL_OPTIONS"]; !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort="+port) {
			t.Fatalf("JAVA_TOOL_OPTIONS %q, want it to start %q and end with the HTTPS proxy", got, want)
		}
		if env["HTTPS_PROXY"] != "http://127.0.0.1:"+port || env["https_proxy"] != env["HTTPS_PROXY"] {
			t.Fatalf("env %v: proxy-https asked for HTTPS_PROXY", env)
		}
		if n := strings.Count(env["JAVA_TOOL_OPTIONS"], "-Dhttp.proxyHost"); n != 1 {
			t.Fatalf("JAVA_TOOL_OPTIONS has -Dhttp.proxyHost %d times", n)
		}
		// A real JVM started with that value sends HttpClient and
		// HttpURLConnection to the sidecar's port, localhost direct, and
		// tunnels HTTPS through the sidecar.
		runJVM(t, env["JAVA_TOOL_OPTIONS"], e.outPort, true)
	})

	t.Run("bad annotation is denied with its message", func(t *testing.T) {
		ns := e.namespace(t, ctx, "denied", nil)
		ann := map[string]string{wellknown.AnnotationInject: "enabled", "minimesh.io/proxy-cpu-limit": "lots"}
		_, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("bad", ann), metav1.CreateOptions{})
		if err == nil {
			t.Fatal("pod with a bad annotation was admitted")
		}
		for _, want := range []string{webhookName, "minimesh.io/proxy-cpu-limit", `"lots"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("denial %q does not name %s", err, want)
			}
		}
	})

	t.Run("warnings reach the client", func(t *testing.T) {
		ns := e.namespace(t, ctx, "warned", nil)
		e.warnings.take()
		pod := appPod("own-proxy", map[string]string{wellknown.AnnotationInject: "enabled", "minimesh.io/proxy-cpu-limits": "1"})
		pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "HTTP_PROXY", Value: "http://corp:3128"}}
		p := create(t, ns, pod)
		if env := envMap(p.Spec.Containers[0]); env["HTTP_PROXY"] != "http://corp:3128" {
			t.Fatalf("the app's own HTTP_PROXY was replaced: %v", env)
		}
		w := e.warnings.take()
		for _, want := range []string{"HTTP_PROXY=http://corp:3128 itself", "minimesh.io/proxy-cpu-limits is not a minimesh annotation"} {
			if !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, want) }) {
				t.Errorf("warnings %q lack %q", w, want)
			}
		}
	})

	t.Run("failurePolicy Ignore lets pods through uninjected when the injector is down", func(t *testing.T) {
		ns := e.namespace(t, ctx, "down-ignore", map[string]string{downLabel: "ignore"})
		p := create(t, ns, appPod("web", enabled))
		if injected(p) {
			t.Fatal("injected by a webhook that is down?")
		}
	})

	t.Run("failurePolicy Fail rejects pods when the injector is down", func(t *testing.T) {
		ns := e.namespace(t, ctx, "down-fail", map[string]string{downLabel: "fail"})
		_, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("web", enabled), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
			t.Fatalf("err %v, want the API server's failed calling webhook", err)
		}
	})

	t.Run("the stored sidecar spec runs", func(t *testing.T) {
		ns := e.namespace(t, ctx, "runs", nil)
		p := create(t, ns, appPod("web", enabled))
		runStoredSidecar(t, e, p)
	})

	t.Run("without a CPU limit the sidecar runs its request's Ps, not the machine's", func(t *testing.T) {
		ns := e.namespace(t, ctx, "nolimit", nil)
		p := create(t, ns, appPod("web", map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled,
			"minimesh.io/proxy-cpu-limit": ""}))
		for _, c := range p.Spec.InitContainers {
			if c.Name != wellknown.ProxyContainerName {
				continue
			}
			if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
				t.Fatalf("sidecar CPU limit %v, want none", c.Resources.Limits)
			}
			if got := envMap(c)["GOMAXPROCS"]; got != "1" {
				t.Fatalf("sidecar GOMAXPROCS %q under the default request of 100m, want 1", got)
			}
		}
		runStoredSidecar(t, e, p) // and it runs one P
	})

	t.Run("minimesh inject output is accepted and not injected twice", func(t *testing.T) {
		ns := e.namespace(t, ctx, "manual", nsOn)
		bin, err := tools.Binary("minimesh")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "inject", "-f", "-")
		cmd.Stdin = strings.NewReader(manualStream)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("minimesh inject: %v: %s", err, stderr.String())
		}
		if res, err := e.cluster.KubectlStdin(ctx, string(out), "apply", "-n", ns, "-f", "-"); err != nil {
			t.Fatalf("kubectl apply of the injected stream: %v\n%s", err, res)
		}
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, "debug", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !injected(p) || len(p.Spec.InitContainers) != 1 {
			t.Fatalf("manually injected pod, admitted by the webhook: %d init containers", len(p.Spec.InitContainers))
		}
		for _, kind := range []string{"deployment/web", "cronjob/backup", "service/web"} {
			if _, err := e.cluster.Kubectl(ctx, "get", "-n", ns, kind); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("minimesh inject of iptables warns, and the webhook refuses it where Pod Security forbids it", func(t *testing.T) {
		ns := e.namespace(t, ctx, "manual-restricted", map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
		bin, err := tools.Binary("minimesh")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "inject", "-f", "-")
		cmd.Stdin = strings.NewReader("apiVersion: v1\nkind: Pod\nmetadata:\n  name: raw\n  annotations: {minimesh.io/interception: iptables}\nspec:\n  containers: [{name: app, image: example/app:1}]\n")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("minimesh inject: %v: %s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "minimesh inject cannot see the namespace's labels") {
			t.Errorf("minimesh inject's report lacks the Pod Security warning:\n%s", stderr.String())
		}
		res, err := e.cluster.KubectlStdin(ctx, string(out), "apply", "-n", ns, "-f", "-")
		if err == nil || !strings.Contains(res+err.Error(), `enforces Pod Security "restricted"`) {
			t.Fatalf("kubectl apply of an iptables pod in a restricted namespace: %v\n%s", err, res)
		}
	})

	t.Run("controller metrics count admissions", func(t *testing.T) {
		body := get(t, e.adminURL+"/metrics")
		for _, want := range []string{`minimesh_injector_admissions_total{result="injected"}`, `minimesh_injector_admissions_total{result="denied"}`, `minimesh_injector_admission_duration_seconds_count`} {
			if !strings.Contains(body, want) {
				t.Errorf("controller /metrics lacks %s", want)
			}
		}
	})
}

// checkIPTablesPod checks a stored pod injected with iptables
// interception: the init container first, with NET_ADMIN and NET_RAW as
// root and nothing else, then the sidecar as wellknown.ProxyUID; the
// app has no proxy variables.
func checkIPTablesPod(t *testing.T, e *env, p *corev1.Pod) {
	t.Helper()
	if !injected(p) || len(p.Spec.InitContainers) != 2 {
		t.Fatalf("stored pod: %d init containers, injected %v", len(p.Spec.InitContainers), injected(p))
	}
	ic, side := p.Spec.InitContainers[0], p.Spec.InitContainers[1]
	if ic.Name != "minimesh-init" || side.Name != wellknown.ProxyContainerName {
		t.Fatalf("init containers %s, %s: want minimesh-init before the sidecar", ic.Name, side.Name)
	}
	if len(ic.Args) == 0 || ic.Args[0] != "init" || !slices.Contains(ic.Args, "--proxy-uid=15000") || !slices.Contains(ic.Args, "--outbound-port="+strconv.Itoa(e.outPort)) {
		t.Errorf("init args %q", ic.Args)
	}
	sc := ic.SecurityContext
	if sc == nil || sc.Capabilities == nil || *sc.RunAsUser != 0 || *sc.RunAsNonRoot || *sc.Privileged || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("init securityContext %+v", sc)
	}
	if u := side.SecurityContext.RunAsUser; u == nil || *u != wellknown.ProxyUID {
		t.Errorf("sidecar runs as %v, want %d", u, wellknown.ProxyUID)
	}
	if env := envMap(p.Spec.Containers[0]); len(env) != 0 {
		t.Errorf("app env %v: iptables redirects everything, no proxy variables", env)
	}
}

// runStoredInit runs the stored init container's command with --dry-run:
// the built `minimesh-proxy init` accepts every flag the injector wrote,
// and its rules exclude the sidecar's UID and redirect to the config's
// port.
func runStoredInit(t *testing.T, p *corev1.Pod) {
	t.Helper()
	ic := p.Spec.InitContainers[0]
	bin, err := tools.Binary("minimesh-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if len(ic.Command) != 1 || ic.Command[0] != "/minimesh-proxy" {
		t.Fatalf("init command %q", ic.Command)
	}
	cmd := exec.Command(bin, append(slices.Clone(ic.Args), "--dry-run")...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("minimesh-proxy %q --dry-run: %v\n%s", ic.Args, err, stderr.String())
	}
	port := strings.TrimPrefix(ic.Args[slices.IndexFunc(ic.Args, func(a string) bool { return strings.HasPrefix(a, "--outbound-port=") })], "--outbound-port=")
	for _, want := range []string{"MINIMESH", "--uid-owner 15000", "--to-ports " + port} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dry-run rules lack %q:\n%s", want, out)
		}
	}
}

func envMap(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}
