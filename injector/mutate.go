package injector

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/wellknown"
)

// Reasons of a Result.
const (
	ReasonInjected        = "injected"
	ReasonReinvoked       = "already injected; proxy environment added to containers added since"
	ReasonAlreadyInjected = "already injected"
	ReasonDisabled        = "annotation " + wellknown.AnnotationInject + ": " + wellknown.InjectDisabled
	ReasonHostNetwork     = "hostNetwork pod"
	ReasonNotLinux        = "pod for nodes other than Linux"
	ReasonNotOptedIn      = "not opted in"
	ReasonIgnoredNS       = "namespace is never injected"
)

// policyMountPath is where the sidecar reads the policy ConfigMap.
const policyMountPath = "/etc/minimesh/policies"

const (
	policyVolume  = "minimesh-policies"
	adminPortName = "minimesh-admin"
	// initContainerName runs `minimesh-proxy init` under iptables
	// interception, before the sidecar.
	initContainerName = "minimesh-init"
	// xtablesVolume is a writable /run for the init container, whose root
	// file system is read-only: iptables takes its lock in
	// /run/xtables.lock.
	xtablesVolume = "minimesh-xtables-lock"
	// proxyBinary is the command of the sidecar and of the init
	// container: the image holds two binaries and has no ENTRYPOINT.
	proxyBinary = "/minimesh-proxy"
)

// maxContainers bounds the containers (app and init) of a pod the injector
// rewrites. Every app container gets the proxy environment and every init
// container moves down one place, so the pod and the webhook's JSON patch
// grow with them: 10,000 containers made a 5 MB patch and 165 MB of
// allocations for one admission. No real pod comes near.
const maxContainers = 100

func inject(in Input, cfg *Config) (Result, error) {
	pod := in.Pod
	ns := in.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	skip := func(reason string, warnings ...string) (Result, error) {
		return Result{Pod: pod, Reason: reason, Warnings: warnings}, nil
	}

	switch v, ok := pod.Annotations[wellknown.AnnotationInject]; {
	case v == wellknown.InjectDisabled:
		return skip(ReasonDisabled)
	case ok && v != wellknown.InjectEnabled:
		return Result{}, deny(wellknown.AnnotationInject, v, "want enabled or disabled")
	}
	if IsInjected(pod) {
		return reinject(in, ns, cfg)
	}
	if slices.Contains(cfg.IgnoredNamespaces, ns) {
		return skip(ReasonIgnoredNS)
	}
	asked := pod.Annotations[wellknown.AnnotationInject] == wellknown.InjectEnabled ||
		in.NamespaceLabels[wellknown.AnnotationInject] == wellknown.InjectEnabled || in.Manual
	if !asked {
		return skip(ReasonNotOptedIn)
	}
	if pod.Spec.HostNetwork {
		// The sidecar's ports would be the node's: never inject, but tell
		// whoever asked for it.
		return skip(ReasonHostNetwork, "minimesh: hostNetwork pods are never injected: the sidecar's ports would be the node's")
	}
	if field, value := notForLinux(pod); field != "" {
		// The sidecar is a Linux container: the API server refuses it in
		// a pod with spec.os.name windows (with a message about a
		// container the user never wrote), and on a Windows node it
		// never starts, so neither would the app.
		return skip(ReasonNotLinux, fmt.Sprintf("minimesh: pods for nodes other than Linux are never injected (%s: %s): the sidecar is a Linux container",
			field, quote(value)))
	}

	s, err := parseSettings(pod.Annotations, cfg)
	if err != nil {
		return Result{}, err
	}
	if err := checkContainers(pod); err != nil {
		return Result{}, err
	}
	if err := checkClashes(pod, cfg, s); err != nil {
		return Result{}, err
	}
	if err := checkPodSecurity(in, ns, s); err != nil {
		return Result{}, err
	}
	if err := checkProxyUID(pod, s); err != nil {
		return Result{}, err
	}
	s.warnings = append(s.warnings, netAdminWarnings(pod, s)...)

	if pod.Annotations[wellknown.AnnotationStatus] == wellknown.StatusInjected {
		// Copied from an injected pod's manifest without its sidecar
		// (IsInjected asks the containers, not this annotation): the pod
		// is injected now, and the annotation is true again.
		s.warnf("%s: %s without minimesh's sidecar (copied from another manifest?): injected now",
			"metadata.annotations["+wellknown.AnnotationStatus+"]", quote(wellknown.StatusInjected))
	}

	out := pod.DeepCopy()
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[wellknown.AnnotationStatus] = wellknown.StatusInjected
	if in.Manual {
		out.Annotations[wellknown.AnnotationInject] = wellknown.InjectEnabled
	}
	service := s.serviceName
	if service == "" {
		service = serviceName(pod, in.WorkloadName)
	}
	// The init container first: the rules are in place before the
	// sidecar and the app's own init containers make a connection.
	inits := []corev1.Container{sidecar(cfg, s, service)}
	if s.iptables {
		inits = append([]corev1.Container{initContainer(cfg, s)}, inits...)
	}
	out.Spec.InitContainers = append(inits, out.Spec.InitContainers...)
	out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
		Name: policyVolume,
		VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: cfg.PolicyConfigMap},
			Optional:             ptr(true),
		}},
	})
	if s.iptables {
		out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
			Name: xtablesVolume,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
				Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resource.MustParse("1Mi")),
			}},
		})
	}
	for _, c := range proxied(out, len(inits)) {
		s.warnings = append(s.warnings, addProxyEnv(c, cfg, s)...)
	}
	warnTCPProbes(pod, s)
	return Result{Pod: out, Injected: true, Reason: ReasonInjected, Warnings: capWarnings(s.warnings)}, nil
}

