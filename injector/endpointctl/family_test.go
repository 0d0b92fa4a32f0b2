package endpointctl

import (
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

var (
	v4, v6     = corev1.IPv4Protocol, corev1.IPv6Protocol
	http8080   = map[string]int32{"http": 8080}
	wantV4     = []string{"10.0.0.1:8080", "10.0.0.2:8080"}
	wantV6     = []string{"[fd00::1]:8080", "[fd00::2]:8080"}
	headlessIP = []string{corev1.ClusterIPNone}
)

// sliceV4 and sliceV6 are the two slices the EndpointSlice controller
// writes for a dual-stack Service of two pods, each pod in both.
func sliceV4() *discoveryv1.EndpointSlice {
	return slice("shop", "geo", "geo-v4", discoveryv1.AddressTypeIPv4, http8080, ready("10.0.0.1"), ready("10.0.0.2"))
}

func sliceV6() *discoveryv1.EndpointSlice {
	return slice("shop", "geo", "geo-v6", discoveryv1.AddressTypeIPv6, http8080, ready("fd00::1"), ready("fd00::2"))
}

func sliceFQDN() *discoveryv1.EndpointSlice {
	return slice("shop", "geo", "geo-fqdn", discoveryv1.AddressTypeFQDN, http8080, ready("geo.example.com"))
}

// TestEndpointsOneFamily: each pod of a Service is one endpoint, by the
// address of the Service's primary IP family (spec.ipFamilies[0]), as
// kube-proxy balances its ClusterIP. The EndpointSlice controller writes
// an IPv4 and an IPv6 slice of a dual-stack Service, each pod in both:
// before, both were served, and each pod was two endpoints (a retry that
// avoided the tried endpoint went back to the same pod by its other
// address, half of a broken pod was ejected); a hand-written IPv6 slice
// of an IPv4-only Service, which kube-proxy ignores, was served too.
func TestEndpointsOneFamily(t *testing.T) {
	for _, c := range []struct {
		why       string
		families  []corev1.IPFamily
		clusterIP []string // spec.clusterIPs; spec.clusterIP is the first
		slices    []*discoveryv1.EndpointSlice
		family    discoveryv1.AddressType
		want      []string
	}{
		{"dual-stack, IPv4 primary", []corev1.IPFamily{v4, v6}, []string{"10.96.0.15", "fd00:10:96::15"},
			[]*discoveryv1.EndpointSlice{sliceV4(), sliceV6()}, discoveryv1.AddressTypeIPv4, wantV4},
		{"dual-stack, IPv6 primary", []corev1.IPFamily{v6, v4}, []string{"fd00:10:96::15", "10.96.0.15"},
			[]*discoveryv1.EndpointSlice{sliceV4(), sliceV6()}, discoveryv1.AddressTypeIPv6, wantV6},
		{"IPv4 only, a hand-written IPv6 slice", []corev1.IPFamily{v4}, []string{"10.96.0.15"},
			[]*discoveryv1.EndpointSlice{sliceV6(), sliceV4()}, discoveryv1.AddressTypeIPv4, wantV4},
		{"IPv6 only, a hand-written IPv4 slice", []corev1.IPFamily{v6}, []string{"fd00:10:96::15"},
			[]*discoveryv1.EndpointSlice{sliceV4(), sliceV6()}, discoveryv1.AddressTypeIPv6, wantV6},
		{"IPv6 only, no IPv6 slice: no endpoints (kube-proxy has none either)", []corev1.IPFamily{v6}, []string{"fd00:10:96::15"},
			[]*discoveryv1.EndpointSlice{sliceV4()}, discoveryv1.AddressTypeIPv6, nil},
		{"dual-stack headless, IPv6 primary", []corev1.IPFamily{v6, v4}, headlessIP,
			[]*discoveryv1.EndpointSlice{sliceV4(), sliceV6()}, discoveryv1.AddressTypeIPv6, wantV6},
		{"no ipFamilies, an IPv6 ClusterIP", nil, []string{"fd00:10:96::15"},
			[]*discoveryv1.EndpointSlice{sliceV4(), sliceV6()}, discoveryv1.AddressTypeIPv6, wantV6},
		{"no ipFamilies, an IPv4 ClusterIP", nil, []string{"10.96.0.15"},
			[]*discoveryv1.EndpointSlice{sliceV6(), sliceV4()}, discoveryv1.AddressTypeIPv4, wantV4},
		{"no ipFamilies, headless, both slices: IPv4", nil, headlessIP,
			[]*discoveryv1.EndpointSlice{sliceV6(), sliceV4()}, discoveryv1.AddressTypeIPv4, wantV4},
		{"no ipFamilies, headless, IPv6 slices only", nil, headlessIP,
			[]*discoveryv1.EndpointSlice{sliceV6(), sliceFQDN()}, discoveryv1.AddressTypeIPv6, wantV6},
		{"no ipFamilies, no ClusterIP, no slice", nil, nil, nil, discoveryv1.AddressTypeIPv6, nil},
		{"FQDN slices are never served", []corev1.IPFamily{v4}, []string{"10.96.0.15"},
			[]*discoveryv1.EndpointSlice{sliceFQDN()}, discoveryv1.AddressTypeIPv4, nil},
		{"an address not of its slice's family is left out", []corev1.IPFamily{v6}, []string{"fd00:10:96::15"},
			[]*discoveryv1.EndpointSlice{slice("shop", "geo", "odd", discoveryv1.AddressTypeIPv6, http8080,
				ready("::ffff:10.0.0.1"), ready("fd00::1"))}, discoveryv1.AddressTypeIPv6, []string{"[fd00::1]:8080"}},
		{"an IPv6 address in an IPv4 slice is left out", []corev1.IPFamily{v4}, []string{"10.96.0.15"},
			[]*discoveryv1.EndpointSlice{slice("shop", "geo", "odd", discoveryv1.AddressTypeIPv4, http8080,
				ready("10.0.0.1"), ready("fd00::1"))}, discoveryv1.AddressTypeIPv4, []string{"10.0.0.1:8080"}},
	} {
		t.Run(c.why, func(t *testing.T) {
			svc := service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80})
			svc.Spec.IPFamilies, svc.Spec.ClusterIPs = c.families, c.clusterIP
			if len(c.clusterIP) > 0 {
				svc.Spec.ClusterIP = c.clusterIP[0]
			}
			var slcs []any
			for _, s := range c.slices {
				slcs = append(slcs, s)
			}
			if got := ServedFamily(svc, slcs); got != c.family {
				t.Errorf("ServedFamily = %s, want %s", got, c.family)
			}
			got := Endpoints(svc, slcs)
			if w := eps(t, c.want...); len(got) != 1 || !hasPort(got, 80) || !slices.Equal(got[80], w) {
				t.Errorf("Endpoints = %v, want port 80: %v", got, w)
			}
		})
	}
}

