// Package envoy translates ResiliencePolicy objects into Envoy resources:
// a Cluster per policy (per-endpoint ejection as outlier detection, the
// retry budget as a circuit-breaker threshold) and one RouteConfiguration
// with a virtual host per policy (timeout and retry policy), each policy
// under a name of its own and each Host routed as the sidecar's matcher
// would route it. The
// control plane serves these over xDS and `minimesh policy export --to
// envoy` prints them; what Envoy cannot say is carried in the cluster's
// filter_metadata["minimesh.io"], so the translation loses nothing that a
// minimesh sidecar needs.
package envoy

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
)

// MetadataKey is the filter_metadata namespace of what Envoy's fields
// cannot express.
const MetadataKey = "minimesh.io"

// RouteConfigName is the one RouteConfiguration's name.
const RouteConfigName = "minimesh"

// defaultPort is the port an any-port policy's cluster dials: the port
// of plain HTTP, which is what an HTTP_PROXY client dials without one.
const defaultPort = 80

// AnyPort is the port in the cluster name of a policy that names no port
// ("outbound|0||geo.shop.svc.cluster.local"). It cannot be 80, the port
// such a cluster dials: "geo" and "geo:80" are two policies (the sidecar
// applies "geo:80" on port 80 and "geo" on every other port) and need two
// names, or the snapshot cache, which keys resources by name, keeps one.
// 0 is a number, so tooling that reads Istio-style names
// (outbound|PORT|SUBSET|HOST) still parses it, and it is never a port a
// policy names (spec.service ports are 1-65535).
const AnyPort = 0

// connectTimeout matches the sidecar's --connect-timeout default.
const connectTimeout = 5 * time.Second

// Resources are the Envoy resources of a set of policies.
type Resources struct {
	Clusters []*clusterv3.Cluster
	Routes   *routev3.RouteConfiguration
	// Skipped names the policies that have no Envoy form and why.
	Skipped []string
	// Notes name what a translated policy says that Envoy cannot.
	Notes []string
}

// Translate builds the resources of pols, whose short service names
// resolve in namespace ns (a policy's metadata.namespace wins). Each
// resource has passed its Validate(). Every policy other than "*" gets a
// cluster of its own, under a name no other policy of pols can have
// (ClusterName); two that would share one anyway (the same service twice,
// which policy.Load refuses) are an error naming both, never one of them
// dropped. A Host spelling that several policies claim goes to the virtual
// host of the one the sidecar's matcher picks (domainOwners), so that no
// domain is listed twice, which Envoy refuses.
func Translate(pols []*policy.ResiliencePolicy, ns string) (*Resources, error) {
	return translate(pols, ns, false, Options{})
}

// Options are what the resources of an export may differ in from those
// the control plane serves (TranslateFor).
type Options struct {
	// EDS makes the cluster of a Service an EDS cluster that takes the
	// Service port's endpoints (its pods) over ADS, under the resource
	// name the minimesh controller serves them by
	// (wellknown.EndpointName; docs/controlplane.md, "Endpoints (EDS)"),
	// as Istio's clusters do: so Envoy balances over the pods and ejects
	// one at a time, as a minimesh sidecar does. It needs the Envoy to
	// take ADS from the minimesh controller. Without it the cluster is
	// STRICT_DNS on the Service's name, which works anywhere but resolves
	// to the one ClusterIP (every pod only for a headless Service), so
	// Envoy sees one host: kube-proxy picks a pod per connection, and
	// outlier detection can only eject the whole Service (a note says
	// so). External hosts are STRICT_DNS either way.
	EDS bool
}

// TranslateFor builds the resources that a proxy of namespace ns is
// served: every short service name resolves in ns, whatever the policy's
// metadata.namespace, as the sidecar's matcher reads it
// (docs/policy.md, "Matching": metadata.namespace plays no part). The
// control plane serves a node the policies of its namespace and the
// cluster-wide ones, which carry the controller's namespace: resolved
// there, a cluster-wide `reviews` became reviews.<controller's
// namespace> in every namespace's resources, and an Envoy of shop would
// route shop's `reviews` to the controller namespace's Service
// (docs/controlplane.md). metadata.namespace is still carried in the
// cluster's metadata, for display.
func TranslateFor(pols []*policy.ResiliencePolicy, ns string) (*Resources, error) {
	return translate(pols, ns, true, Options{})
}

// TranslateForWith is TranslateFor with opts: the export's translation,
// which reads the policies exactly as the control plane does for the
// proxies of ns.
func TranslateForWith(pols []*policy.ResiliencePolicy, ns string, opts Options) (*Resources, error) {
	return translate(pols, ns, true, opts)
}

