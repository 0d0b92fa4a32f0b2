package injector

import (
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestPortClashIsPerProtocol: the sidecar listens on TCP alone, so an app
// port of the same number over UDP or SCTP is no clash and the pod is
// injected; over TCP (or no protocol, which is TCP) it is denied.
func TestPortClashIsPerProtocol(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ann      map[string]string
		port     int32
		protocol corev1.Protocol
		denied   bool
	}{
		{"admin port, no protocol", nil, 15020, "", true},
		{"admin port TCP", nil, 15020, corev1.ProtocolTCP, true},
		{"admin port UDP", nil, 15020, corev1.ProtocolUDP, false},
		{"admin port SCTP", nil, 15020, corev1.ProtocolSCTP, false},
		{"outbound port TCP", nil, 15001, corev1.ProtocolTCP, true},
		{"outbound port UDP", nil, 15001, corev1.ProtocolUDP, false},
		{"inbound port TCP", iptables("minimesh.io/capture-inbound", "enabled"), 15006, corev1.ProtocolTCP, true},
		{"inbound port UDP", iptables("minimesh.io/capture-inbound", "enabled"), 15006, corev1.ProtocolUDP, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ann := enabled()
			for k, v := range tc.ann {
				ann[k] = v
			}
			pod := appPod(ann)
			pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports,
				corev1.ContainerPort{Name: "other", ContainerPort: tc.port, Protocol: tc.protocol})
			res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
			var d *DenyError
			switch {
			case tc.denied && !errors.As(err, &d):
				t.Fatalf("err = %v, want a denial", err)
			case tc.denied && d.Field != "spec.containers[0].ports[1].containerPort":
				t.Fatalf("denied %s, want the port", d.Field)
			case !tc.denied && err != nil:
				t.Fatalf("denied: %v", err)
			case !tc.denied && !res.Injected:
				t.Fatal("not injected")
			}
		})
	}
}
