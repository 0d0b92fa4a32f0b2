package injector

import (
	"errors"
	"fmt"
	"strconv"

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
// that only the image sets (USER 15000) is not visible here.
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