// osLabels are the node labels that name a node's OS: the kubelet sets
// both, and older manifests select on the beta one.
var osLabels = []string{corev1.LabelOSStable, "beta.kubernetes.io/os"}

// notForLinux names what keeps pod off Linux nodes, the field and its
// value: spec.os.name, a nodeSelector on the OS label, or a required node
// affinity none of whose terms admits a Linux node. "" when the pod may
// run on Linux. The webhook decodes these fields of a pod too large to
// decode whole (webhook.podHead), so that such a pod is skipped too.
func notForLinux(pod *corev1.Pod) (field, value string) {
	if o := pod.Spec.OS; o != nil && o.Name != "" && o.Name != corev1.Linux {
		return "spec.os.name", string(o.Name)
	}
	for _, l := range osLabels {
		if v, ok := pod.Spec.NodeSelector[l]; ok && v != string(corev1.Linux) {
			return "spec.nodeSelector[" + l + "]", v
		}
	}
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return "", ""
	}
	// The terms are ORed, the expressions of a term ANDed: the pod is
	// kept off Linux only if every term has an expression on the OS label
	// that no Linux node matches. (No term at all matches no node: the
	// API server refuses that pod, and the loop names no field.)
	for i, t := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		j := slices.IndexFunc(t.MatchExpressions, func(e corev1.NodeSelectorRequirement) bool {
			return slices.Contains(osLabels, e.Key) && !matchesLinux(e)
		})
		if j < 0 {
			return "", ""
		}
		if i == 0 {
			e := t.MatchExpressions[j]
			field = fmt.Sprintf("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[%d]", j)
			value = e.Key + " " + string(e.Operator)
			if len(e.Values) > 0 {
				value += " [" + strings.Join(e.Values, ", ") + "]"
			}
		}
	}
	return field, value
}

// matchesLinux reports whether a node labelled linux meets e, an
// expression on an OS label (every node has one).
func matchesLinux(e corev1.NodeSelectorRequirement) bool {
	switch e.Operator {
	case corev1.NodeSelectorOpIn:
		return slices.Contains(e.Values, string(corev1.Linux))
	case corev1.NodeSelectorOpNotIn:
		return !slices.Contains(e.Values, string(corev1.Linux))
	case corev1.NodeSelectorOpExists:
		return true
	}
	// DoesNotExist, and Gt and Lt, which compare integers.
	return false
}