func hasPort(m map[int32][]xdsclient.Endpoint, p int32) bool { _, ok := m[p]; return ok }

// TestDualStackUnderTheServiceCap: a dual-stack Service of 3,000 pods is
// 3,000 endpoints, under the 5,000 a Service may have
// (xds.MaxServiceEndpoints), and the real xDS server serves them. Before,
// it was 6,000 and the server left the Service out (its callers went
// through kube-proxy, without balancing or ejection) from 2,501 pods.
func TestDualStackUnderTheServiceCap(t *testing.T) {
	const pods = 3000
	if pods > xds.MaxServiceEndpoints || 2*pods <= xds.MaxServiceEndpoints {
		t.Fatalf("the test needs 2×%d pods over the cap of %d", pods, xds.MaxServiceEndpoints)
	}
	svc := service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80})
	svc.Spec.IPFamilies = []corev1.IPFamily{v4, v6}
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "10.96.0.15", []string{"10.96.0.15", "fd00:10:96::15"}
	var slcs []any
	for j := range pods / 1000 { // at most 1,000 a slice, as the EndpointSlice controller writes them
		var a, b []epSpec
		for k := range 1000 {
			i := j*1000 + k
			a = append(a, ready(fmt.Sprintf("10.1.%d.%d", i/256, i%256)))
			b = append(b, ready(fmt.Sprintf("fd00::1:%x", i)))
		}
		slcs = append(slcs, slice("shop", "geo", fmt.Sprintf("geo-v4-%d", j), discoveryv1.AddressTypeIPv4, http8080, a...),
			slice("shop", "geo", fmt.Sprintf("geo-v6-%d", j), discoveryv1.AddressTypeIPv6, http8080, b...))
	}
	got := Endpoints(svc, slcs)
	if len(got[80]) != pods {
		t.Fatalf("%d pods served as %d endpoints", pods, len(got[80]))
	}
	name := wellknown.EndpointName("geo", "shop", 80)
	served, err := xds.NewServer(t.Context(), nil).SetServices(map[string][]xdsclient.Endpoint{name: got[80]},
		map[string][]netip.AddrPort{name: {netip.MustParseAddrPort("10.96.0.15:80"), netip.MustParseAddrPort("[fd00:10:96::15]:80")}})
	if err != nil || len(served.LeftOut) != 0 || served.Endpoints != pods {
		t.Fatalf("served %d endpoints, left out %v (%v); want %d, none left out", served.Endpoints, served.LeftOut, err, pods)
	}
}

