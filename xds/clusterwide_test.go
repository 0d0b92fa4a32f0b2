package xds

import (
	"maps"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

const routeType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

// envoyView is what an Envoy of namespace ns is served: every cluster's
// name and the address it dials, and which cluster each Host routes to.
func envoyView(t *testing.T, s *Server, ns string) (dials map[string]string, routes map[string]string) {
	t.Helper()
	snap, err := s.Cache.GetSnapshot(ns)
	if err != nil {
		t.Fatal(err)
	}
	dials, routes = map[string]string{}, map[string]string{}
	for name, r := range snap.GetResources(clusterType) {
		c := r.(*clusterv3.Cluster)
		if eps := c.GetLoadAssignment().GetEndpoints(); len(eps) > 0 {
			dials[name] = eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
		} else {
			dials[name] = ""
		}
	}
	for _, r := range snap.GetResources(routeType) {
		for _, vh := range r.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, d := range vh.GetDomains() {
				routes[d] = vh.GetRoutes()[0].GetRoute().GetCluster()
			}
		}
	}
	return dials, routes
}

// TestClusterWideResolvesInNodeNamespace: a cluster-wide policy (in the
// controller's namespace, mesh) for a short name applies, in a sidecar of
// shop, to shop's Service of that name (docs/policy.md, "Matching"); the
// Envoy resources a node of shop is served say the same, rather than
// routing shop's Hosts to the Service of the controller's namespace. A
// cluster-wide policy for a qualified name (ratings.shop) takes the bare
// name from a node of shop too, as the sidecar's matcher does, and
// neither from a node of another namespace.
func TestClusterWideResolvesInNodeNamespace(t *testing.T) {
	s := NewServer(t.Context(), nil)
	global := slices.Concat(
		pol(t, "mesh", `{service: reviews, timeout: 2s}`),
		pol(t, "mesh", `{service: ratings.shop, timeout: 3s}`),
		pol(t, "mesh", `{service: "api.example.com", timeout: 4s}`),
	)
	for i, p := range global {
		p.Metadata.Name = []string{"reviews", "ratings", "api"}[i]
	}
	s.mu.Lock()
	for _, ns := range []string{"shop", "web", "mesh"} {
		if err := s.join(ns); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Unlock()
	if err := s.Set(global, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns              string
		dials, routesTo map[string]string
		notRouted       []string
	}{
		{
			ns: "shop",
			// A two-label name (ratings.shop) resolves as written, as
			// the sidecar dials it: the pod's search path finds the
			// Service.
			dials: map[string]string{
				"outbound|0||reviews.shop.svc.cluster.local":             "reviews.shop.svc.cluster.local",
				"outbound|0|ratings.shop|ratings.shop.svc.cluster.local": "ratings.shop",
				"outbound|0||api.example.com":                            "api.example.com",
			},
			routesTo: map[string]string{
				"reviews":                        "outbound|0||reviews.shop.svc.cluster.local",
				"reviews.shop.svc.cluster.local": "outbound|0||reviews.shop.svc.cluster.local",
				"ratings":                        "outbound|0|ratings.shop|ratings.shop.svc.cluster.local",
				"api.example.com":                "outbound|0||api.example.com",
			},
			notRouted: []string{"reviews.mesh", "reviews.mesh.svc.cluster.local"},
		},
		{
			ns: "web",
			dials: map[string]string{
				"outbound|0||reviews.web.svc.cluster.local": "reviews.web.svc.cluster.local",
			},
			routesTo: map[string]string{
				"reviews":      "outbound|0||reviews.web.svc.cluster.local",
				"ratings.shop": "outbound|0|ratings.shop|ratings.shop.svc.cluster.local",
			},
			notRouted: []string{"ratings", "reviews.mesh"},
		},
	} {
		dials, routes := envoyView(t, s, tc.ns)
		for name, addr := range tc.dials {
			if got, ok := dials[name]; !ok || got != addr {
				t.Errorf("namespace %s: cluster %s dials %q (present %v), want %q; clusters %v", tc.ns, name, got, ok, addr, slices.Sorted(maps.Keys(dials)))
			}
		}
		for host, cluster := range tc.routesTo {
			if routes[host] != cluster {
				t.Errorf("namespace %s: Host %s routes to %q, want %q", tc.ns, host, routes[host], cluster)
			}
		}
		for _, host := range tc.notRouted {
			if c, ok := routes[host]; ok {
				t.Errorf("namespace %s: Host %s routes to %s; no policy of a sidecar there matches it", tc.ns, host, c)
			}
		}
	}
	// What a minimesh sidecar reads back is the policy as written, its
	// namespace (the controller's, where it was written) kept for display.
	snap, _ := s.Cache.GetSnapshot("shop")
	c := snap.GetResources(clusterType)["outbound|0||reviews.shop.svc.cluster.local"]
	if c == nil {
		t.Fatal("no cluster for reviews in shop")
	}
	md := c.(*clusterv3.Cluster).GetMetadata().GetFilterMetadata()["minimesh.io"].GetFields()
	if md["namespace"].GetStringValue() != "mesh" || md["service"].GetStringValue() != "reviews" {
		t.Errorf("metadata %v: want the policy as written (service reviews, namespace mesh)", md)
	}
}

// TestClusterWideSharing: namespaces share the translation of the
// cluster-wide policies exactly when it reads the same in them: never
// with a short name among them (a Service of each namespace), and with
// qualified or external names in every namespace but those they name.
func TestClusterWideSharing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		global string
		shared map[string]bool // namespace → shares the others' snapshot
	}{
		{"short name", `{service: reviews}`, map[string]bool{"web": false, "mesh": false, "shop": false}},
		{"short name with a port", `{service: "reviews:80"}`, map[string]bool{"web": false, "mesh": false, "shop": false}},
		{"qualified name", `{service: reviews.shop.svc}`, map[string]bool{"web": true, "mesh": true, "shop": false}},
		{"external host", `{service: api.example.com}`, map[string]bool{"web": true, "mesh": true, "shop": true}},
		{"defaults", `{service: "*"}`, map[string]bool{"web": true, "mesh": true, "shop": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(t.Context(), nil)
			s.mu.Lock()
			for _, ns := range []string{"web", "mesh", "shop", "other"} {
				if err := s.join(ns); err != nil {
					t.Fatal(err)
				}
			}
			s.mu.Unlock()
			if err := s.Set(pol(t, "mesh", tc.global), nil); err != nil {
				t.Fatal(err)
			}
			other := mustSnap(t, s, "other")
			for ns, want := range tc.shared {
				if got := mustSnap(t, s, ns) == other; got != want {
					t.Errorf("namespace %s shares the snapshot of a namespace no policy names: %v, want %v", ns, got, want)
				}
			}
		})
	}
}
