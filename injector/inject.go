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

// IsInjected reports whether pod already carries minimesh's sidecar: an
// init container named minimesh-proxy that isSidecar recognises.
//
// Neither the minimesh.io/status annotation nor the container name is
// enough, because both can be there without the sidecar: an annotation
// copied by hand from an injected pod's manifest, an app container of the
// user's own named minimesh-proxy. Taken for injected, such a pod got
// HTTP_PROXY in every container and no sidecar listening on that port, so
// all of its outbound HTTP failed. Like Linkerd's injector, which keys on
// its proxy container rather than on its annotations, minimesh asks the
// pod's containers.
func IsInjected(pod *corev1.Pod) bool {
	return sidecarIndex(pod) >= 0
}

// Images are the images of minimesh's containers in an injected pod: the
// sidecar's, and the init container's under iptables interception ("" if
// it has none). ok is false for a pod without the sidecar.
func Images(pod *corev1.Pod) (proxy, init string, ok bool) {
	i := sidecarIndex(pod)
	if i < 0 {
		return "", "", false
	}
	for j := range pod.Spec.InitContainers {
		if c := &pod.Spec.InitContainers[j]; c.Name == initContainerName && j < i {
			init = c.Image
		}
	}
	return pod.Spec.InitContainers[i].Image, init, true
}

// InitContainerName is the init container of iptables interception in an
// injected pod: the one whose image Images returns as init.
const InitContainerName = initContainerName

// sidecarIndex is the index in pod.Spec.InitContainers of minimesh's
// sidecar, or -1.
func sidecarIndex(pod *corev1.Pod) int {
	for i := range pod.Spec.InitContainers {
		if isSidecar(&pod.Spec.InitContainers[i]) {
			return i
		}
	}
	return -1
}

// isSidecar recognises the container that sidecar() writes by what every
// minimesh release has written and what does not depend on the injector's
// config: the name, the place (an init container with restartPolicy
// Always, a native sidecar) and the command, `/minimesh-proxy run` (the
// image holds two binaries and has no ENTRYPOINT, so the injector always
// names the binary and its subcommand). The image is no mark: it is the
// config's proxy.image (a mirror, each release's tag), so a pod injected
// before an upgrade or a change of registry would no longer be recognised
// and would be injected twice.
func isSidecar(c *corev1.Container) bool {
	return c.Name == wellknown.ProxyContainerName &&
		c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways &&
		len(c.Command) == 1 && c.Command[0] == proxyBinary &&
		len(c.Args) > 0 && c.Args[0] == "run"
}

// isInitContainer recognises initContainer()'s container the same way:
// its name and `/minimesh-proxy init`.
func isInitContainer(c *corev1.Container) bool {
	return c.Name == initContainerName &&
		len(c.Command) == 1 && c.Command[0] == proxyBinary &&
		len(c.Args) > 0 && c.Args[0] == "init"
}

// isOwn recognises minimesh's own containers in an injected pod, which
// the checks of the app's containers leave out: the sidecar runs as the
// UID that iptables interception exempts, minimesh-init with NET_ADMIN.
func isOwn(c *corev1.Container) bool {
	return isSidecar(c) || isInitContainer(c)
}