func translate(pols []*policy.ResiliencePolicy, ns string, reader bool, opts Options) (*Resources, error) {
	res := &Resources{Routes: &routev3.RouteConfiguration{Name: RouteConfigName}}
	dests, skipped, err := destinations(pols, ns, reader)
	if err != nil {
		return nil, err
	}
	res.Skipped = skipped
	owners := domainOwners(dests)
	ejectors := ejectionPolicies(pols, dests)
	for _, d := range dests {
		p := d.p
		c, notes, err := cluster(d, ejectors[d], opts)
		if err != nil {
			return nil, err
		}
		var domains []string
		for _, cl := range d.claims {
			if owners[cl.domain] == d {
				domains = append(domains, cl.domain)
			}
		}
		vh, vhNotes := virtualHost(p, d.name, domains)
		res.Clusters = append(res.Clusters, c)
		switch {
		case len(domains) > 0:
			res.Routes.VirtualHosts = append(res.Routes.VirtualHosts, vh)
		case d.anyPort:
			// Its cluster dials port 80, whose Hosts (bare and :80) a
			// port-80 policy takes, as in the sidecar; Envoy refuses a
			// virtual host without domains. The cluster stays: its
			// metadata carries the policy for minimesh sidecars.
			res.Notes = append(res.Notes, fmt.Sprintf("%s: service %s applies on any port, but an Envoy cluster dials one, port %d, whose Hosts (without a port and with :%d) go to the policies for port %d, as in the sidecar: no route reaches this cluster; another port needs a policy of its own", p.Metadata.Name, p.Spec.Service, defaultPort, defaultPort, defaultPort))
		default:
			// A policy for a port claims its own spelling with it,
			// which no other policy outranks; should that change, the
			// policy is said to be unrouted rather than the whole set
			// refused.
			res.Notes = append(res.Notes, fmt.Sprintf("%s: service %s: every Host it matches goes to another policy, so no route reaches its cluster", p.Metadata.Name, p.Spec.Service))
		}
		if d.anyPort && len(domains) > 0 {
			// The sidecar applies it on every port; Envoy's cluster
			// dials one, so the route takes only the Hosts that reach it.
			res.Notes = append(res.Notes, fmt.Sprintf("%s: service %s applies on any port, but an Envoy cluster dials one: this one dials port %d and routes the Hosts without a port and with :%d unless a policy names port %d (which takes both, as the sidecar reads a Host without a port as port %d); another port needs a policy of its own", p.Metadata.Name, p.Spec.Service, defaultPort, defaultPort, defaultPort, defaultPort))
		}
		res.Notes = append(res.Notes, notes...)
		res.Notes = append(res.Notes, vhNotes...)
		res.Notes = append(res.Notes, grpcNotes(p)...)
	}
	slices.SortFunc(res.Clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(res.Routes.VirtualHosts, func(a, b *routev3.VirtualHost) int { return strings.Compare(a.Name, b.Name) })
	if err := res.Routes.Validate(); err != nil {
		return nil, fmt.Errorf("route configuration: %w", err)
	}
	return res, nil
}

// destinations are the policies of pols other than "*", each with its
// cluster's name and its claims; two that would share a name are an error
// naming both. skipped says why the others have no resources. reader: ns
// is the namespace of the proxy served (TranslateFor), and resolves every
// short name; otherwise a policy's metadata.namespace wins.
func destinations(pols []*policy.ResiliencePolicy, ns string, reader bool) (dests []*destination, skipped []string, err error) {
	if ns == "" {
		ns = "default" // as the sidecar's matcher (policy.NewTable) reads ""
	}
	byName := map[string]*policy.ResiliencePolicy{}
	for _, p := range pols {
		if p.Spec.Service == policy.DefaultService {
			// The sidecar applies "*" to destinations without a policy;
			// in Envoy that is a catch-all route to a forward proxy
			// cluster, which is the deployment's choice, not ours.
			skipped = append(skipped, fmt.Sprintf("%s: service \"*\" (defaults) has no Envoy resource of its own", p.Metadata.Name))
			continue
		}
		pns := p.Metadata.Namespace
		if pns == "" || reader {
			pns = ns
		}
		d := newDestination(p, pns)
		if prev := byName[d.name]; prev != nil {
			return nil, nil, fmt.Errorf("policies %s and %s both translate to cluster %q: one service has one policy", describe(prev), describe(p), d.name)
		}
		byName[d.name] = p
		dests = append(dests, d)
	}
	return dests, skipped, nil
}

// CheckNames reports whether every policy of pols would have a cluster of
// its own over xDS, DefaultsCluster's included, without building any: the
// control plane checks a new set with it as it gets it, so that two
// policies that would share a name (and of which the snapshot cache, which
// keys resources by name, would keep one) are reported at once, naming
// both, and not only when a sidecar connects.
func CheckNames(pols []*policy.ResiliencePolicy, ns string) error {
	return checkNames(pols, ns, false)
}

// CheckNamesFor is CheckNames for the resources TranslateFor builds.
func CheckNamesFor(pols []*policy.ResiliencePolicy, ns string) error {
	return checkNames(pols, ns, true)
}

func checkNames(pols []*policy.ResiliencePolicy, ns string, reader bool) error {
	if _, _, err := destinations(pols, ns, reader); err != nil {
		return err
	}
	var defaults *policy.ResiliencePolicy
	for _, p := range pols {
		if p.Spec.Service != policy.DefaultService {
			continue
		}
		if defaults != nil {
			return fmt.Errorf("policies %s and %s both translate to cluster %q: one service has one policy", describe(defaults), describe(p), DefaultsClusterName)
		}
		defaults = p
	}
	return nil
}

// describe names a policy in an error: its name, namespace and file.
func describe(p *policy.ResiliencePolicy) string {
	s := fmt.Sprintf("%q (service %s", p.Metadata.Name, p.Spec.Service)
	if p.Metadata.Namespace != "" {
		s += ", namespace " + p.Metadata.Namespace
	}
	if p.Source != "" {
		s += ", " + p.Source
	}
	return s + ")"
}

// destination is what Translate makes of one policy: its cluster's name,
// the host and port the cluster dials, and the Host spellings it claims.
type destination struct {
	p       *policy.ResiliencePolicy
	name    string
	host    string // a Service's FQDN, or an external host as written
	service bool   // host is a Service's FQDN
	port    int
	anyPort bool
	claims  []claim
	// ns is the namespace the policy's short names resolve in.
	ns string
	// dial is the name a STRICT_DNS cluster resolves when it is not
	// host: a two-label name (httpbin.org), which the matcher reads as
	// Service httpbin of namespace org but the sidecar dials as written.
	dial string
}

// claim is a virtual host domain a policy matches, and how strongly:
// rank orders the policies that claim the same domain as the sidecar's
// matcher (policy.Table) orders them.
type claim struct {
	domain string
	rank   int
}

// portRank lifts the claims of a policy that names a port above any of a
// policy without one, as policy.Table looks up a port's policy first;
// among claims alike, policy.Spellings ranks them as the Table does.
const portRank = 1 << 20

// newDestination names p's cluster and lists the Host spellings it
// matches, reading its service as the sidecar does (policy.ServiceFQDN):
// a host of a Service's shape (name, name.ns, name.ns.svc,
// name.ns.svc.cluster.local) is that Service in all four spellings, plus
// the bare name from a pod of ns; any other host (api.example.com,
// a.b.cluster.local) is external and only itself.
func newDestination(p *policy.ResiliencePolicy, ns string) *destination {
	h, portStr, hasPort := strings.Cut(p.Spec.Service, ":")
	d := &destination{p: p, port: defaultPort, anyPort: !hasPort, ns: ns}
	namePort := AnyPort
	if hasPort {
		d.port, _ = strconv.Atoi(portStr)
		namePort = d.port
	}
	subset := ""
	if fqdn, ok := policy.ServiceFQDN(h, ns); ok {
		d.host, d.service = fqdn, true
		if strings.Count(h, ".") == 1 {
			// The sidecar dials name.ns as written, and the pod's
			// resolver finds the Service through its search path
			// (name.ns.svc.cluster.local) or, failing that, the
			// public name (httpbin.org); the FQDN would only find
			// the Service.
			d.dial = h
		}
		if strings.Contains(h, ".") {
			// geo and geo.shop.svc.cluster.local are two policies of
			// one Service (each wins the Hosts spelled like it): the
			// qualified spelling goes in Istio's subset field.
			subset = h
		}
	} else {
		d.host = h
	}
	d.name = ClusterName(namePort, subset, d.host)
	spellings, _ := policy.Spellings(p.Spec.Service, ns)
	for _, s := range spellings {
		if hasPort {
			d.claims = append(d.claims, claim{s.Host + ":" + portStr, s.Rank + portRank})
			if portStr == strconv.Itoa(defaultPort) {
				// The sidecar looks a Host without a port up as host:80
				// (proxy/outbound, onDefaultPort), as curl, Go and browsers
				// send port 80: so a port-80 policy takes the bare
				// spelling too, ahead of a policy without a port.
				d.claims = append(d.claims, claim{s.Host, s.Rank + portRank})
			}
			continue
		}
		d.claims = append(d.claims, claim{s.Host, s.Rank}, claim{s.Host + ":" + strconv.Itoa(defaultPort), s.Rank})
	}
	return d
}

// ClusterName is the cluster of a policy, Istio's way:
// outbound|PORT|SUBSET|HOST. PORT is the policy's port, or AnyPort;
// SUBSET is empty for a short Service name or an external host, and the
// service's host as written for a qualified Service spelling (geo.shop,
// geo.shop.svc, geo.shop.svc.cluster.local); HOST is the Service's FQDN or
// the external host. Distinct services give distinct names, and
// ParseClusterName reads the service back.
func ClusterName(port int, subset, host string) string {
	return fmt.Sprintf("outbound|%d|%s|%s", port, subset, host)
}

// ParseClusterName is the inverse of ClusterName: the spec.service of the
// policy a cluster was named for, without the namespace a short name was
// resolved in ("geo" for outbound|0||geo.shop.svc.cluster.local, "geo:80"
// for outbound|80||…). ok is false for a name of another form.
func ParseClusterName(name string) (service string, ok bool) {
	parts := strings.Split(name, "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[3] == "" {
		return "", false
	}
	port, err := strconv.Atoi(parts[1])
	if err != nil || port < 0 || port > 65535 {
		return "", false
	}
	host := parts[2]
	if host == "" {
		host = parts[3]
		if fqdn, isSvc := policy.ServiceFQDN(host, ""); isSvc && fqdn == host {
			host, _, _ = strings.Cut(host, ".")
		}
	}
	if port == AnyPort {
		return host, true
	}
	return host + ":" + strconv.Itoa(port), true
}

// domainOwners gives each domain that dests claim to the one whose claim
// ranks highest: the policy the sidecar would apply to a request with
// that Host. A tie (two policies the sidecar could not tell apart) goes
// to the first in service order, so that the output does not depend on
// the input's order.
func domainOwners(dests []*destination) map[string]*destination {
	owners := map[string]*destination{}
	ranks := map[string]int{}
	for _, d := range dests {
		for _, c := range d.claims {
			prev, seen := owners[c.domain]
			if !seen || c.rank > ranks[c.domain] || c.rank == ranks[c.domain] && d.p.Spec.Service < prev.p.Spec.Service {
				owners[c.domain], ranks[c.domain] = d, c.rank
			}
		}
	}
	return owners
}

// ejection is how one Service port's endpoints are ejected in the
// sidecar: with the outlierDetection of policy p, for the requests of
// every spelling (shared lists the clusters of the other spellings).
type ejection struct {
	p      *policy.ResiliencePolicy
	shared []string
}

// ejectionPolicies gives each destination of a Service the policy whose
// outlierDetection the sidecar ejects its endpoints with: the spellings
// of one Service port share one balancer and its ejections, configured
// from the policy of the Service's canonical name, its short name from a
// pod of its namespace (docs/policy.md, "Precedence rules"), whichever
// spelling a request used. Envoy keeps ejections per cluster, which a
// note says; this keeps at least the settings the sidecar's.
func ejectionPolicies(pols []*policy.ResiliencePolicy, dests []*destination) map[*destination]ejection {
	tables := map[string]*policy.Table{}
	byPort := map[string][]*destination{}
	out := map[*destination]ejection{}
	for _, d := range dests {
		if !d.service {
			continue
		}
		key := d.host + ":" + strconv.Itoa(d.port)
		byPort[key] = append(byPort[key], d)
		t := tables[d.ns]
		if t == nil {
			var same []*policy.ResiliencePolicy
			for _, o := range dests {
				if o.ns == d.ns {
					same = append(same, o.p)
				}
			}
			t = policy.NewTable(same, d.ns)
			tables[d.ns] = t
		}
		name, rest, _ := strings.Cut(d.host, ".")
		svcNS, _, _ := strings.Cut(rest, ".")
		canon := name
		if svcNS != d.ns {
			canon += "." + svcNS
		}
		e := ejection{p: t.Lookup(canon + ":" + strconv.Itoa(d.port))}
		if e.p.Spec.Service == policy.DefaultService || !slices.Contains(pols, e.p) {
			e.p = d.p // no policy of the set claims it; cannot happen, as d's own does
		}
		out[d] = e
	}
	for _, group := range byPort {
		for _, d := range group {
			e := out[d]
			for _, o := range group {
				if o != d {
					e.shared = append(e.shared, o.name)
				}
			}
			out[d] = e
		}
	}
	return out
}

// cluster is the policy's Cluster, and notes on what it cannot carry. ej
// is how the sidecar ejects the endpoints (ejectionPolicies; zero for an
// external host).
func cluster(d *destination, ej ejection, opts Options) (c *clusterv3.Cluster, notes []string, err error) {
	p, name, host, port := d.p, d.name, d.host, d.port
	addr := host
	if d.dial != "" {
		addr = d.dial
	}
	c = &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
					}}},
				}},
			}}}},
		},
	}
	spec, err := specMap(p)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s: %w", name, err)
	}
	// "spec" is the policy less its defaults (specMap), from which a
	// minimesh sidecar rebuilds it exactly (FromCluster); the rest says
	// what Envoy's fields could not.
	meta := map[string]any{"policy": p.Metadata.Name, "service": p.Spec.Service, "spec": spec}
	if p.Metadata.Namespace != "" {
		meta["namespace"] = p.Metadata.Namespace
	}
	if r := p.Spec.Retries; r != nil && r.Attempts > 0 {
		// Envoy's budget is a share of active requests with a floor of
		// concurrent retries; minimesh's is a share of requests per second
		// with a floor per second. The ratio carries over; the floor is the
		// nearest Envoy has.
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
				BudgetPercent:       &typev3.Percent{Value: r.Budget.Ratio * 100},
				MinRetryConcurrency: wrapperspb.UInt32(uint32(r.Budget.MinPerSecond)),
			},
		}}}
		meta["retryBudget"] = map[string]any{"ratio": r.Budget.Ratio, "minPerSecond": r.Budget.MinPerSecond}
		meta["retryOn"] = strs(r.RetryOn.Strings())
	}
	if d.service && opts.EDS {
		// The pods of the Service port, from the minimesh controller.
		svc, rest, _ := strings.Cut(host, ".")
		svcNS, _, _ := strings.Cut(rest, ".")
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.LoadAssignment = nil
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
			ServiceName: wellknown.EndpointName(svc, svcNS, port),
		}
	} else if d.service && d.dial != "" {
		notes = append(notes, fmt.Sprintf("%s: the cluster is STRICT_DNS on %s as written, as the sidecar dials it (the pod's resolver finds Service %s through its search path, else the name outside the cluster); with a Service there it resolves to its ClusterIP: Envoy balances and ejects that one host, where a minimesh sidecar balances over the pods; export with --eds for clusters that take the pods from the minimesh controller", p.Metadata.Name, addr, host))
	} else if d.service {
		notes = append(notes, fmt.Sprintf("%s: the cluster is STRICT_DNS on %s, which resolves to the Service's ClusterIP (to every pod only for a headless Service): Envoy balances and ejects that one host, and kube-proxy picks a pod per connection, where a minimesh sidecar balances over the pods and ejects one at a time; export with --eds for clusters that take the pods from the minimesh controller", p.Metadata.Name, host))
	}
	if d.dial != "" {
		svc, rest, _ := strings.Cut(host, ".")
		svcNS, _, _ := strings.Cut(rest, ".")
		notes = append(notes, fmt.Sprintf("%s: service %s: a two-label name is read as Service %s in namespace %s (its domains are that Service's spellings), while the sidecar dials %s as written; with --eds the cluster takes that Service's pods, and has none when no such Service exists", p.Metadata.Name, p.Spec.Service, svc, svcNS, d.dial))
	}
	odPolicy := p
	if ej.p != nil {
		odPolicy = ej.p
	}
	if od := odPolicy.Spec.OutlierDetection; od != nil && p.Spec.CircuitBreaker != nil {
		var odNotes []string
		// The settings are the canonical policy's; what counts as a
		// failure is this policy's failOn, as the sidecar judges each
		// request's outcome by its own policy.
		c.OutlierDetection, odNotes = outlier(p.Metadata.Name, od, p.Spec.CircuitBreaker.FailOn)
		notes = append(notes, odNotes...)
		if odPolicy != p {
			notes = append(notes, fmt.Sprintf("%s: outlierDetection: the sidecar ejects the endpoints of %s port %d for every spelling with the outlierDetection of policy %s (service %s, the Service's short name), so this cluster's outlier_detection is that one's, not this policy's", p.Metadata.Name, host, port, odPolicy.Metadata.Name, odPolicy.Spec.Service))
		}
	}
	if len(ej.shared) > 0 && odPolicy.Spec.OutlierDetection.Enabled() {
		notes = append(notes, fmt.Sprintf("%s: outlierDetection: the sidecar keeps one ejection state for %s port %d, whichever spelling a request used; Envoy keeps ejections per cluster, so a pod this cluster ejects is still used by %s", p.Metadata.Name, host, port, strings.Join(ej.shared, ", ")))
	}
	if cb := p.Spec.CircuitBreaker; cb != nil {
		// Envoy's circuit_breakers cap connections and requests in flight;
		// nothing in Envoy stops calling a whole destination because it
		// fails. The breaker lives on in the metadata, for minimesh
		// sidecars.
		notes = append(notes, fmt.Sprintf("%s: circuitBreaker (%d failures, open %s): Envoy has no failure breaker for a whole destination (its circuit_breakers cap connections and requests in flight; outlier_detection ejects single hosts); the cluster's metadata carries it for minimesh sidecars", p.Metadata.Name, cb.ConsecutiveFailures, cb.OpenTimeout))
		b := map[string]any{
			"consecutiveFailures": cb.ConsecutiveFailures,
			"openTimeout":         cb.OpenTimeout.String(),
			"halfOpenRequests":    cb.HalfOpenRequests,
			"failOn":              strs(cb.FailOn.Strings()),
		}
		if fr := cb.FailureRate; fr != nil {
			b["failureRate"] = map[string]any{"threshold": fr.Threshold, "minRequests": fr.MinRequests, "window": fr.Window.String()}
		}
		meta["circuitBreaker"] = b
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s metadata: %w", name, err)
	}
	c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: st}}
	if err := c.Validate(); err != nil {
		return nil, nil, fmt.Errorf("cluster %s: %w", name, err)
	}
	return c, notes, nil
}

