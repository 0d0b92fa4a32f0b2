package injector

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/minimesh/minimesh/wellknown"
)

// TestIPTables: the init container comes first, runs as root with
// NET_ADMIN and NET_RAW and nothing else, is told the config's ports and
// the pod's exclusions; the sidecar runs as the UID the rules exclude, and
// the apps get no proxy variables.
func TestIPTables(t *testing.T) {
	cfg := testConfig()
	cfg.Proxy.OutboundPort, cfg.Proxy.AdminPort, cfg.Proxy.InboundPort = 16001, 16020, 16006
	pod := appPod(iptables(
		"minimesh.io/skip-outbound-ports", "5432, 8000-8100",
		"minimesh.io/skip-outbound-cidrs", "169.254.169.254/32,10.0.0.0/8",
		"minimesh.io/skip-inbound-ports", "9000,16020",
		"minimesh.io/capture-inbound", "enabled",
		"minimesh.io/opaque-ports", "3306,5432",
	))
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000))}
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "example/migrate:1"}}
	res, err := Inject(Input{Pod: pod, Namespace: "shop", NamespaceLabels: map[string]string{PodSecurityEnforceLabel: "privileged"}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings %q", res.Warnings)
	}
	var names []string
	for _, c := range res.Pod.Spec.InitContainers {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"minimesh-init", "minimesh-proxy", "migrate"}) {
		t.Fatalf("init containers %q: the rules first, then the sidecar, then the app's", names)
	}
	ic := res.Pod.Spec.InitContainers[0]
	if ic.Image != "ghcr.io/minimesh/minimesh-init:v0.0.0-test" || !slices.Equal(ic.Command, []string{"/minimesh-proxy"}) || ic.RestartPolicy != nil {
		t.Errorf("init container %s %q restartPolicy %v", ic.Image, ic.Command, ic.RestartPolicy)
	}
	wantArgs := []string{"init", "--proxy-uid=15000", "--outbound-port=16001",
		"--capture-inbound", "--inbound-port=16006", "--admin-port=16020", "--skip-inbound-ports=9000,16020",
		"--skip-outbound-ports=5432,8000-8100", "--skip-outbound-cidrs=169.254.169.254/32,10.0.0.0/8"}
	if !slices.Equal(ic.Args, wantArgs) {
		t.Errorf("init args\n%q, want\n%q", ic.Args, wantArgs)
	}
	sc := ic.SecurityContext
	if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0 || sc.RunAsNonRoot == nil || *sc.RunAsNonRoot ||
		sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("init securityContext %+v", sc)
	}
	if ic.Resources.Limits.Cpu().IsZero() || ic.Resources.Limits.Memory().IsZero() {
		t.Errorf("init container without limits: %v", ic.Resources)
	}
	if len(ic.VolumeMounts) != 1 || ic.VolumeMounts[0].MountPath != "/run" ||
		!slices.ContainsFunc(res.Pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == ic.VolumeMounts[0].Name && v.EmptyDir != nil }) {
		t.Errorf("init container's /run: %v in %v", ic.VolumeMounts, res.Pod.Spec.Volumes)
	}

	side := res.Pod.Spec.InitContainers[1]
	if u := side.SecurityContext.RunAsUser; u == nil || *u != wellknown.ProxyUID || *side.SecurityContext.RunAsGroup != wellknown.ProxyUID || !*side.SecurityContext.RunAsNonRoot {
		t.Errorf("sidecar runs as %v, want %d", u, wellknown.ProxyUID)
	}
	if !slices.Contains(side.Args, "--inbound-addr=:16006") || !slices.Contains(side.Args, "--outbound-addr=127.0.0.1:16001") {
		t.Errorf("sidecar args %q", side.Args)
	}
	if !slices.Contains(side.Env, corev1.EnvVar{Name: "MINIMESH_OPAQUE_PORTS", Value: "3306,5432"}) {
		t.Errorf("sidecar env %v lacks MINIMESH_OPAQUE_PORTS", side.Env)
	}
	if env := res.Pod.Spec.Containers[0].Env; len(env) != 1 || env[0].Name != "LOG" {
		t.Errorf("app env %v: iptables redirects everything, no proxy variables", env)
	}

	// Without capture-inbound: no inbound flags at all, no inbound
	// listener.
	res, err = Inject(Input{Pod: appPod(iptables()), Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if args := res.Pod.Spec.InitContainers[0].Args; !slices.Equal(args, []string{"init", "--proxy-uid=15000", "--outbound-port=15001"}) {
		t.Errorf("init args %q", args)
	}
	if args := res.Pod.Spec.InitContainers[1].Args; slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--inbound-addr") }) {
		t.Errorf("sidecar args %q: an inbound listener without capture", args)
	}

	if env := res.Pod.Spec.InitContainers[1].Env; slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == "MINIMESH_OPAQUE_PORTS" }) {
		t.Errorf("sidecar env %v: no opaque-ports annotation, the sidecar's default list", env)
	}
	// An empty opaque-ports replaces the default list with none.
	none, err := Inject(Input{Pod: appPod(iptables("minimesh.io/opaque-ports", "")), Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if env := none.Pod.Spec.InitContainers[1].Env; !slices.Contains(env, corev1.EnvVar{Name: "MINIMESH_OPAQUE_PORTS", Value: ""}) {
		t.Errorf("sidecar env %v lacks an empty MINIMESH_OPAQUE_PORTS", env)
	}

	// Injected once, the pod is left alone, containers added later
	// included (their connections are redirected as well).
	later := res.Pod.DeepCopy()
	later.Spec.Containers = append(later.Spec.Containers, corev1.Container{Name: "added"})
	again, err := Inject(Input{Pod: later, Namespace: "shop"}, testConfig())
	if err != nil || again.Injected || again.Reason != ReasonAlreadyInjected {
		t.Fatalf("reinvocation: %v %+v", err, again)
	}
}

// TestPodSecurity: iptables interception is refused where Pod Security
// enforces baseline or restricted (or a value it reads as restricted),
// with what to do instead; proxy-env is admitted everywhere.
func TestPodSecurity(t *testing.T) {
	tests := []struct {
		name    string
		labels  map[string]string
		ann     map[string]string
		manual  bool
		denied  string // the level named in the denial
		warning string
	}{
		{"restricted", map[string]string{PodSecurityEnforceLabel: "restricted"}, iptables(), false, "restricted", ""},
		{"baseline", map[string]string{PodSecurityEnforceLabel: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.30"}, iptables(), false, "baseline", ""},
		{"a level Pod Security reads as restricted", map[string]string{PodSecurityEnforceLabel: "Privileged"}, iptables(), false, "Privileged", ""},
		{"privileged", map[string]string{PodSecurityEnforceLabel: "privileged"}, iptables(), false, "", ""},
		{"no label: the cluster's default", map[string]string{"minimesh.io/inject": "enabled"}, iptables(), false, "", ""},
		{"warn only", map[string]string{"pod-security.kubernetes.io/warn": "restricted"}, iptables(), false, "", `warns at Pod Security "restricted"`},
		{"proxy-env in restricted", map[string]string{PodSecurityEnforceLabel: "restricted"}, enabled(), false, "", ""},
		{"manual cannot know", nil, iptables(), true, "", "minimesh inject cannot see the namespace's labels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Inject(Input{Pod: appPod(tt.ann), Namespace: "shop", NamespaceLabels: tt.labels, Manual: tt.manual}, testConfig())
			if tt.denied != "" {
				var d *DenyError
				if !errors.As(err, &d) || !errors.Is(err, ErrPodSecurity) {
					t.Fatalf("err = %v, want a Pod Security denial", err)
				}
				msg := err.Error()
				for _, want := range []string{
					`metadata.annotations[minimesh.io/interception]: "iptables"`,
					`namespace "shop" enforces Pod Security "` + tt.denied + `"`, "NET_ADMIN",
					"minimesh.io/interception: proxy-env", "pod-security.kubernetes.io/enforce=privileged",
				} {
					if !strings.Contains(msg, want) {
						t.Errorf("denial %q lacks %q", msg, want)
					}
				}
				return
			}
			if err != nil || !res.Injected {
				t.Fatalf("%v %+v", err, res)
			}
			if tt.warning != "" && !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, tt.warning) }) {
				t.Fatalf("warnings %q lack %q", res.Warnings, tt.warning)
			}
		})
	}
	// A pod that `minimesh inject` injected, which could not see the
	// namespace, is refused by the webhook with the same message.
	manual, err := Inject(Input{Pod: appPod(iptables()), Manual: true}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Inject(Input{Pod: manual.Pod, Namespace: "shop", NamespaceLabels: map[string]string{PodSecurityEnforceLabel: "baseline"}}, testConfig())
	if !errors.Is(err, ErrPodSecurity) {
		t.Fatalf("manually injected pod in a baseline namespace: %v", err)
	}
	if res, err := Inject(Input{Pod: manual.Pod, Namespace: "shop"}, testConfig()); err != nil || res.Injected {
		t.Fatalf("manually injected pod in an unlabelled namespace: %v %+v", err, res)
	}
	if level, bad := ForbidsNetAdmin(nil); bad || level != "" {
		t.Fatalf("ForbidsNetAdmin(nil) = %q %v", level, bad)
	}
}

