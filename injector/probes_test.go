package injector

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestTCPProbeWarning: under capture-inbound, a tcpSocket probe of a
// redirected app port would check the sidecar, not the app: the pod is
// admitted with a warning that says so and what to do. httpGet probes,
// skipped ports and pods without inbound capture get none.
func TestTCPProbeWarning(t *testing.T) {
	tcp := func(port intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: port}}}
	}
	http := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8000)}}}
	capture := iptables("minimesh.io/capture-inbound", "enabled")
	tests := []struct {
		name  string
		ann   map[string]string
		set   func(*corev1.Container)
		warns string // "" for none
	}{
		{"tcp liveness by number", capture, func(c *corev1.Container) { c.LivenessProbe = tcp(intstr.FromInt32(8000)) },
			"container app: the livenessProbe is a tcpSocket probe of port 8000"},
		{"tcp readiness by port name", capture, func(c *corev1.Container) { c.ReadinessProbe = tcp(intstr.FromString("http")) },
			"the readinessProbe is a tcpSocket probe of port 8000"},
		{"tcp startup on a skipped port", iptables("minimesh.io/capture-inbound", "enabled", "minimesh.io/skip-inbound-ports", "7000-8100"),
			func(c *corev1.Container) { c.StartupProbe = tcp(intstr.FromInt32(8000)) }, ""},
		{"httpGet", capture, func(c *corev1.Container) { c.LivenessProbe = http }, ""},
		{"no inbound capture", iptables(), func(c *corev1.Container) { c.LivenessProbe = tcp(intstr.FromInt32(8000)) }, ""},
		{"proxy-env", enabled(), func(c *corev1.Container) { c.LivenessProbe = tcp(intstr.FromInt32(8000)) }, ""},
		{"native sidecar's tcp readiness", capture, nil, "container log-shipper: the readinessProbe is a tcpSocket probe of port 9000"},
		{"plain init container", capture, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := appPod(tt.ann)
			if tt.set != nil {
				tt.set(&pod.Spec.Containers[0])
			} else {
				// The kubelet probes a native sidecar (restartPolicy
				// Always) as an app container; a plain init container
				// it never probes.
				shipper := corev1.Container{Name: "log-shipper", Image: "shipper",
					Ports:          []corev1.ContainerPort{{Name: "ship", ContainerPort: 9000}},
					ReadinessProbe: tcp(intstr.FromString("ship"))}
				if strings.HasPrefix(tt.name, "native") {
					shipper.RestartPolicy = new(corev1.ContainerRestartPolicyAlways)
				}
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, shipper)
			}
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			if err != nil || !res.Injected {
				t.Fatalf("%v %+v", err, res)
			}
			var found []string
			for _, w := range res.Warnings {
				if strings.Contains(w, "tcpSocket") {
					found = append(found, w)
				}
			}
			switch {
			case tt.warns == "" && len(found) > 0:
				t.Errorf("warnings %q, want none", found)
			case tt.warns != "" && (len(found) != 1 || !strings.Contains(found[0], tt.warns) || !strings.Contains(found[0], "minimesh.io/skip-inbound-ports")):
				t.Errorf("warnings %q, want one with %q and the way out", found, tt.warns)
			}
		})
	}
}