// sweep is outlier detection's interval. Envoy ejects a host as soon as
// its run of failures is complete, but brings ejected hosts back only at
// its sweeps, once per interval: the interval is the granularity of every
// ejection time. One second keeps that error small against ejections of
// seconds to minutes, at the cost of one cheap sweep per second per
// cluster. Envoy's success-rate and failure-percentage detectors, which
// would analyse at each sweep too, are not enforced.
//
// The interval also paces how a host's ejection count falls: Envoy lowers
// it by one at each sweep that finds the host back and healthy
// (arch_overview "Outlier detection", ejection algorithm), minimesh once
// per baseEjectionTime the endpoint spends back (proxy/balancer). With a
// 1 s sweep a host back for a few seconds is at the base again, where
// minimesh would eject it for longer; an interval of baseEjectionTime
// would keep minimesh's pace, but make every ejection last up to one
// base longer, which is the larger error for a pod that failed once. So
// the sweep stays at 1 s, and a note says what it changes.
const sweep = time.Second

// outlier is outlierDetection as Envoy's outlier_detection, where Envoy
// can say it: consecutive failures of the classes failOn names,
// base_ejection_time × the ejections so far up to max_ejection_time, and
// max_ejection_percent with always_eject_one_host, since minimesh may
// always eject one endpoint (docs/policy.md) and Envoy ejects past
// max_ejection_percent only with it (default false: a Service of one
// pod at 50 % would never eject). The ejection count falls faster than
// minimesh's (sweep), which a note says. Nil when ejection is off, or
// when failOn names nothing Envoy counts; notes says what is lost.
func outlier(name string, od *policy.OutlierDetection, failOn policy.Conditions) (o *clusterv3.OutlierDetection, notes []string) {
	if !od.Enabled() {
		return nil, nil
	}
	n := wrapperspb.UInt32(uint32(od.ConsecutiveFailures))
	all := wrapperspb.UInt32(100)
	o = &clusterv3.OutlierDetection{
		BaseEjectionTime:   durationpb.New(od.BaseEjectionTime),
		MaxEjectionTime:    durationpb.New(od.MaxEjectionTime),
		MaxEjectionPercent: wrapperspb.UInt32(uint32(od.MaxEjectionPercent)),
		AlwaysEjectOneHost: wrapperspb.Bool(true),
		Interval:           durationpb.New(sweep),
		// Only what failOn names ejects: every detector is written out
		// unenforced (several default to 100), and the chosen ones are
		// enforced below.
		EnforcingConsecutive_5Xx:               wrapperspb.UInt32(0),
		EnforcingConsecutiveGatewayFailure:     wrapperspb.UInt32(0),
		EnforcingConsecutiveLocalOriginFailure: wrapperspb.UInt32(0),
		EnforcingSuccessRate:                   wrapperspb.UInt32(0),
		EnforcingLocalOriginSuccessRate:        wrapperspb.UInt32(0),
		EnforcingFailurePercentage:             wrapperspb.UInt32(0),
		EnforcingFailurePercentageLocalOrigin:  wrapperspb.UInt32(0),
	}
	external := true
	switch {
	case failOn.Has(policy.Class5xx):
		o.Consecutive_5Xx, o.EnforcingConsecutive_5Xx = n, all
	case failOn.Has(policy.ClassGatewayError):
		o.ConsecutiveGatewayFailure, o.EnforcingConsecutiveGatewayFailure = n, all
	default:
		external = false
	}
	var localNamed, localLeft []string
	for _, c := range []struct {
		class policy.Class
		name  string
	}{{policy.ClassConnectFailure, "connect-failure"}, {policy.ClassReset, "reset"}, {policy.ClassTimeout, "timeout"}} {
		if failOn.Has(c.class) {
			localNamed = append(localNamed, c.name)
		} else {
			localLeft = append(localLeft, c.name)
		}
	}
	switch {
	case external && len(localLeft) == 0:
		// Envoy's default mode: local-origin failures (connect failure,
		// reset, timeout) count as 5xx or gateway errors in the same run,
		// which is minimesh's one run of whatever failOn names.
	case external:
		// Split, so that the local-origin failures failOn does not name
		// do not count; those it names get a run of their own.
		o.SplitExternalLocalOriginErrors = true
		if len(localNamed) > 0 {
			o.ConsecutiveLocalOriginFailure, o.EnforcingConsecutiveLocalOriginFailure = n, all
			notes = append(notes, fmt.Sprintf("%s: outlierDetection: Envoy counts failed responses and local-origin failures (%s) in separate runs of %d, and its local-origin run also counts %s; minimesh counts one run of what failOn names", name, strings.Join(localNamed, ", "), od.ConsecutiveFailures, strings.Join(localLeft, ", ")))
		}
	case len(localNamed) > 0:
		o.SplitExternalLocalOriginErrors = true
		o.ConsecutiveLocalOriginFailure, o.EnforcingConsecutiveLocalOriginFailure = n, all
		if len(localLeft) > 0 {
			notes = append(notes, fmt.Sprintf("%s: outlierDetection: Envoy's local-origin run also counts %s, which failOn does not name", name, strings.Join(localLeft, ", ")))
		}
	}
	local := len(localNamed) > 0
	var left []string
	for _, code := range failOn.Codes {
		if !(failOn.Has(policy.Class5xx) && code >= 500 && code <= 599 || failOn.Has(policy.ClassGatewayError) && code >= 502 && code <= 504) {
			left = append(left, strconv.Itoa(code))
		}
	}
	if len(left) > 0 {
		notes = append(notes, fmt.Sprintf("%s: failOn %s: outlier detection counts 5xx or gateway errors and local-origin failures, no single status code", name, strings.Join(left, ", ")))
	}
	if !external && !local {
		return nil, append(notes, fmt.Sprintf("%s: outlierDetection: failOn names nothing Envoy's outlier detection counts, so no outlier_detection", name))
	}
	if od.BaseEjectionTime%sweep != 0 || od.MaxEjectionTime%sweep != 0 {
		notes = append(notes, fmt.Sprintf("%s: outlierDetection ejection times %s-%s: Envoy brings hosts back at its 1s sweeps, so an ejection lasts up to a second longer", name, od.BaseEjectionTime, od.MaxEjectionTime))
	}
	if od.BaseEjectionTime > sweep {
		notes = append(notes, fmt.Sprintf("%s: outlierDetection: Envoy lowers a host's ejection count by one at each %s sweep it spends back, minimesh once per baseEjectionTime (%s), %.3g times as slowly: a pod that fails again after some time back is ejected for less long in Envoy than in minimesh (an interval of %s would keep minimesh's pace, and make each ejection last up to %s longer)", name, sweep, od.BaseEjectionTime, float64(od.BaseEjectionTime)/float64(sweep), od.BaseEjectionTime, od.BaseEjectionTime))
	}
	return o, notes
}