// TestProxyUIDOnReinvocation: under reinvocationPolicy IfNeeded a later
// webhook may add a container, or set the pod's user, after the sidecar
// was injected. Running as the sidecar's UID, its connections would leave
// unredirected: refused as at the first admission, where the pod itself
// used to be let through because its connections are redirected. The
// sidecar's own UID, and minimesh-init's root, are not the app's.
func TestProxyUIDOnReinvocation(t *testing.T) {
	tests := []struct {
		name  string
		ann   map[string]string // of the injected pod
		later func(*corev1.Pod) // what a later webhook does
		field string            // of the denial; "" admitted
	}{
		{"nothing added", iptables(), func(*corev1.Pod) {}, ""},
		{"container as the proxy's uid", iptables(), func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "added", Image: "x",
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(wellknown.ProxyUID))}})
		}, "spec.containers[1].securityContext.runAsUser"},
		{"init container as the proxy's uid", iptables(), func(p *corev1.Pod) {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "added", Image: "x",
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(wellknown.ProxyUID))}})
		}, "spec.initContainers[2].securityContext.runAsUser"},
		{"pod as the proxy's uid", iptables(), func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr(int64(wellknown.ProxyUID))}
		}, "spec.securityContext.runAsUser"},
		// The annotation edited since: the pod's minimesh-init decides.
		{"annotation now proxy-env", iptables(), func(p *corev1.Pod) {
			p.Annotations[AnnotationInterception] = InterceptionProxyEnv
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr(int64(wellknown.ProxyUID))}
		}, "spec.containers[0].securityContext.runAsUser"},
		{"another uid", iptables(), func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "added", Image: "x",
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(1000))}})
		}, ""},
		// No rules to escape: that user is no one special.
		{"proxy-env", enabled(), func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr(int64(wellknown.ProxyUID))}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := injectedPod(t, tt.ann, testConfig())
			tt.later(p)
			res, err := Inject(Input{Pod: p, Namespace: "shop"}, testConfig())
			if tt.field == "" {
				if err != nil || len(res.Pod.Spec.InitContainers) != len(p.Spec.InitContainers) {
					t.Fatalf("err %v, %d init containers: want the pod admitted as it is", err, len(res.Pod.Spec.InitContainers))
				}
				return
			}
			var d *DenyError
			if !errors.As(err, &d) || d.Field != tt.field || d.Value != "15000" {
				t.Fatalf("err = %v, want a denial of %s: \"15000\"", err, tt.field)
			}
			if !strings.Contains(err.Error(), "would run as the minimesh sidecar's user") {
				t.Fatalf("denial %q does not say why", err)
			}
		})
	}
}

