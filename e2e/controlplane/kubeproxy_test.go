package controlplane_test

import (
	"context"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/wellknown"
)

// TestKubeProxyRoutedNotBalanced: a Service written through the real API
// server with internalTrafficPolicy Local (a node-local agent) reaches a
// sidecar's xDS client through the built controller with no endpoints
// and with its ClusterIP (the one the API server allocated), so the
// sidecar names a connection to it by the Service and dials the
// ClusterIP, where kube-proxy keeps it on the node; changed to Cluster,
// its pods are served and balanced; sessionAffinity ClientIP takes them
// away again. Before, its every pod was served whatever the fields said.
func TestKubeProxyRoutedNotBalanced(t *testing.T) {
	p := startPlane(t)
	ctx := context.Background()
	cs := p.c.Client
	local := corev1.ServiceInternalTrafficPolicyLocal
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "agent"}, Spec: corev1.ServiceSpec{
		Selector:              map[string]string{"app": "agent"},
		Ports:                 []corev1.ServicePort{{Name: "otlp", Port: 4317, Protocol: corev1.ProtocolTCP}},
		InternalTrafficPolicy: &local,
	}}
	created, err := cs.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("the API server allocated no ClusterIP: %q", created.Spec.ClusterIP)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("shop").Create(ctx,
		endpointSlice("shop", "agent", "agent-a", map[string]int32{"otlp": 4317}, readyPod("10.1.0.1"), readyPod("10.1.1.1")),
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	name := wellknown.EndpointName("agent", "shop", 4317)
	holds := watchSidecar(ctx, t, p.xdsAddr, name, netip.AddrPortFrom(vip, 4317))
	holds("internalTrafficPolicy Local", nil)

	update := func(mod func(*corev1.ServiceSpec)) {
		t.Helper()
		cur, err := cs.CoreV1().Services("shop").Get(ctx, "agent", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mod(&cur.Spec)
		if _, err := cs.CoreV1().Services("shop").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	update(func(s *corev1.ServiceSpec) { s.InternalTrafficPolicy = &cluster })
	holds("changed to Cluster", want("10.1.0.1:4317", "10.1.1.1:4317"))
	update(func(s *corev1.ServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityClientIP })
	holds("sessionAffinity ClientIP", nil)
}