// idempotent are the methods minimesh retries whatever the outcome that
// retryOn names (proxy/outbound, idempotent); the route of such requests
// matches them on :method.
var idempotent = []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}

// The names of the routes of a virtual host whose retries depend on the
// request (retryRoutes).
const (
	routeIdempotent     = "idempotent-method"
	routeIdempotencyKey = "idempotency-key"
	routeGRPC           = "grpc"
	routeOther          = "other"
)

// virtualHost is the policy's routes: its timeout and retry policy, for
// the domains it owns. notes say what Envoy does differently.
func virtualHost(p *policy.ResiliencePolicy, clusterName string, domains []string) (vh *routev3.VirtualHost, notes []string) {
	var rounded []string
	ms := func(field string, d time.Duration) time.Duration {
		e := envoyDuration(d)
		if e != d {
			rounded = append(rounded, fmt.Sprintf("%s %s", field, d))
		}
		return e
	}
	// No timeout is no timeout, as in the sidecar (Envoy's default is 15 s).
	timeout := ms("timeout", p.Spec.Timeout)
	action := func(rp *routev3.RetryPolicy) *routev3.RouteAction {
		return &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: clusterName},
			Timeout:          durationpb.New(timeout),
			RetryPolicy:      rp,
		}
	}
	var routes []*routev3.Route
	if r := p.Spec.Retries; r != nil && r.Attempts > 0 {
		on, onNotes := retryOn(p.Metadata.Name, r.RetryOn)
		notes = append(notes, onNotes...)
		base, maxWait := ms("backoff.base", r.Backoff.Base), ms("backoff.max", r.Backoff.Max)
		var perTry time.Duration
		if r.PerTryTimeout > 0 {
			perTry = ms("perTryTimeout", r.PerTryTimeout)
		}
		retry := func(on string, codes []int) *routev3.RetryPolicy {
			if on == "" {
				return perTryOnly(perTry)
			}
			rp := &routev3.RetryPolicy{
				RetryOn:    on,
				NumRetries: wrapperspb.UInt32(uint32(r.Attempts)),
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
					BaseInterval: durationpb.New(base),
					MaxInterval:  durationpb.New(maxWait),
				},
				RetryHostPredicate:            previousHosts(),
				HostSelectionRetryMaxAttempts: hostSelectionAttempts,
			}
			if perTry > 0 {
				rp.PerTryTimeout = durationpb.New(perTry)
			}
			for _, code := range codes {
				rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(code))
			}
			return rp
		}
		routes = retryRoutes(r.RetryOn, on, retry, action)
		for _, rt := range routes {
			if rt.GetRoute().GetRetryPolicy().GetNumRetries().GetValue() > 0 {
				// Envoy would otherwise buffer a body for retries up to
				// its connection buffer (1 MiB by default) and retry it.
				rt.RequestBodyBufferLimit = wrapperspb.UInt64(maxRetryBody)
			}
		}
		notes = append(notes, fmt.Sprintf("%s: retries.backoff (%s-%s): Envoy's retry_back_off waits before retry n a random time in [0, (2^n-1)·base), at most max; the sidecar waits one in (0, min(max, base·2^(n-1))]", p.Metadata.Name, r.Backoff.Base, r.Backoff.Max))
	} else {
		var rp *routev3.RetryPolicy
		if r != nil && r.PerTryTimeout > 0 {
			rp = perTryOnly(ms("perTryTimeout", r.PerTryTimeout))
		}
		routes = []*routev3.Route{{Match: prefixAll(), Action: &routev3.Route_Route{Route: action(rp)}}}
	}
	if len(rounded) > 0 {
		notes = append(notes, fmt.Sprintf("%s: %s: Envoy counts these in whole milliseconds (a timeout of 0 is none), so they are rounded up to the next millisecond", p.Metadata.Name, strings.Join(rounded, ", ")))
	}
	return &routev3.VirtualHost{Name: clusterName, Domains: domains, Routes: routes}, notes
}

