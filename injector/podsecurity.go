package injector

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/minimesh/minimesh/wellknown"
)

// The labels by which a namespace chooses its Pod Security level
// (https://kubernetes.io/docs/concepts/security/pod-security-admission/).
const (
	PodSecurityEnforceLabel = "pod-security.kubernetes.io/enforce"
	podSecurityWarnLabel    = "pod-security.kubernetes.io/warn"
	podSecurityPrivileged   = "privileged"
	podSecurityBaseline     = "baseline"
	podSecurityRestricted   = "restricted"
)

// ErrPodSecurity is the cause of a denial of iptables interception in a
// namespace whose Pod Security level forbids the init container's
// capabilities: errors.Is(err, ErrPodSecurity).
var ErrPodSecurity = errors.New("iptables interception forbidden by Pod Security")

// ForbidsNetAdmin reports whether a namespace with these labels refuses a
// pod with the NET_ADMIN and NET_RAW capabilities, and the level it
// enforces: baseline and restricted both refuse them (in every version of
// the policy). A value Pod Security cannot parse counts as restricted, as
// Pod Security itself reads it. A namespace without the label follows the
// cluster's default, privileged unless the API server's admission
// configuration says otherwise, which no label shows.
func ForbidsNetAdmin(nsLabels map[string]string) (level string, forbidden bool) {
	return forbidsAt(nsLabels, PodSecurityEnforceLabel)
}

func forbidsAt(nsLabels map[string]string, label string) (string, bool) {
	v, ok := nsLabels[label]
	if !ok || v == podSecurityPrivileged {
		return v, false
	}
	return v, true
}

// checkPodSecurity refuses iptables interception where the namespace's
// Pod Security level would refuse the init container anyway: Pod Security
// admission runs after the webhooks, and its message would be about a
// container the user never wrote. The namespace's labels are known to the
// webhook only; `minimesh inject` is told to warn instead.
func checkPodSecurity(in Input, ns string, s *settings) error {
	if !s.iptables {
		return nil
	}
	if in.Manual {
		s.warnf("%s: %s adds an init container with NET_ADMIN and NET_RAW, which a namespace that enforces Pod Security %s or %s refuses; minimesh inject cannot see the namespace's labels (the webhook checks them)",
			AnnotationInterception, InterceptionIPTables, podSecurityBaseline, podSecurityRestricted)
		return nil
	}
	if level, bad := ForbidsNetAdmin(in.NamespaceLabels); bad {
		d := deny(AnnotationInterception, InterceptionIPTables, fmt.Sprintf(
			"namespace %s enforces Pod Security %s (label %s), which forbids the NET_ADMIN and NET_RAW capabilities that the iptables init container needs; "+
				"use %s: %s (no privileges), or label the namespace %s=%s if its pods may have them",
			quote(ns), quote(level), PodSecurityEnforceLabel, AnnotationInterception, InterceptionProxyEnv, PodSecurityEnforceLabel, podSecurityPrivileged))
		d.cause = ErrPodSecurity
		return d
	}
	if level, bad := forbidsAt(in.NamespaceLabels, podSecurityWarnLabel); bad {
		s.warnf("namespace %s warns at Pod Security %s (label %s): the iptables init container's NET_ADMIN and NET_RAW will be reported", quote(ns), quote(level), podSecurityWarnLabel)
	}
	return nil
}

