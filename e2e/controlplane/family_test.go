package controlplane_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/injector/endpointctl"
	"github.com/minimesh/minimesh/wellknown"
)

// TestOneFamilyAndOtherProxy: a Service written through the real API
// server (IPv4 only: the API server sets spec.ipFamilies [IPv4]) with an
// IPv4 slice and a hand-written IPv6 one reaches a sidecar's xDS client
// with its IPv4 pods only, as kube-proxy balances it; labelled
// service.kubernetes.io/service-proxy-name, it is served with its
// ClusterIP and no endpoints (another proxy owns it); unlabelled, it is
// balanced again. Before, the IPv6 slice was served too, and the labelled
// Service kept its endpoints.
func TestOneFamilyAndOtherProxy(t *testing.T) {
	p := startPlane(t)
	ctx := context.Background()
	cs := p.c.Client
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "geo"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "geo"},
		Ports:    []corev1.ServicePort{{Name: "http", Port: 8000, Protocol: corev1.ProtocolTCP}},
	}}
	created, err := cs.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(created.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
		t.Fatalf("the API server set ipFamilies %v, want [IPv4]", created.Spec.IPFamilies)
	}
	vip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("the API server allocated no ClusterIP: %q", created.Spec.ClusterIP)
	}
	// The IPv6 slice first: when the IPv4 one's endpoints reach the
	// sidecar, the controller had read the IPv6 one (one watch, in order).
	ports := map[string]int32{"http": 8080}
	v6 := endpointSlice("shop", "geo", "geo-v6", ports, readyPod("fd00::1"), readyPod("fd00::2"))
	v6.AddressType = discoveryv1.AddressTypeIPv6
	for _, s := range []*discoveryv1.EndpointSlice{v6, endpointSlice("shop", "geo", "geo-v4", ports, readyPod("10.1.0.1"), readyPod("10.1.0.2"))} {
		if _, err := cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	name := wellknown.EndpointName("geo", "shop", 8000)
	holds := watchSidecar(ctx, t, p.xdsAddr, name, netip.AddrPortFrom(vip, 8000))
	balanced := want("10.1.0.1:8080", "10.1.0.2:8080")
	holds("IPv4 only: the IPv4 slice's pods", balanced)

	label := func(labels map[string]string) {
		t.Helper()
		cur, err := cs.CoreV1().Services("shop").Get(ctx, "geo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Labels = labels
		if _, err := cs.CoreV1().Services("shop").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	label(map[string]string{endpointctl.LabelServiceProxyName: "multus-proxy"})
	holds("labelled service-proxy-name", nil)
	label(nil)
	holds("unlabelled", balanced)
}