// TestNetAdminWarning: under iptables interception an app's container with
// NET_ADMIN (added, through ALL, or privileged) can flush the rules that
// send the pod's traffic through the sidecar: admitted with a warning that
// names it, at the first admission and on reinvocation. Capabilities that
// cannot change the rules (NET_RAW), a NET_ADMIN that is dropped, and
// proxy-env (no rules) earn none; nor does minimesh-init, which has it.
func TestNetAdminWarning(t *testing.T) {
	sc := func(add, drop []corev1.Capability) *corev1.SecurityContext {
		return &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: add, Drop: drop}}
	}
	caps := func(cs ...corev1.Capability) []corev1.Capability { return cs }
	tests := []struct {
		name string
		ann  map[string]string
		sc   *corev1.SecurityContext
		init bool   // on an init container of the app's
		want string // the warning; "" none
	}{
		{"NET_ADMIN", iptables(), sc(caps("NET_ADMIN"), nil), false, `spec.containers[0] (container "app") adds NET_ADMIN: it can change the pod's iptables rules`},
		{"after dropping ALL", iptables(), sc(caps("NET_ADMIN"), caps("ALL")), false, "adds NET_ADMIN"},
		{"spelled CAP_net_admin", iptables(), sc(caps("CAP_net_admin"), nil), false, "adds NET_ADMIN"},
		{"ALL", iptables(), sc(caps("ALL"), nil), false, "adds ALL capabilities"},
		{"privileged", iptables(), &corev1.SecurityContext{Privileged: ptr(true)}, false, `(container "app") is privileged`},
		{"init container", iptables(), sc(caps("NET_ADMIN"), nil), true, `spec.initContainers[0] (container "setup") adds NET_ADMIN`},
		{"NET_RAW", iptables(), sc(caps("NET_RAW", "SYS_ADMIN"), nil), false, ""},
		{"NET_ADMIN dropped", iptables(), sc(caps("NET_ADMIN"), caps("NET_ADMIN")), false, ""},
		{"ALL dropped", iptables(), sc(caps("ALL"), caps("ALL")), false, ""},
		{"not privileged", iptables(), &corev1.SecurityContext{Privileged: ptr(false)}, false, ""},
		{"proxy-env", enabled(), sc(caps("NET_ADMIN"), nil), false, ""},
	}
	warned := func(w []string, want string) bool {
		if want == "" {
			return !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, "iptables rules") })
		}
		return slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, want) })
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := appPod(tt.ann)
			c := corev1.Container{Name: "app", Image: "x", SecurityContext: tt.sc}
			if tt.init {
				pod.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "x", SecurityContext: tt.sc}}
			} else {
				pod.Spec.Containers = []corev1.Container{c}
			}
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			if err != nil || !res.Injected {
				t.Fatalf("%v %+v: a warning must not stop injection", err, res)
			}
			if !warned(res.Warnings, tt.want) {
				t.Fatalf("first admission: warnings %q, want %q", res.Warnings, tt.want)
			}
			// A later webhook adds the same container: warned on
			// reinvocation too.
			later := injectedPod(t, tt.ann, testConfig())
			c.Name = "added"
			later.Spec.Containers = append(later.Spec.Containers, c)
			res, err = Inject(Input{Pod: later, Namespace: "shop"}, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.ReplaceAll(strings.ReplaceAll(tt.want, `"app"`, `"added"`), "spec.containers[0]", "spec.containers[1]"); !tt.init && !warned(res.Warnings, want) {
				t.Fatalf("reinvocation: warnings %q, want %q", res.Warnings, want)
			}
		})
	}
}

