package endpointctl

import (
	"io"
	"maps"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/minimesh/minimesh/wellknown"
)

// TestClusterIPs: a Service's virtual IPs, every family, none for a
// headless or ExternalName Service.
func TestClusterIPs(t *testing.T) {
	for _, c := range []struct {
		why  string
		spec corev1.ServiceSpec
		want []string
	}{
		{"IPv4", corev1.ServiceSpec{ClusterIP: "10.96.0.15", ClusterIPs: []string{"10.96.0.15"}}, []string{"10.96.0.15"}},
		{"dual-stack, in order", corev1.ServiceSpec{ClusterIP: "fd00::15", ClusterIPs: []string{"fd00::15", "10.96.0.15"}}, []string{"fd00::15", "10.96.0.15"}},
		{"clusterIP alone (written before dual-stack)", corev1.ServiceSpec{ClusterIP: "10.96.0.15"}, []string{"10.96.0.15"}},
		{"headless", corev1.ServiceSpec{ClusterIP: "None", ClusterIPs: []string{"None"}}, nil},
		{"not yet allocated", corev1.ServiceSpec{}, nil},
		{"ExternalName", corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com", ClusterIP: "10.96.0.15"}, nil},
		{"an IPv4-mapped one is IPv4", corev1.ServiceSpec{ClusterIPs: []string{"::ffff:10.96.0.15"}}, []string{"10.96.0.15"}},
		{"garbage", corev1.ServiceSpec{ClusterIPs: []string{"ten"}}, nil},
	} {
		var got []string
		for _, ip := range ClusterIPs(&corev1.Service{Spec: c.spec}) {
			got = append(got, ip.String())
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.why, got, c.want)
		}
	}
}

// TestControllerClusterIPs: the controller hands the sink every Service
// port's ClusterIP:port with its endpoints, and the change when a
// Service is recreated with another ClusterIP, made headless, or
// deleted.
func TestControllerClusterIPs(t *testing.T) {
	svc := func(ips ...string) *corev1.Service {
		s := service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "admin", Port: 9090})
		s.Spec.ClusterIPs = ips
		if len(ips) > 0 {
			s.Spec.ClusterIP = ips[0]
		}
		return s
	}
	headless := service("shop", "db", corev1.ServicePort{Port: 5432})
	headless.Spec.ClusterIP, headless.Spec.ClusterIPs = "None", []string{"None"}
	cs := fake.NewClientset(svc("10.96.0.15", "fd00::15"), headless)
	s := &sink{}
	ctx := runController(t, cs, s, io.Discard)
	http, admin := wellknown.EndpointName("geo", "shop", 80), wellknown.EndpointName("geo", "shop", 9090)
	ipsAre := func(want map[string][]netip.AddrPort) func() bool {
		return func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.ips) > 0 && maps.EqualFunc(s.ips[len(s.ips)-1], want, slices.Equal)
		}
	}
	waitFor(t, "both families of both ports", ipsAre(map[string][]netip.AddrPort{
		http:  {netip.MustParseAddrPort("10.96.0.15:80"), netip.MustParseAddrPort("[fd00::15]:80")},
		admin: {netip.MustParseAddrPort("10.96.0.15:9090"), netip.MustParseAddrPort("[fd00::15]:9090")},
	}))
	if got, _ := s.last(); !hasKey(got, wellknown.EndpointName("db", "shop", 5432)) {
		t.Fatalf("the headless Service's endpoints are not served: %v", got)
	}
	services := cs.CoreV1().Services("shop")
	if _, err := services.Update(ctx, svc("10.96.0.99"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new ClusterIP", ipsAre(map[string][]netip.AddrPort{
		http:  {netip.MustParseAddrPort("10.96.0.99:80")},
		admin: {netip.MustParseAddrPort("10.96.0.99:9090")},
	}))
	if _, err := services.Update(ctx, svc("None"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "none once headless", ipsAre(map[string][]netip.AddrPort{}))
	if _, err := services.Update(ctx, svc("10.96.0.7"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ClusterIP again", ipsAre(map[string][]netip.AddrPort{
		http:  {netip.MustParseAddrPort("10.96.0.7:80")},
		admin: {netip.MustParseAddrPort("10.96.0.7:9090")},
	}))
	if err := services.Delete(ctx, "geo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "none once deleted", ipsAre(map[string][]netip.AddrPort{}))
}
