package injector

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/minimesh/minimesh/wellknown"
)

// Input is what the mutation knows about a pod: the pod (or a workload's
// pod template wrapped in a Pod) and its namespace.
type Input struct {
	Pod *corev1.Pod
	// Namespace is the pod's namespace; a pod being created may not carry
	// it in its metadata yet.
	Namespace string
	// NamespaceLabels are the labels of that namespace: the label
	// minimesh.io/inject=enabled opts all its pods in, and Pod Security's
	// enforce label decides whether iptables interception is possible.
	NamespaceLabels map[string]string
	// Manual is `minimesh inject`: every workload it is given is injected
	// (and marked minimesh.io/inject: enabled) unless it opted out, as
	// linkerd inject does. It knows no namespace labels, so iptables
	// interception is admitted with a warning about Pod Security.
	Manual bool
	// WorkloadName names the workload whose pod template Pod is, for
	// `minimesh inject`: it is the service name when no label says one. A
	// pod the webhook sees has owner references instead.
	WorkloadName string
}

// Result is the outcome of Inject.
type Result struct {
	// Pod is the mutated copy; the input pod is never changed. When nothing
	// was injected it is the input pod itself.
	Pod *corev1.Pod
	// Injected says whether Pod differs from the input.
	Injected bool
	// Reason says why the pod was or was not injected, for logs and
	// `minimesh inject`'s report ("namespace label", "annotation disabled",
	// "hostNetwork", "already injected", ...).
	Reason string
	// Warnings are for suspicious but valid settings; the webhook returns
	// them to kubectl.
	Warnings []string
}

// Inject decides whether in.Pod gets the sidecar and returns the mutated
// copy. An error is a denial: a bad annotation value, named with its value
// (*DenyError), so the webhook refuses the pod with that message.
func Inject(in Input, cfg *Config) (Result, error) {
	return inject(in, cfg)
}

// DenyError is why a pod is refused: the annotation or field and its value.
type DenyError struct {
	Field  string // "metadata.annotations[minimesh.io/proxy-cpu-limit]"
	Value  string
	Reason string
	cause  error // for errors.Is: ErrPodSecurity
}

func (e *DenyError) Unwrap() error { return e.cause }

func (e *DenyError) Error() string {
	return "minimesh: " + e.Field + ": " + quote(e.Value) + ": " + e.Reason
}

// IsInjected reports whether pod already carries the sidecar.
func IsInjected(pod *corev1.Pod) bool {
	if pod.Annotations[wellknown.AnnotationStatus] == wellknown.StatusInjected {
		return true
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == wellknown.ProxyContainerName {
			return true
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == wellknown.ProxyContainerName {
			return true
		}
	}
	return false
}
