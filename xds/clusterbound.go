package xds

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
)

// MaxClusterBytes bounds the clusters of one namespace's CDS response
// (its policies and the cluster-wide ones, as a sidecar there is sent
// them), encoded as they are on the wire. The sidecar's transport refuses
// a message over grpcwire.DefaultMaxMessage (4 MiB) whole and ends the
// stream, which carries its endpoints too: it applied none of its
// policies, got no endpoint update, and reconnected to be sent the same
// again, while every policy said Accepted. CDS and EDS are separate
// DiscoveryResponses (one type each), so each is bounded on its own, as
// EDS is by xdsclient.MaxEndpointBytes, at the same 3 MiB: the rest of
// the message (version, nonce, type URL: under 200 bytes) has a megabyte
// of room. A policy is about 1.25 KB on the wire (1.9 KB with every
// field and long names), so 3 MiB is about 2,500 policies per namespace.
// The routes (RDS, for an Envoy; the sidecar does not ask for them) are
// made from the same policies and are about 56 % of the clusters' size.
const MaxClusterBytes = 3 << 20

// ReasonTooMany is why a policy is left out (and its object's
// Accepted=False reason): its namespace's CDS response would be over
// MaxClusterBytes.
const ReasonTooMany = "TooMany"

// longestNamespace is the longest namespace there can be (a DNS label).
// A cluster-wide policy's cluster is largest as a sidecar there is sent
// it (a short Service name becomes <name>.<namespace>.svc.cluster.local;
// nothing else in a cluster depends on the namespace), so a cluster-wide
// set within the bound there is within it in every namespace, and which
// cluster-wide policies are left out does not depend on the namespaces
// that have sidecars (replicas with different sidecars agree).
var longestNamespace = strings.Repeat("x", 63)

// PolicyLeftOut is a policy that is not served because its namespace's
// CDS response would be over MaxClusterBytes.
type PolicyLeftOut struct {
	// Policy is the one given to Set.
	Policy *policy.ResiliencePolicy
	// ClusterWide: one of the cluster-wide policies, left out of every
	// namespace; otherwise one of Namespace's own.
	ClusterWide bool
	Namespace   string
	// Bytes is its cluster's size in the response (for a cluster-wide
	// one, in the longest namespace); Total, the response's with every
	// policy given.
	Bytes, Total int
}

// String names a policy left out in a log line.
func (l PolicyLeftOut) String() string {
	where := "namespace " + l.Namespace
	if l.ClusterWide {
		where = "every namespace (cluster-wide)"
	}
	return fmt.Sprintf("%s/%s (%d bytes, left out of %s)", l.Policy.Metadata.Namespace, l.Policy.Metadata.Name, l.Bytes, where)
}

// Message is what the policy's status says (Accepted=False, reason
// ReasonTooMany).
func (l PolicyLeftOut) Message() string {
	where := "namespace " + l.Namespace + "'s"
	if l.ClusterWide {
		where = "the cluster-wide"
	}
	return fmt.Sprintf("not served: %s policies would be %d bytes on the wire, over the %d a sidecar is sent (xds.MaxClusterBytes); the newest policies (by creation time, then namespace and name) are left out first, this one of %d bytes. Delete or merge policies to make room",
		where, l.Total, MaxClusterBytes, l.Bytes)
}

// PoliciesLeftOut are the policies the last Set (or SetNamespace) left
// out for size: the newest cluster-wide ones past MaxClusterBytes in the
// longest namespace, and each namespace's newest past it with the
// cluster-wide ones served. They are the same whichever sidecars are
// connected, so that replicas write the same statuses. The policy
// controller marks their objects Accepted=False, reason ReasonTooMany.
func (s *Server) PoliciesLeftOut() []PolicyLeftOut {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.leftOut)
}

// ReportPolicies makes the server report the policies it leaves out for
// size: a warning in log when they change (an info line when none is left
// out again), and the gauge minimesh_cds_policies_left_out{namespace}
// (the policy's namespace) in reg at every Set.
func (s *Server) ReportPolicies(log *slog.Logger, reg prometheus.Registerer) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "minimesh_cds_policies_left_out",
		Help: "Policies not served because their namespace's CDS response would be over the bound (docs/controlplane.md); the controller's log names them, their status says Accepted=False, TooMany."},
		[]string{"namespace"})
	if err := reg.Register(g); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var last string
	s.report = func(left []PolicyLeftOut) {
		g.Reset()
		var key strings.Builder
		for _, l := range left {
			g.WithLabelValues(l.Policy.Metadata.Namespace).Inc()
			key.WriteString(l.String() + "\n")
		}
		if key.String() == last {
			return
		}
		last = key.String()
		if len(left) == 0 {
			log.Info("policies: every policy is served again")
			return
		}
		var names []string
		for _, l := range left[:min(len(left), maxListed)] {
			names = append(names, l.String())
		}
		log.Warn("policies: left out of what sidecars are sent, their namespace's CDS response would be over the bound; their status says Accepted=False, TooMany",
			"policies_left_out", len(left), "policies", names, "policies_not_listed", len(left)-len(names),
			"bound", fmt.Sprintf("%d bytes of clusters per namespace; the newest policies go first, cluster-wide ones measured in the longest namespace", MaxClusterBytes))
	}
	s.report(s.leftOut)
	return nil
}