// maxRetryBody is the largest request body the sidecar holds to send
// again (docs/policy.md, "Retries"); a larger one is streamed and not
// retried, which is what Envoy does with a body past a retrying route's
// request_body_buffer_limit.
const maxRetryBody = 64 << 10

// hostSelectionAttempts is how many times Envoy picks a host again for a
// retry when previousHosts rejects the one it picked (after which it takes
// the last pick): a few, so that a retry lands on another endpoint unless
// nearly every endpoint was tried, at the cost of a few more picks.
const hostSelectionAttempts = 3

// previousHosts is the retry host predicate that makes a retry pick a host
// the request has not tried yet (envoy.retry_host_predicates.previous_hosts),
// as a minimesh sidecar's retry picks another endpoint than its last try's
// (proxy/balancer). Envoy's default may pick the failed host again.
func previousHosts() []*routev3.RetryPolicy_RetryHostPredicate {
	cfg, err := anypb.New(&previoushostsv3.PreviousHostsPredicate{})
	if err != nil {
		panic(err) // an empty registered message always marshals
	}
	return []*routev3.RetryPolicy_RetryHostPredicate{{
		Name:       "envoy.retry_host_predicates.previous_hosts",
		ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: cfg},
	}}
}

// perTryOnly is the retry policy of a route that retries nothing but
// whose one try has a time limit (nil without one). attempts: 0 still
// limits the one try (docs/policy.md); Envoy's per_try_timeout lives in
// the retry policy and applies whenever one is set: num_retries 0 and no
// retry_on retry nothing (not even for a client's x-envoy-max-retries),
// and the one try is limited.
func perTryOnly(perTry time.Duration) *routev3.RetryPolicy {
	if perTry <= 0 {
		return nil
	}
	return &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(0), PerTryTimeout: durationpb.New(perTry)}
}