// TestControllerDualStack: through the controller, a dual-stack Service
// hands the sink each pod once, by its primary family's address, and
// both ClusterIPs (a connection redirected to either is still named by
// the Service); its families swapped, the other family is served.
func TestControllerDualStack(t *testing.T) {
	mk := func(families ...corev1.IPFamily) *corev1.Service {
		s := service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80})
		s.Spec.IPFamilies = families
		s.Spec.ClusterIPs = []string{"10.96.0.15", "fd00:10:96::15"}
		if families[0] == v6 {
			slices.Reverse(s.Spec.ClusterIPs)
		}
		s.Spec.ClusterIP = s.Spec.ClusterIPs[0]
		return s
	}
	cs := fake.NewClientset(mk(v4, v6), sliceV4(), sliceV6())
	s := &sink{}
	ctx := runController(t, cs, s, io.Discard)
	name := wellknown.EndpointName("geo", "shop", 80)
	holds := func(why string, want []xdsclient.Endpoint, vips ...string) {
		t.Helper()
		var ips []netip.AddrPort
		for _, v := range vips {
			ips = append(ips, netip.MustParseAddrPort(v))
		}
		waitFor(t, why, s.holds(name, want, ips...))
	}
	holds("IPv4 primary: the IPv4 addresses, both ClusterIPs", eps(t, wantV4...), "10.96.0.15:80", "[fd00:10:96::15]:80")
	if _, err := cs.CoreV1().Services("shop").Update(ctx, mk(v6, v4), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	holds("IPv6 primary: the IPv6 addresses, both ClusterIPs", eps(t, wantV6...), "[fd00:10:96::15]:80", "10.96.0.15:80")
}