// addProxyEnv gives an app container the proxy-env variables: nothing
// under iptables interception, which redirects every connection anyway
// (HTTP_PROXY would only add a second way in).
func addProxyEnv(c *corev1.Container, cfg *Config, s *settings) []string {
	if s.iptables {
		return nil
	}
	w := addEnv(c, proxyEnv(cfg, s))
	return append(w, addJavaOptions(c, javaProperties(cfg, s, s.javaNonProxy))...)
}

// reinject handles an injected pod seen again: under reinvocationPolicy
// IfNeeded the webhook runs once more after later webhooks changed the pod,
// and a container one of them added must still send its HTTP through the
// sidecar. Nothing else is touched, so calling it twice changes nothing.
// The caller has checked that the sidecar is there (IsInjected): the proxy
// environment is only ever given to a pod with something listening on it.
func reinject(in Input, ns string, cfg *Config) (Result, error) {
	pod := in.Pod
	s, err := parseSettings(pod.Annotations, cfg)
	if err == nil {
		err = checkContainers(pod)
	}
	if err != nil {
		// Admitted once with these annotations and containers; they
		// cannot have turned bad, unless someone edited them since,
		// which is not ours to refuse.
		return Result{Pod: pod, Reason: ReasonAlreadyInjected}, nil
	}
	// Whether the pod's connections are redirected is what the injector
	// wrote into the pod, minimesh-init, not the interception annotation,
	// which may have been edited since the pod was injected.
	redirected := slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return isInitContainer(&c) })
	if s.iptables && !in.Manual && redirected {
		// Injected by `minimesh inject`, which could not see the
		// namespace: Pod Security would refuse the init container next,
		// with a message about a container the user never wrote. (A pod
		// this webhook injected was checked then, in this namespace.)
		if err := checkPodSecurity(in, ns, s); err != nil {
			return Result{}, err
		}
	}
	if redirected {
		// Every container's connections are redirected, whoever added it,
		// except a container's that runs as the sidecar's user, refused
		// here as at the first admission, and one that can change the
		// rules, warned about as then.
		s.iptables = true // what the pod has, whatever the annotation says now
		if err := checkProxyUID(pod, s); err != nil {
			return Result{}, err
		}
		return Result{Pod: pod, Reason: ReasonAlreadyInjected, Warnings: capWarnings(netAdminWarnings(pod, s))}, nil
	}
	// HTTP_PROXY names the port the pod's sidecar listens on, which the
	// injector's config may have changed since it was injected.
	if port, ok := outboundPort(&pod.Spec.InitContainers[sidecarIndex(pod)]); ok && port != cfg.Proxy.OutboundPort {
		c := *cfg
		c.Proxy.OutboundPort = port
		cfg = &c
	}
	s.iptables = false // proxy-env, whatever the annotation says now
	// A container that has any of the variables was seen before (the
	// app's own win); JAVA_TOOL_OPTIONS is no sign, an app may set it.
	env := proxyEnv(cfg, s)
	lacks := func(c *corev1.Container) bool { return !hasAnyEnv(c, env) }
	if !slices.ContainsFunc(proxied(pod, sidecarIndex(pod)+1), lacks) {
		return Result{Pod: pod, Reason: ReasonAlreadyInjected}, nil
	}
	out := pod.DeepCopy()
	for _, c := range proxied(out, sidecarIndex(out)+1) {
		if lacks(c) {
			addProxyEnv(c, cfg, s)
		}
	}
	return Result{Pod: out, Injected: true, Reason: ReasonReinvoked}, nil
}