// retryRoutes are the routes of a policy with retries, which say
// minimesh's rule of which requests are retried (docs/policy.md,
// "Retries"): on every outcome retryOn names, a request safe to repeat
// (an idempotent method, an Idempotency-Key); a request never sent (a
// connect failure, an HTTP/2 stream refused unprocessed) whatever its
// method; a gRPC call also on the gRPC codes retryOn names, which declare
// it safe to repeat. Envoy's retriable_request_headers, which the export
// used to write, cannot: a request that matches none of them is not
// retried at all, so a POST never sent was not retried where minimesh
// sends it again. A route's header matches must all match, and the first
// route that matches is the request's, so each safe kind of request has
// a route of its own with its conditions, before a catch-all with the
// conditions of a request never sent. full is retry_on for all of
// retryOn's conditions; retry makes a route's retry policy (nil: none).
func retryRoutes(c policy.Conditions, full string, retry func(on string, codes []int) *routev3.RetryPolicy, action func(*routev3.RetryPolicy) *routev3.RouteAction) []*routev3.Route {
	neverSent, _ := retryOn("", policy.Conditions{Classes: c.Classes & policy.ClassConnectFailure})
	if full == neverSent {
		// Nothing but what any request is retried on: one route.
		return []*routev3.Route{{Match: prefixAll(), Action: &routev3.Route_Route{Route: action(retry(full, nil))}}}
	}
	route := func(name string, rp *routev3.RetryPolicy, headers ...*routev3.HeaderMatcher) *routev3.Route {
		m := prefixAll()
		m.Headers = headers
		return &routev3.Route{Name: name, Match: m, Action: &routev3.Route_Route{Route: action(rp)}}
	}
	// Naming a gRPC code declares the gRPC calls that fail with it safe
	// to repeat (docs/grpc.md, "Retries"), not on retryOn's other
	// conditions.
	grpcOn, _ := retryOn("", policy.Conditions{Classes: c.Classes & policy.ClassConnectFailure, GRPC: c.GRPC})
	var routes []*routev3.Route
	if full != grpcOn {
		// A request safe to repeat is retried on all of retryOn, the
		// gRPC codes too, which only a gRPC call's answer carries: a
		// gRPC call (a POST) with an Idempotency-Key is retried on them
		// as well. (When retryOn is the gRPC codes and connect-failure
		// alone, the gRPC route has it all, and any other request is
		// retried only when never sent: no routes of their own.)
		routes = append(routes,
			route(routeIdempotent, retry(full, c.Codes), &routev3.HeaderMatcher{
				Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					// Envoy's safe_regex matches the whole value.
					MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: strings.Join(idempotent, "|")}},
				}},
			}),
			// A value, not mere presence: the sidecar does not take an
			// empty Idempotency-Key as one.
			route(routeIdempotencyKey, retry(full, c.Codes), &routev3.HeaderMatcher{
				Name: "idempotency-key",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}},
				}},
			}))
	}
	if grpcOn != neverSent {
		// What the sidecar takes for gRPC (proxy/outbound, isGRPC):
		// application/grpc alone or with +codec or parameters, in any
		// case; not grpc-web (application/grpc-web+proto), whose status
		// travels in the body.
		routes = append(routes, route(routeGRPC, retry(grpcOn, nil), &routev3.HeaderMatcher{
			Name: "content-type", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: grpcContentType}},
			}},
		}))
	}
	return append(routes, route(routeOther, retry(neverSent, nil)))
}