// maxListed bounds the policies one log line names.
const maxListed = 20

// clusterBytes is what a Cluster whose encoding is n bytes adds to a
// DiscoveryResponse: a google.protobuf.Any in the repeated field 2.
func clusterBytes(n int) int {
	anyLen := protowire.SizeTag(1) + protowire.SizeBytes(len(resource.ClusterType)) + protowire.SizeTag(2) + protowire.SizeBytes(n)
	return protowire.SizeTag(2) + protowire.SizeBytes(anyLen)
}

// clusterService is the service of the policy a cluster was made from
// (its metadata says, DefaultsCluster's too): within one set, a policy's
// service names it, since two policies for one service would share a
// cluster and are refused.
func clusterService(c *clusterv3.Cluster) string {
	return c.GetMetadata().GetFilterMetadata()[envoy.MetadataKey].GetFields()["service"].GetStringValue()
}

// boundPolicies chooses what is served of the policies as given, so that
// no namespace's CDS response is over max: the cluster-wide set is cut
// to what fits in the longest namespace, then each namespace's own to
// what fits with those, the last of each list (the newest: the
// controller gives them oldest first) going first, as if they had not
// been created. A namespace's own policy left out lets the cluster-wide
// one for its service apply again, as a deleted one would. It returns the
// contents it made for the namespaces with policies of their own (for
// publishAll, which would make them again otherwise) and what it left
// out. The caller holds mu.
func (s *Server) boundPolicies(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) (servedGlobal []*policy.ResiliencePolicy, servedByNS map[string][]*policy.ResiliencePolicy, memo map[string]*content, left []PolicyLeftOut) {
	max := s.maxClusterBytes
	if max <= 0 {
		max = MaxClusterBytes
	}
	servedGlobal = global
	// worst: each cluster-wide policy's cost in the longest namespace,
	// an upper bound of its cost in any (longestNamespace).
	var worst map[string]int
	if c := resources(global, longestNamespace); c.err == nil {
		worst = c.cost
		if c.bytes > max {
			total, k := c.bytes, len(global)
			for k > 0 && total > max {
				k--
				total -= c.cost[global[k].Spec.Service]
			}
			servedGlobal = global[:k]
			for _, p := range global[k:] {
				left = append(left, PolicyLeftOut{Policy: p, ClusterWide: true, Bytes: c.cost[p.Spec.Service], Total: c.bytes})
			}
		}
	} // else the set does not translate: checkNames and publish say why
	servedByNS = make(map[string][]*policy.ResiliencePolicy, len(byNS))
	memo = map[string]*content{}
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		own := byNS[ns]
		c, k := fitNamespace(servedGlobal, own, ns, worst, max)
		if k > 0 {
			servedByNS[ns] = own[:k]
			memo["ns:"+ns] = c
		}
		for _, p := range own[k:] {
			left = append(left, PolicyLeftOut{Policy: p, Namespace: ns, Bytes: c.given.cost[p.Spec.Service], Total: c.given.bytes})
		}
	}
	return servedGlobal, servedByNS, memo, left
}

// fitNamespace is the content of namespace ns, served global and the
// first k of own, k as large as fits within max (len(own) when all do):
// own's last are left out first. worst is each global policy's largest
// cost (by service), for a global one that an own policy left out lets
// apply again. Costs are exact or upper bounds, so one translation of the
// chosen set is enough; it is checked all the same, and should it not fit
// (a cluster-wide set that did not translate in the longest namespace),
// more are left out, down to the cluster-wide policies of this namespace
// alone (fitGlobal).
func fitNamespace(global, own []*policy.ResiliencePolicy, ns string, worst map[string]int, max int) (*content, int) {
	c := resources(Merge(global, own), ns)
	if c.err != nil || c.bytes <= max {
		return c, len(own)
	}
	overrides := map[string]bool{}
	for _, p := range global {
		overrides[p.Spec.Service] = true
	}
	costs, total0 := c.cost, c.bytes
	total, k := c.bytes, len(own)
	for k > 0 && total > max {
		k--
		p := own[k]
		total -= costs[p.Spec.Service]
		if overrides[p.Spec.Service] {
			total += worst[p.Spec.Service] // the cluster-wide one applies again
		}
	}
	for {
		c = resources(Merge(global, own[:k]), ns)
		if c.err != nil || c.bytes <= max || k == 0 {
			break
		}
		k--
	}
	given := sizes{bytes: total0, cost: costs}
	if c.err == nil && c.bytes > max {
		c = fitGlobal(global, ns, max, c)
	}
	c.given = given // for the report: what every policy would have cost
	return c, k
}

// fitGlobal is c (the cluster-wide policies in ns) with the last of
// global left out until it is within max: a bound no sidecar is ever
// sent past, should the cluster-wide set measured in the longest
// namespace not have been (it did not translate there). What it leaves
// out is not reported: it has never been seen to happen.
func fitGlobal(global []*policy.ResiliencePolicy, ns string, max int, c *content) *content {
	total, k := c.bytes, len(global)
	for k > 0 && total > max {
		k--
		total -= c.cost[global[k].Spec.Service]
	}
	return resources(global[:k], ns)
}