// proxied are the containers of pod that get the proxy environment: the
// init containers from index first on, those after minimesh's sidecar,
// then the app's. The kubelet starts the init container after a native
// sidecar only once the sidecar's startup probe has passed, so these run
// while the proxy is ready, as the app does: a migration, the app's own
// native sidecars. Without the variables their HTTP bypassed the sidecar
// unseen (under iptables the rules redirect them anyway). The init
// containers before the sidecar run before the proxy exists: nothing.
func proxied(pod *corev1.Pod, first int) []*corev1.Container {
	cs := make([]*corev1.Container, 0, len(pod.Spec.InitContainers)-first+len(pod.Spec.Containers))
	for i := first; i < len(pod.Spec.InitContainers); i++ {
		cs = append(cs, &pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		cs = append(cs, &pod.Spec.Containers[i])
	}
	return cs
}

// outboundPort is the port of the sidecar's --outbound-addr argument,
// which the injector always writes; false when it is missing or not an
// address.
func outboundPort(c *corev1.Container) (int, bool) {
	for _, a := range c.Args {
		v, ok := strings.CutPrefix(a, "--outbound-addr=")
		if !ok {
			continue
		}
		_, p, err := net.SplitHostPort(v)
		if err != nil {
			return 0, false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// checkContainers refuses a pod with more than maxContainers containers.
func checkContainers(pod *corev1.Pod) error {
	if n := len(pod.Spec.Containers) + len(pod.Spec.InitContainers); n > maxContainers {
		return &DenyError{Field: "spec.containers", Value: strconv.Itoa(n),
			Reason: fmt.Sprintf("containers and init containers, more than the %d minimesh injects; annotate the pod %s: %s",
				maxContainers, wellknown.AnnotationInject, wellknown.InjectDisabled)}
	}
	return nil
}

// checkClashes refuses a pod whose containers already use the sidecar's
// ports or names: injected anyway, one of the two would fail to start, far
// from this cause.
func checkClashes(pod *corev1.Pod, cfg *Config, s *settings) error {
	check := func(field string, cs []corev1.Container) error {
		for i, c := range cs {
			if c.Name == wellknown.ProxyContainerName {
				// Not minimesh's sidecar (IsInjected said so), and the pod
				// would get a second container of that name, which the
				// API server refuses with a message about a container the
				// user never wrote. Skipping it instead would leave a pod
				// that asked for the mesh without it, silently.
				return &DenyError{Field: fmt.Sprintf("%s[%d].name", field, i), Value: c.Name, Reason: fmt.Sprintf(
					"the name of the minimesh sidecar, which this container (image %s) is not (the sidecar is an init container with restartPolicy: Always running %s run); "+
						"injecting would give the pod two containers of that name: rename the container, or annotate the pod %s: %s",
					quote(c.Image), proxyBinary, wellknown.AnnotationInject, wellknown.InjectDisabled)}
			}
			if s.iptables && c.Name == initContainerName {
				return &DenyError{Field: fmt.Sprintf("%s[%d].name", field, i), Value: c.Name, Reason: "the name of the minimesh init container of iptables interception"}
			}
			for j, p := range c.Ports {
				f := fmt.Sprintf("%s[%d].ports[%d]", field, i, j)
				// The sidecar listens on TCP alone, and a UDP or SCTP port
				// of the same number is another port: no clash.
				tcp := p.Protocol == "" || p.Protocol == corev1.ProtocolTCP
				switch {
				case tcp && int(p.ContainerPort) == cfg.Proxy.AdminPort:
					return &DenyError{Field: f + ".containerPort", Value: strconv.Itoa(int(p.ContainerPort)),
						Reason: "the minimesh sidecar's admin port; move the app or set proxy.adminPort in the injector's config"}
				case tcp && int(p.ContainerPort) == cfg.Proxy.OutboundPort:
					return &DenyError{Field: f + ".containerPort", Value: strconv.Itoa(int(p.ContainerPort)),
						Reason: "the minimesh sidecar's outbound port; move the app or set proxy.outboundPort in the injector's config"}
				case tcp && s.captureInbound && int(p.ContainerPort) == cfg.Proxy.InboundPort:
					return &DenyError{Field: f + ".containerPort", Value: strconv.Itoa(int(p.ContainerPort)),
						Reason: "the minimesh sidecar's inbound port under " + annCaptureInbound + "; move the app or set proxy.inboundPort in the injector's config"}
				case p.Name == adminPortName:
					return &DenyError{Field: f + ".name", Value: p.Name, Reason: "the name of the minimesh sidecar's port"}
				}
			}
		}
		return nil
	}
	if err := check("spec.initContainers", pod.Spec.InitContainers); err != nil {
		return err
	}
	if err := check("spec.containers", pod.Spec.Containers); err != nil {
		return err
	}
	for i, v := range pod.Spec.Volumes {
		if v.Name == policyVolume {
			return &DenyError{Field: fmt.Sprintf("spec.volumes[%d].name", i), Value: v.Name, Reason: "the name of the minimesh sidecar's policy volume"}
		}
		if s.iptables && v.Name == xtablesVolume {
			return &DenyError{Field: fmt.Sprintf("spec.volumes[%d].name", i), Value: v.Name, Reason: "the name of the minimesh init container's volume"}
		}
	}
	return nil
}

// sidecar is the proxy as a native sidecar: an init container that keeps
// running (restartPolicy Always), so it starts before the app containers,
// stops after them and does not keep a Job from completing; its startup
// probe holds the app back until the proxy answers /ready.
func sidecar(cfg *Config, s *settings, service string) corev1.Container {
	p := &cfg.Proxy
	args := []string{
		"run",
		"--outbound-addr=127.0.0.1:" + strconv.Itoa(p.OutboundPort),
		"--admin-addr=:" + strconv.Itoa(p.AdminPort),
		"--policy-dir=" + policyMountPath,
		"--log-level=" + s.logLevel,
	}
	if s.captureInbound {
		args = append(args, "--inbound-addr=:"+strconv.Itoa(p.InboundPort))
	}
	if service != "" {
		args = append(args, "--service-name="+service)
	}
	if cfg.XDSAddress != "" {
		args = append(args, "--xds-address="+cfg.XDSAddress)
	}
	if cfg.OTLPEndpoint != "" {
		args = append(args, "--otlp-endpoint="+cfg.OTLPEndpoint)
	}
	if r := cfg.TraceSampleRatio; r != nil {
		args = append(args, "--trace-sample-ratio="+strconv.FormatFloat(*r, 'g', -1, 64))
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString(adminPortName),
			}},
			PeriodSeconds: period, FailureThreshold: failures, TimeoutSeconds: 1,
		}
	}
	res := corev1.ResourceRequirements{}
	setQ := func(l *corev1.ResourceList, name corev1.ResourceName, q *resource.Quantity) {
		if q != nil {
			if *l == nil {
				*l = corev1.ResourceList{}
			}
			(*l)[name] = *q
		}
	}
	setQ(&res.Requests, corev1.ResourceCPU, s.cpuRequest)
	setQ(&res.Requests, corev1.ResourceMemory, s.memoryRequest)
	setQ(&res.Limits, corev1.ResourceCPU, s.cpuLimit)
	setQ(&res.Limits, corev1.ResourceMemory, s.memoryLimit)

	env := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	env = append(env, RuntimeEnv(s.cpuRequest, s.cpuLimit)...)
	if s.iptables && s.opaqueSet {
		// --opaque-ports, read from the environment as every flag of
		// minimesh-proxy run can be; it replaces the sidecar's default
		// list, and empty means none.
		env = append(env, corev1.EnvVar{Name: wellknown.EnvPrefix + "OPAQUE_PORTS", Value: strings.Join(s.opaquePorts, ",")})
	}
	// Under iptables interception the sidecar runs as the one user whose
	// connections the rules let out unredirected: its own upstream
	// connections would otherwise loop back into it.
	uid := p.UID
	if s.iptables {
		uid = wellknown.ProxyUID
	}

	return corev1.Container{
		Name:            wellknown.ProxyContainerName,
		Image:           p.Image,
		ImagePullPolicy: corev1.PullPolicy(p.ImagePullPolicy),
		// The image has no ENTRYPOINT: it holds two binaries.
		Command: []string{proxyBinary},
		Args:    args,
		Env:     env,
		Ports: []corev1.ContainerPort{{
			Name: adminPortName, ContainerPort: int32(p.AdminPort), Protocol: corev1.ProtocolTCP,
		}},
		Resources:     res,
		RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways),
		// Up to two minutes to start; then liveness takes over.
		StartupProbe:   probe("/ready", 1, 120),
		ReadinessProbe: probe("/ready", 5, 2),
		LivenessProbe:  probe("/live", 10, 3),
		VolumeMounts: []corev1.VolumeMount{{
			Name: policyVolume, MountPath: policyMountPath, ReadOnly: true,
		}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(uid),
			RunAsGroup:               ptr(uid),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// The init container's resources: it writes a few dozen rules and exits.
// Bounded so that it never sizes the pod (the largest init container's
// request counts) and a runaway cannot take the node's memory.
var (
	initCPURequest    = resource.MustParse("10m")
	initMemoryRequest = resource.MustParse("16Mi")
	initCPULimit      = resource.MustParse("100m")
	initMemoryLimit   = resource.MustParse("64Mi")
)

// initContainer runs `minimesh-proxy init` under iptables interception:
// the rules that redirect the pod's TCP to the sidecar, in the pod's
// network namespace, before any other container starts. It is the only
// privileged part of minimesh: root with NET_ADMIN and NET_RAW (to write
// the rules) and nothing else. It exits, so its privileges end before the
// app starts; a failure keeps the pod from starting, never half-redirected.
func initContainer(cfg *Config, s *settings) corev1.Container {
	p := &cfg.Proxy
	args := []string{
		"init",
		"--proxy-uid=" + strconv.Itoa(wellknown.ProxyUID),
		"--outbound-port=" + strconv.Itoa(p.OutboundPort),
	}
	if s.captureInbound {
		// The admin port is never redirected: the kubelet's probes and
		// Prometheus reach the sidecar itself. Named as the admin port,
		// not as a skipped one: init would otherwise skip 15020 as well,
		// and an app that moved the sidecar off 15020 to use that port
		// would be reached there around the sidecar.
		args = append(args, "--capture-inbound", "--inbound-port="+strconv.Itoa(p.InboundPort),
			"--admin-port="+strconv.Itoa(p.AdminPort))
		var skip []string
		for _, v := range s.skipInboundPorts {
			if !slices.Contains(skip, v) {
				skip = append(skip, v)
			}
		}
		if len(skip) > 0 {
			args = append(args, "--skip-inbound-ports="+strings.Join(skip, ","))
		}
	}
	if len(s.skipOutboundPorts) > 0 {
		args = append(args, "--skip-outbound-ports="+strings.Join(s.skipOutboundPorts, ","))
	}
	if len(s.skipCIDRs) > 0 {
		args = append(args, "--skip-outbound-cidrs="+strings.Join(s.skipCIDRs, ","))
	}
	return corev1.Container{
		Name:            initContainerName,
		Image:           p.InitImageRef(),
		ImagePullPolicy: corev1.PullPolicy(p.ImagePullPolicy),
		Command:         []string{proxyBinary},
		Args:            args,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: initCPURequest, corev1.ResourceMemory: initMemoryRequest},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: initCPULimit, corev1.ResourceMemory: initMemoryLimit},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: xtablesVolume, MountPath: "/run"}},
		SecurityContext: &corev1.SecurityContext{
			// iptables needs root and the two capabilities in the pod's
			// own network namespace; nothing else.
			RunAsUser:                ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// RuntimeEnv is the Go runtime's settings the sidecar gets for its CPU
// request and limit (nil: none). The benchmark harness measures the
// sidecar with them (e2e/bench).
func RuntimeEnv(cpuRequest, cpuLimit *resource.Quantity) []corev1.EnvVar {
	var env []corev1.EnvVar
	if p := gomaxprocs(cpuRequest, cpuLimit); p > 0 {
		env = append(env, corev1.EnvVar{Name: "GOMAXPROCS", Value: strconv.FormatInt(p, 10)})
	}
	// GOGC=50: the sidecar's live heap is under 1 MB, so with Go's
	// default the heap goal is its 4 MB floor, most of it garbage; 50
	// halves the floor. Measured at 1,000 requests/s: 2 MB less at the
	// peak (18.1 -> 15.9 MB) for a collection every 150 ms instead of
	// 420 ms at 0.6 ms of CPU each, about 3 ms per 1,000 requests
	// (docs/benchmarks.md, "Memory at idle and under load").
	env = append(env, corev1.EnvVar{Name: "GOGC", Value: "50"})
	return env
}

// gomaxprocs is the GOMAXPROCS the sidecar gets, 0 for Go's own choice.
// Go (1.25 and later) sizes GOMAXPROCS from the container's CPU limit,
// cgroup v1 and v2 alike, and follows the limit if it changes, but
// rounds a limit under 2 cores up to 2 (runtime.adjustCgroupGOMAXPROCS):
// under the default limit of one core the sidecar would run two Ps and
// be throttled. One P cut its CPU per request by 28 % and its p99
// (docs/benchmarks.md, "One core"), so a limit of at most one core gets
// 1. Above one core Go's choice stands. Without a limit Go would take
// every core of the node, and each P costs memory and CPU whatever the
// traffic (docs/benchmarks.md, "Without a CPU limit": at 1,000
// requests/s 1.7 MB more at the peak with 16 Ps, 2.2 MB with 32, and
// 9-31 % more CPU): the sidecar gets its request's cores instead,
// rounded up, at least one, as Linkerd's proxy runs one worker unless
// given more. (With the env set Go no longer follows the limit: a limit
// changed in place leaves the Ps as injected.)
func gomaxprocs(cpuRequest, cpuLimit *resource.Quantity) int64 {
	switch {
	case cpuLimit != nil && cpuLimit.MilliValue() <= 1000:
		return 1
	case cpuLimit != nil:
		return 0
	case cpuRequest == nil:
		return 1
	}
	return max(1, (cpuRequest.MilliValue()+999)/1000)
}

// proxyEnv is what each app container gets in proxy-env interception.
// NO_PROXY keeps loopback and the API server direct (client-go speaks
// HTTPS, which HTTP_PROXY does not cover, but other clients may not);
// cluster services stay proxied. KUBERNETES_SERVICE_HOST is expanded by
// the kubelet, which sets it in every container.
func proxyEnv(cfg *Config, s *settings) []corev1.EnvVar {
	proxy := "http://127.0.0.1:" + strconv.Itoa(cfg.Proxy.OutboundPort)
	np := strings.Join(noProxy(cfg.NoProxy, s.skipCIDRs), ",")
	// Both spellings: curl reads only the lower-case http_proxy, others
	// only the upper case; NO_PROXY likewise. Each pair is one setting
	// (addEnv), adjacent here so that the pod keeps this order.
	env := []corev1.EnvVar{
		{Name: "HTTP_PROXY", Value: proxy},
		{Name: "http_proxy", Value: proxy},
	}
	if s.proxyHTTPS {
		// Still an http:// URL: the client sends CONNECT to the sidecar,
		// which tunnels the TLS it cannot read.
		env = append(env,
			corev1.EnvVar{Name: "HTTPS_PROXY", Value: proxy},
			corev1.EnvVar{Name: "https_proxy", Value: proxy})
	}
	return append(env,
		corev1.EnvVar{Name: "NO_PROXY", Value: np},
		corev1.EnvVar{Name: "no_proxy", Value: np})
}

// noProxy is what the apps reach directly: loopback, the API server, then
// the config's list and the pod's skip-outbound-cidrs.
func noProxy(cfgNoProxy, skipCIDRs []string) []string {
	np := []string{
		"localhost", "127.0.0.1", "::1", "$(KUBERNETES_SERVICE_HOST)",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
	}
	np = append(np, cfgNoProxy...)
	return append(np, skipCIDRs...)
}

// addEnv appends env to c, except the settings c has itself: the app's own
// value wins, and a warning says that its traffic then bypasses (or is
// routed differently by) the sidecar. The spellings of a proxy variable
// (HTTP_PROXY and http_proxy, NO_PROXY and no_proxy) are one setting:
// curl reads only http_proxy, Python's urllib prefers the lower case, Go
// the upper, so an app that sets one spelling and gets minimesh's other
// would have its own value win in some clients and not in others. An app
// that sets either spelling gets neither of minimesh's. Variables from
// envFrom cannot be seen here; env wins over them, so minimesh's do
// (docs/annotations.md, "Warnings").
func addEnv(c *corev1.Container, env []corev1.EnvVar) []string {
	own := c.Env // the app's, before any of minimesh's is appended
	var warnings []string
	for i, e := range env {
		if slices.ContainsFunc(env[:i], func(x corev1.EnvVar) bool { return sameSetting(x.Name, e.Name) }) {
			continue // another spelling of a setting already handled
		}
		var set []string
		n := 0
		for _, x := range own {
			if !sameSetting(x.Name, e.Name) {
				continue
			}
			// Two spellings are what clients read; more only lengthen
			// the warning.
			if n++; n > 2 {
				continue
			}
			v := x.Value
			if x.ValueFrom != nil {
				v = "(valueFrom)"
			}
			set = append(set, x.Name+"="+echo.Clip(v))
		}
		if n > 2 {
			set = append(set, fmt.Sprintf("%d more spellings", n-2))
		}
		var ours []corev1.EnvVar
		var names []string
		for _, x := range env[i:] {
			if sameSetting(x.Name, e.Name) {
				ours = append(ours, x)
				names = append(names, x.Name)
			}
		}
		if len(set) > 0 {
			warnings = append(warnings, fmt.Sprintf("minimesh: container %s sets %s itself; its value wins over minimesh's %s, so minimesh sets neither %s",
				quote(c.Name), strings.Join(set, " and "), echo.Clip(e.Value), strings.Join(names, " nor ")))
			continue
		}
		c.Env = append(c.Env, ours...)
	}
	return warnings
}

// sameSetting reports whether two variable names are spellings of one
// setting: the same name in any case, as Python's urllib reads proxy
// variables.
func sameSetting(a, b string) bool { return strings.EqualFold(a, b) }

// hasAnyEnv reports whether c has any of env's settings, in any spelling.
func hasAnyEnv(c *corev1.Container, env []corev1.EnvVar) bool {
	for _, e := range env {
		if slices.ContainsFunc(c.Env, func(x corev1.EnvVar) bool { return sameSetting(x.Name, e.Name) }) {
			return true
		}
	}
	return false
}

// jobSuffix is the scheduled time a CronJob appends to its Jobs' names.
var jobSuffix = regexp.MustCompile(`-[0-9]{6,}$`)

// serviceName names the workload in spans and metrics when no annotation
// does: the well-known labels, else the owner (a Deployment's ReplicaSet
// without its template hash, a CronJob's Job without its time), else the
// workload given, else the pod's name prefix or name.
func serviceName(pod *corev1.Pod, workload string) string {
	if v := pod.Labels["app.kubernetes.io/name"]; v != "" {
		return v
	}
	if v := pod.Labels["app"]; v != "" {
		return v
	}
	for _, o := range pod.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		name := o.Name
		switch o.Kind {
		case "ReplicaSet":
			if h := pod.Labels["pod-template-hash"]; h != "" {
				name = strings.TrimSuffix(name, "-"+h)
			}
		case "Job":
			name = jobSuffix.ReplaceAllString(name, "")
		}
		return name
	}
	if workload != "" {
		return workload
	}
	if pod.GenerateName != "" {
		return strings.TrimRight(pod.GenerateName, "-")
	}
	return pod.Name
}

func ptr[T any](v T) *T { return &v }

// quote is how denials and warnings repeat a value of the pod: quoted and
// capped, so that a megabyte of annotation is not echoed back whole.
func quote(s string) string { return echo.Quote(s) }