// grpcContentType is the content-type of a gRPC call, as Envoy's
// safe_regex (RE2) reads it: the whole value.
const grpcContentType = `(?i)application/grpc([+;].*)?`

func prefixAll() *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
}

// envoyDuration is d as Envoy reads a route's timeouts and retry back-off:
// in whole milliseconds, truncated, where a timeout of 0 means none. So a
// sub-millisecond timeout would silently become no timeout at all; d is
// rounded up to the next millisecond instead (the nearest limit Envoy has
// that still limits). Within the last millisecond of time.Duration's
// range, where there is no next one, it is the last whole millisecond:
// rounding up there wrapped to a negative timeout (Validate bounds the
// timeouts far below, but the translation takes any policy).
func envoyDuration(d time.Duration) time.Duration {
	const last = math.MaxInt64 / time.Millisecond * time.Millisecond
	if d > last {
		return last
	}
	if r := d % time.Millisecond; r != 0 {
		return d - r + time.Millisecond
	}
	return d
}

// retryOn is Envoy's retry_on for minimesh's classes (status codes go in
// retriable_status_codes), and notes on what it retries beyond them.
//
// Envoy has no condition for a try that ran out of time: its router
// retries a per_try_timeout expiry as a local reset, under "reset",
// "5xx" or "gateway-error" (source/common/router/retry_state_impl.cc,
// wouldRetryFromReset). "reset" is the narrowest, as it retries no
// response ("gateway-error" would also retry 502, 503 and 504 responses);
// but it, like "5xx" and "gateway-error", also retries a connection that
// is reset or could not be made. A note names what retryOn did not.
func retryOn(name string, c policy.Conditions) (string, []string) {
	var on []string
	add := func(s string) {
		if !slices.Contains(on, s) {
			on = append(on, s)
		}
	}
	if c.Has(policy.Class5xx) {
		add("5xx")
	}
	if c.Has(policy.ClassGatewayError) {
		add("gateway-error")
	}
	if c.Has(policy.ClassConnectFailure) {
		// minimesh's connect-failure is "never sent": it also covers an
		// HTTP/2 stream the upstream refused unprocessed (REFUSED_STREAM),
		// which Envoy names apart (docs/grpc.md, "Retries").
		add("connect-failure")
		add("refused-stream")
	}
	if c.Has(policy.ClassReset) || c.Has(policy.ClassTimeout) && !c.Has(policy.Class5xx) && !c.Has(policy.ClassGatewayError) {
		add("reset")
	}
	if len(c.Codes) > 0 {
		add("retriable-status-codes")
	}
	for n := range policy.GRPCCodeNames {
		if name, ok := envoyGRPCRetryOn[n]; ok && c.GRPCStatus(n) {
			add(name)
		}
	}
	var notes []string
	var broad []string // the conditions that retry every local-origin failure
	for _, b := range []string{"5xx", "gateway-error", "reset"} {
		if slices.Contains(on, b) {
			broad = append(broad, b)
		}
	}
	if len(broad) > 0 {
		var extra []string
		for _, lc := range []struct {
			class policy.Class
			what  string
		}{
			{policy.ClassConnectFailure, "connect-failure (a connection that could not be made)"},
			{policy.ClassReset, "reset (a connection closed or reset before the response)"},
			{policy.ClassTimeout, "timeout (a try that ran out of time)"},
		} {
			if !c.Has(lc.class) {
				extra = append(extra, lc.what)
			}
		}
		if len(extra) > 0 {
			notes = append(notes, fmt.Sprintf("%s: retryOn %s: Envoy's retry_on %s also retries %s, which retryOn does not name", name, strings.Join(c.Strings(), ", "), strings.Join(broad, ", "), strings.Join(extra, " and ")))
		}
	}
	return strings.Join(on, ","), notes
}