// checkProxyUID refuses, under iptables interception, a container that
// runs as the sidecar's UID: the rules let that user's connections out
// unredirected, so its traffic would silently bypass the sidecar. A
// warning would reach only whoever created the pod, which for a
// Deployment is the ReplicaSet controller: nobody would read it. A UID
// that only the image sets (USER 15000) is not visible here. It runs at
// the first admission and again on reinvocation, where a later webhook
// may have added such a container (or set the pod's runAsUser).
func checkProxyUID(pod *corev1.Pod, s *settings) error {
	if !s.iptables {
		return nil
	}
	var podUID *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		podUID = sc.RunAsUser
	}
	check := func(field string, cs []corev1.Container) error {
		for i := range cs {
			if isOwn(&cs[i]) {
				// On reinvocation: minimesh's sidecar runs as that user
				// on purpose.
				continue
			}
			uid, f := podUID, "spec.securityContext.runAsUser"
			if sc := cs[i].SecurityContext; sc != nil && sc.RunAsUser != nil {
				uid, f = sc.RunAsUser, fmt.Sprintf("%s[%d].securityContext.runAsUser", field, i)
			}
			if uid != nil && *uid == wellknown.ProxyUID {
				return &DenyError{Field: f, Value: strconv.FormatInt(*uid, 10), Reason: fmt.Sprintf(
					"container %s would run as the minimesh sidecar's user, whose connections iptables interception does not redirect: its traffic would bypass the sidecar; run it as another user, or use %s: %s",
					quote(cs[i].Name), AnnotationInterception, InterceptionProxyEnv)}
			}
		}
		return nil
	}
	if err := check("spec.initContainers", pod.Spec.InitContainers); err != nil {
		return err
	}
	return check("spec.containers", pod.Spec.Containers)
}

// netAdminWarnings are, under iptables interception, a warning for each
// container of the app's that can change the pod's iptables rules: one
// with NET_ADMIN, or privileged. It can delete the redirection and send
// the whole pod's traffic past the sidecar; the UID the rules exempt is
// not the only way out. NET_ADMIN is the capability that matters: with
// every capability but NET_ADMIN (NET_RAW and SYS_ADMIN included) root
// cannot change a network namespace's rules (measured with capsh and
// iptables 1.8.9). A warning, not a refusal: a VPN client or a network
// tool needs the capability for its own work, and whether a namespace
// allows it is Pod Security's decision (baseline forbids it); the
// interception is there for resilience and telemetry, not as a wall
// against the pod's own containers.
func netAdminWarnings(pod *corev1.Pod, s *settings) []string {
	if !s.iptables {
		return nil
	}
	var w []string
	check := func(field string, cs []corev1.Container) {
		for i := range cs {
			c := &cs[i]
			if isOwn(c) {
				continue // minimesh-init, which writes the rules
			}
			if what := netAdmin(c.SecurityContext); what != "" {
				w = append(w, fmt.Sprintf("minimesh: %s[%d] (container %s) %s: it can change the pod's iptables rules and so send the pod's traffic past the sidecar",
					field, i, quote(c.Name), what))
			}
		}
	}
	check("spec.initContainers", pod.Spec.InitContainers)
	check("spec.containers", pod.Spec.Containers)
	return w
}

// netAdmin says how a container with this security context holds
// NET_ADMIN ("is privileged", "adds NET_ADMIN"), "" when it does not. The
// runtimes (containerd, CRI-O) start from their default set, which lacks
// NET_ADMIN, take all capabilities for an added ALL, none for a dropped
// ALL, then add the named ones and drop the named ones, in that order.
func netAdmin(sc *corev1.SecurityContext) string {
	if sc == nil {
		return ""
	}
	if sc.Privileged != nil && *sc.Privileged {
		return "is privileged"
	}
	if sc.Capabilities == nil {
		return ""
	}
	has := func(cs []corev1.Capability, name string) bool {
		return slices.ContainsFunc(cs, func(c corev1.Capability) bool {
			v := strings.ToUpper(string(c))
			return strings.TrimPrefix(v, "CAP_") == name
		})
	}
	add, drop := sc.Capabilities.Add, sc.Capabilities.Drop
	if has(drop, "NET_ADMIN") {
		return ""
	}
	switch {
	case has(add, "NET_ADMIN"):
		return "adds NET_ADMIN"
	case has(add, "ALL") && !has(drop, "ALL"):
		return "adds ALL capabilities"
	}
	return ""
}