// TestJavaToolOptions: JVMs get the proxy as system properties, after the
// app's own options; what the app sets itself wins.
func TestJavaToolOptions(t *testing.T) {
	const np = "-Dhttp.nonProxyHosts=localhost|127.*|[::1]|$(KUBERNETES_SERVICE_HOST)|kubernetes|kubernetes.default|kubernetes.default.svc|kubernetes.default.svc.cluster.local"
	ours := "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=15001 " + np
	https := " -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=15001"
	tests := []struct {
		name  string
		https bool
		own   *corev1.EnvVar
		want  string // JAVA_TOOL_OPTIONS after injection; "" for none
	}{
		{"none of its own", false, nil, ours},
		{"https asked", true, nil, ours + https},
		{"appended to the app's", false, &corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: "-Xmx512m -javaagent:/otel.jar"}, "-Xmx512m -javaagent:/otel.jar " + ours},
		{"empty of its own", false, &corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: " "}, ours},
		{"the app's proxy wins", true, &corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: "-Dhttp.proxyHost=corp -Dhttp.proxyPort=3128"}, "-Dhttp.proxyHost=corp -Dhttp.proxyPort=3128" + https},
		{"the app's https proxy wins", true, &corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: "-Dhttps.proxyHost=corp"}, "-Dhttps.proxyHost=corp " + ours},
		{"the app's nonProxyHosts wins", false, &corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", Value: "-Dhttp.nonProxyHosts=*.internal"}, "-Dhttp.nonProxyHosts=*.internal -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=15001"},
		{"valueFrom is left alone", false, &corev1.EnvVar{Name: "JAVA_TOOL_OPTIONS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ann := enabled()
			if tt.https {
				ann["minimesh.io/proxy-https"] = "enabled"
			}
			pod := appPod(ann)
			if tt.own != nil {
				pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, *tt.own)
			}
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			env := res.Pod.Spec.Containers[0].Env
			var got []corev1.EnvVar
			for _, e := range env {
				if e.Name == "JAVA_TOOL_OPTIONS" {
					got = append(got, e)
				}
			}
			if len(got) != 1 {
				t.Fatalf("%d JAVA_TOOL_OPTIONS in %v", len(got), env)
			}
			if tt.want == "" {
				if got[0].ValueFrom == nil || got[0].Value != "" {
					t.Fatalf("valueFrom changed: %+v", got[0])
				}
				return
			}
			if got[0].Value != tt.want {
				t.Fatalf("JAVA_TOOL_OPTIONS\n%q, want\n%q", got[0].Value, tt.want)
			}
			hasHTTPS := slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == "HTTPS_PROXY" })
			hasLower := slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == "https_proxy" })
			if hasHTTPS != tt.https || hasLower != tt.https {
				t.Fatalf("HTTPS_PROXY %v https_proxy %v with proxy-https %v", hasHTTPS, hasLower, tt.https)
			}
		})
	}

	// envFrom may carry JAVA_TOOL_OPTIONS: replacing it would drop the
	// app's own options, so the container gets none (and a warning).
	pod := appPod(enabled())
	pod.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "jvm"}}}}
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(res.Pod.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "JAVA_TOOL_OPTIONS" }) {
		t.Fatal("JAVA_TOOL_OPTIONS set beside envFrom")
	}

	// A container a later webhook added with its own JVM options still
	// gets ours, once.
	first, err := Inject(Input{Pod: appPod(enabled()), Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	later := first.Pod.DeepCopy()
	later.Spec.Containers = append(later.Spec.Containers, corev1.Container{Name: "agent", Env: []corev1.EnvVar{{Name: "JAVA_TOOL_OPTIONS", Value: "-Xss1m"}}})
	second, err := Inject(Input{Pod: later, Namespace: "shop"}, testConfig())
	if err != nil || !second.Injected {
		t.Fatalf("reinvocation: %v %+v", err, second)
	}
	if got := second.Pod.Spec.Containers[1].Env[0].Value; got != "-Xss1m "+ours {
		t.Fatalf("added container's JAVA_TOOL_OPTIONS %q", got)
	}
	if third, err := Inject(Input{Pod: second.Pod, Namespace: "shop"}, testConfig()); err != nil || third.Injected {
		t.Fatalf("third: %v %+v", err, third)
	}
}

func TestJavaNonProxyHosts(t *testing.T) {
	tests := []struct {
		in      []string
		want    string
		dropped []string
	}{
		{[]string{"localhost", "127.0.0.1", "::1"}, "localhost|127.*|[::1]", nil},
		{[]string{".corp.example.com", "*.svc", "*", "db.internal:5432", "[fd00::1]:80"}, "*.corp.example.com|*.svc|*|db.internal|[fd00::1]", nil},
		{[]string{"10.0.0.0/8", "192.168.1.0/24", "10.1.2.3/32", "0.0.0.0/0"}, "10.*|192.168.1.*|10.1.2.3|*", nil},
		{[]string{"172.16.0.0/12"}, "172.16.*|172.17.*|172.18.*|172.19.*|172.20.*|172.21.*|172.22.*|172.23.*|172.24.*|172.25.*|172.26.*|172.27.*|172.28.*|172.29.*|172.30.*|172.31.*", nil},
		{[]string{"10.0.0.4/30", "10.0.0.5/32"}, "10.0.0.4|10.0.0.5|10.0.0.6|10.0.0.7", nil},
		{[]string{"fd00::1/128", "fd00::/8", "10.0.0.0/8"}, "[fd00::1]|10.*", []string{"fd00::/8"}},
	}
	for _, tt := range tests {
		got, dropped, ok := javaNonProxyHosts(tt.in)
		if !ok || got != tt.want || !slices.Equal(dropped, tt.dropped) {
			t.Errorf("javaNonProxyHosts(%q) = %q %q %v, want %q %q", tt.in, got, dropped, ok, tt.want, tt.dropped)
		}
	}
	if _, _, ok := javaNonProxyHosts([]string{"0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/9", "11.0.0.0/9", "12.0.0.0/9", "13.0.0.0/9"}); ok {
		t.Error("more than 4 KiB of patterns accepted")
	}
}