// envoyGRPCRetryOn are the gRPC codes Envoy's retry_on can name (its gRPC
// retry conditions, x-envoy-retry-grpc-on), by value.
var envoyGRPCRetryOn = map[int]string{1: "cancelled", 4: "deadline-exceeded", 8: "resource-exhausted", 13: "internal", 14: "unavailable"}

// grpcNotes are what a policy's gRPC conditions ask that Envoy's
// resources do not carry.
func grpcNotes(p *policy.ResiliencePolicy) []string {
	var notes []string
	if r := p.Spec.Retries; r != nil && r.Attempts > 0 && r.RetryOn.GRPC != 0 {
		var left []string
		for n, name := range policy.GRPCCodeNames {
			if _, ok := envoyGRPCRetryOn[n]; !ok && r.RetryOn.GRPCStatus(n) {
				left = append(left, name)
			}
		}
		if len(left) > 0 {
			notes = append(notes, fmt.Sprintf("%s: retryOn %s: Envoy retries only cancelled, deadline-exceeded, internal, resource-exhausted and unavailable", p.Metadata.Name, strings.Join(left, ", ")))
		}
		notes = append(notes, fmt.Sprintf("%s: retryOn gRPC codes: Envoy also replays a client stream that fits its buffer; minimesh sends again only a one-message call", p.Metadata.Name))
	}
	if cb := p.Spec.CircuitBreaker; cb != nil && cb.FailOn.GRPC != 0 && p.Spec.OutlierDetection.Enabled() {
		var named []string
		for n, name := range policy.GRPCCodeNames {
			if cb.FailOn.GRPCStatus(n) {
				named = append(named, name)
			}
		}
		notes = append(notes, fmt.Sprintf("%s: failOn %s: outlier detection counts a gRPC call by its HTTP equivalent only (as minimesh does without these), no gRPC code of its own", p.Metadata.Name, strings.Join(named, ", ")))
	}
	return notes
}

// specMap is the policy's spec in its JSON form (readable durations),
// without the values the decoder would default to anyway
// (omitDefaults): a sidecar decodes it to the same spec.
func specMap(p *policy.ResiliencePolicy) (map[string]any, error) {
	b, err := json.Marshal(p.Spec)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	omitDefaults(m, &p.Spec)
	return m, nil
}

// omitDefaults deletes from m, the JSON form of s, every field whose
// value is the one the decoder gives it when it is not written, and
// every block left empty. A field added to the spec later is then sent
// only by the policies that set it: a sidecar built before 2026-12-06
// refuses a whole response for a field it does not know, and the
// defaulted spec carried every field with a default, so after a
// controller upgrade every older sidecar refused every policy
// (docs/install.md, "Upgrade"). Of two bounds the decoder derives
// from each other (backoff's, the ejection times), neither is omitted
// unless both are at their defaults, so none is ever derived from one
// written alone.
func omitDefaults(m map[string]any, s *policy.Spec) {
	block := func(key string) map[string]any {
		sub, _ := m[key].(map[string]any)
		return sub
	}
	drop := func(sub map[string]any, cond bool, keys ...string) {
		if cond {
			for _, k := range keys {
				delete(sub, k)
			}
		}
	}
	if r := s.Retries; r != nil {
		if sub := block("retries"); sub != nil {
			// attempts stays: the decoder requires it.
			drop(sub, equalConditions(r.RetryOn, policy.DefaultRetryOn), "retryOn")
			drop(sub, r.Backoff == policy.Backoff{Base: policy.DefaultBackoffBase, Max: policy.DefaultBackoffMax}, "backoff")
			if budget, _ := sub["budget"].(map[string]any); budget != nil {
				drop(budget, r.Budget.Ratio == policy.DefaultBudgetRatio, "ratio")
				drop(budget, r.Budget.MinPerSecond == policy.DefaultBudgetMinPerSecond, "minPerSecond")
				drop(sub, len(budget) == 0, "budget")
			}
		}
	}
	if cb := s.CircuitBreaker; cb != nil {
		if sub := block("circuitBreaker"); sub != nil {
			def := policy.DefaultCircuitBreaker()
			drop(sub, cb.ConsecutiveFailures == def.ConsecutiveFailures, "consecutiveFailures")
			drop(sub, cb.OpenTimeout == def.OpenTimeout, "openTimeout")
			drop(sub, cb.HalfOpenRequests == def.HalfOpenRequests, "halfOpenRequests")
			drop(sub, equalConditions(cb.FailOn, def.FailOn), "failOn")
			drop(m, len(sub) == 0, "circuitBreaker")
		}
	}
	if od := s.OutlierDetection; od != nil {
		if sub := block("outlierDetection"); sub != nil {
			def := policy.DefaultOutlierDetection()
			drop(sub, od.ConsecutiveFailures == def.ConsecutiveFailures, "consecutiveFailures")
			drop(sub, od.BaseEjectionTime == def.BaseEjectionTime && od.MaxEjectionTime == def.MaxEjectionTime, "baseEjectionTime", "maxEjectionTime")
			drop(sub, od.MaxEjectionPercent == def.MaxEjectionPercent, "maxEjectionPercent")
			drop(m, len(sub) == 0, "outlierDetection")
		}
	}
}

func equalConditions(a, b policy.Conditions) bool {
	return a.Classes == b.Classes && a.GRPC == b.GRPC && slices.Equal(a.Codes, b.Codes)
}

func strs(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