// TestOtherProxy: a Service labelled service.kubernetes.io/service-proxy-name
// (any value, empty included) is skipped by kube-proxy: another proxy
// programs its ClusterIP (multus secondary networks), and its slices may
// hold addresses of a network the caller is not on. It is served with its
// ports and no endpoints, so that the sidecar dials the ClusterIP where
// that proxy applies its rules, whatever its other fields; a headless one
// keeps its endpoints (no ClusterIP: DNS gives its callers the same
// addresses). Before, the sidecars balanced over its slices' addresses.
func TestOtherProxy(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	sl := []any{slice("shop", "net2", "a", discoveryv1.AddressTypeIPv4, http8080, ready("192.168.50.7"), ready("192.168.50.8"))}
	all := map[int32][]xdsclient.Endpoint{80: eps(t, "192.168.50.7:8080", "192.168.50.8:8080")}
	none := map[int32][]xdsclient.Endpoint{80: nil}
	for _, c := range []struct {
		why    string
		labels map[string]string
		spec   func(*corev1.ServiceSpec)
		want   string
		eps    map[int32][]xdsclient.Endpoint
	}{
		{"no label", map[string]string{"app": "net2"}, func(*corev1.ServiceSpec) {}, "", all},
		{"labelled multus-proxy", map[string]string{LabelServiceProxyName: "multus-proxy"}, func(*corev1.ServiceSpec) {}, RoutedOtherProxy, none},
		{"labelled with an empty value", map[string]string{LabelServiceProxyName: ""}, func(*corev1.ServiceSpec) {}, RoutedOtherProxy, none},
		{"labelled, internalTrafficPolicy Local: the other proxy's", map[string]string{LabelServiceProxyName: "x"},
			func(s *corev1.ServiceSpec) { s.InternalTrafficPolicy = &local }, RoutedOtherProxy, none},
		{"labelled, headless", map[string]string{LabelServiceProxyName: "multus-proxy"},
			func(s *corev1.ServiceSpec) { s.ClusterIP, s.ClusterIPs = corev1.ClusterIPNone, headlessIP }, "", all},
	} {
		t.Run(c.why, func(t *testing.T) {
			svc := service("shop", "net2", corev1.ServicePort{Name: "http", Port: 80})
			svc.Labels = c.labels
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "10.96.0.15", []string{"10.96.0.15"}
			c.spec(&svc.Spec)
			if got := KubeProxyRouted(svc); got != c.want {
				t.Errorf("KubeProxyRouted = %q, want %q", got, c.want)
			}
			if got := Endpoints(svc, sl); !maps.EqualFunc(got, c.eps, slices.Equal) {
				t.Errorf("Endpoints = %v, want %v", got, c.eps)
			}
		})
	}
}

// TestControllerOtherProxy: the label added to a served Service takes its
// endpoints away at the next publish and keeps its ClusterIP; the log
// names it with its reason; removed, it is balanced again.
func TestControllerOtherProxy(t *testing.T) {
	mk := func(labels map[string]string) *corev1.Service {
		s := service("shop", "net2", corev1.ServicePort{Name: "http", Port: 80})
		s.Labels = labels
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.15", []string{"10.96.0.15"}
		return s
	}
	cs := fake.NewClientset(mk(nil), slice("shop", "net2", "a", discoveryv1.AddressTypeIPv4, http8080, ready("192.168.50.7")))
	s, logs := &sink{}, &syncLog{}
	ctx := runController(t, cs, s, logs)
	name := wellknown.EndpointName("net2", "shop", 80)
	vip := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.15:80")}
	served := func(want []xdsclient.Endpoint) func() bool { return s.holds(name, want, vip...) }
	balanced := eps(t, "192.168.50.7:8080")
	waitFor(t, "balanced", served(balanced))
	services := cs.CoreV1().Services("shop")
	for _, step := range []struct {
		why    string
		labels map[string]string
		want   []xdsclient.Endpoint
	}{
		{"labelled: no endpoints, the ClusterIP kept", map[string]string{LabelServiceProxyName: "multus-proxy"}, nil},
		{"unlabelled: balanced again", nil, balanced},
	} {
		if _, err := services.Update(ctx, mk(step.labels), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, step.why, served(step.want))
	}
	if w := "shop/net2 (" + RoutedOtherProxy + ")"; !strings.Contains(logs.String(), w) {
		t.Errorf("the log does not say %q:\n%s", w, logs)
	}
}
