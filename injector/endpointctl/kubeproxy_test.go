package endpointctl

import (
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
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// TestKubeProxyRouted: a Service with internalTrafficPolicy Local or
// sessionAffinity ClientIP is served with its ports and no endpoints
// (its callers' sidecars dial the ClusterIP, where kube-proxy keeps the
// call on the caller's node, or the caller on one pod); a headless one
// keeps its endpoints whatever the fields say (kube-proxy ignores them
// there, and DNS gives every pod); the other Services are balanced as
// before. Before, every Service's ready endpoints were served: a node's
// calls to its node-local agent went to every node, and a sticky
// caller's to every pod.
func TestKubeProxyRouted(t *testing.T) {
	local, cluster := corev1.ServiceInternalTrafficPolicyLocal, corev1.ServiceInternalTrafficPolicyCluster
	sl := []any{slice("obs", "agent", "a", discoveryv1.AddressTypeIPv4, map[string]int32{"otlp": 4317, "http": 4318},
		ready("10.1.0.5"), ready("10.1.1.5"))}
	all := map[int32][]xdsclient.Endpoint{
		4317: eps(t, "10.1.0.5:4317", "10.1.1.5:4317"),
		4318: eps(t, "10.1.0.5:4318", "10.1.1.5:4318"),
	}
	none := map[int32][]xdsclient.Endpoint{4317: nil, 4318: nil}
	for _, c := range []struct {
		why  string
		spec func(*corev1.ServiceSpec)
		want string
		eps  map[int32][]xdsclient.Endpoint
	}{
		{"neither field", func(*corev1.ServiceSpec) {}, "", all},
		{"internalTrafficPolicy Cluster, sessionAffinity None", func(s *corev1.ServiceSpec) {
			s.InternalTrafficPolicy, s.SessionAffinity = &cluster, corev1.ServiceAffinityNone
		}, "", all},
		{"internalTrafficPolicy Local", func(s *corev1.ServiceSpec) { s.InternalTrafficPolicy = &local }, RoutedLocal, none},
		{"sessionAffinity ClientIP", func(s *corev1.ServiceSpec) {
			s.SessionAffinity = corev1.ServiceAffinityClientIP
			s.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: new(int32(600))}}
		}, RoutedClientIP, none},
		{"both", func(s *corev1.ServiceSpec) {
			s.InternalTrafficPolicy, s.SessionAffinity = &local, corev1.ServiceAffinityClientIP
		}, RoutedLocal, none},
		{"a LoadBalancer Service with internalTrafficPolicy Local (its ClusterIP is kube-proxy's too)", func(s *corev1.ServiceSpec) {
			s.Type, s.InternalTrafficPolicy = corev1.ServiceTypeLoadBalancer, &local
		}, RoutedLocal, none},
		{"externalTrafficPolicy Local alone (outside callers only)", func(s *corev1.ServiceSpec) {
			s.Type, s.ExternalTrafficPolicy = corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal
		}, "", all},
		{"headless, internalTrafficPolicy Local", func(s *corev1.ServiceSpec) {
			s.ClusterIP, s.ClusterIPs, s.InternalTrafficPolicy = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}, &local
		}, "", all},
		{"headless, sessionAffinity ClientIP", func(s *corev1.ServiceSpec) {
			s.ClusterIP, s.ClusterIPs, s.SessionAffinity = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}, corev1.ServiceAffinityClientIP
		}, "", all},
	} {
		t.Run(c.why, func(t *testing.T) {
			svc := service("obs", "agent", corev1.ServicePort{Name: "otlp", Port: 4317}, corev1.ServicePort{Name: "http", Port: 4318},
				corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "10.96.0.9", []string{"10.96.0.9"}
			c.spec(&svc.Spec)
			if got := KubeProxyRouted(svc); got != c.want {
				t.Errorf("KubeProxyRouted = %q, want %q", got, c.want)
			}
			got := Endpoints(svc, sl)
			if !maps.EqualFunc(got, c.eps, slices.Equal) {
				t.Errorf("Endpoints = %v, want %v", got, c.eps)
			}
		})
	}
}

// TestControllerKubeProxyRouted: a served Service whose owner sets
// internalTrafficPolicy Local loses its endpoints at the next publish
// and keeps its resources and ClusterIPs (a redirected connection to the
// ClusterIP is still named by it); set back to Cluster, it is balanced
// again; sessionAffinity ClientIP does the same. The log names the
// Services left to kube-proxy when they change.
func TestControllerKubeProxyRouted(t *testing.T) {
	mk := func(mod func(*corev1.ServiceSpec)) *corev1.Service {
		s := service("obs", "agent", corev1.ServicePort{Name: "otlp", Port: 4317})
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.9", []string{"10.96.0.9"}
		mod(&s.Spec)
		return s
	}
	cs := fake.NewClientset(mk(func(*corev1.ServiceSpec) {}),
		slice("obs", "agent", "agent-1", discoveryv1.AddressTypeIPv4, map[string]int32{"otlp": 4317}, ready("10.1.0.5"), ready("10.1.1.5")))
	s, logs := &sink{}, &syncLog{}
	ctx := runController(t, cs, s, logs)
	name := wellknown.EndpointName("agent", "obs", 4317)
	vip := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.9:4317")}
	served := func(want []xdsclient.Endpoint) func() bool { return s.holds(name, want, vip...) }
	balanced := eps(t, "10.1.0.5:4317", "10.1.1.5:4317")
	waitFor(t, "the Service balanced", served(balanced))

	local, cluster := corev1.ServiceInternalTrafficPolicyLocal, corev1.ServiceInternalTrafficPolicyCluster
	services := cs.CoreV1().Services("obs")
	for _, step := range []struct {
		why  string
		spec func(*corev1.ServiceSpec)
		want []xdsclient.Endpoint
	}{
		{"internalTrafficPolicy Local: no endpoints, the ClusterIP kept", func(s *corev1.ServiceSpec) { s.InternalTrafficPolicy = &local }, nil},
		{"back to Cluster: balanced again", func(s *corev1.ServiceSpec) { s.InternalTrafficPolicy = &cluster }, balanced},
		{"sessionAffinity ClientIP: no endpoints", func(s *corev1.ServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityClientIP }, nil},
		{"sessionAffinity None: balanced again", func(s *corev1.ServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityNone }, balanced},
	} {
		if _, err := services.Update(ctx, mk(step.spec), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, step.why, served(step.want))
	}
	// Told twice (Local, ClientIP), and once that none is left: each
	// change, not each publish.
	if n := strings.Count(logs.String(), "obs/agent ("); n != 2 {
		t.Errorf("the log names obs/agent %d times, want 2 (one per change):\n%s", n, logs)
	}
	for _, w := range []string{"obs/agent (" + RoutedLocal + ")", "obs/agent (" + RoutedClientIP + ")", "no Service is left to kube-proxy"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("the log does not say %q:\n%s", w, logs)
		}
	}
}
