// Package envoy translates ResiliencePolicy objects into Envoy resources:
// a Cluster per destination (circuit breaker as outlier detection, the
// retry budget as a circuit-breaker threshold) and one RouteConfiguration
// with a virtual host per destination (timeout and retry policy). The
// control plane serves these over xDS and `minimesh policy export --to
// envoy` prints them; what Envoy cannot say is carried in the cluster's
// filter_metadata["minimesh.io"], so the translation loses nothing that a
// minimesh sidecar needs.
package envoy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/minimesh/minimesh/policy"
)

// MetadataKey is the filter_metadata namespace of what Envoy's fields
// cannot express.
const MetadataKey = "minimesh.io"

// RouteConfigName is the one RouteConfiguration's name.
const RouteConfigName = "minimesh"

// defaultPort is a service's port when its policy names none: the port
// of plain HTTP, which is what an HTTP_PROXY client dials without one.
const defaultPort = 80

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
// resolve in namespace ns. Each resource has passed its Validate().
func Translate(pols []*policy.ResiliencePolicy, ns string) (*Resources, error) {
	res := &Resources{Routes: &routev3.RouteConfiguration{Name: RouteConfigName}}
	for _, p := range pols {
		if p.Spec.Service == policy.DefaultService {
			// The sidecar applies "*" to destinations without a policy;
			// in Envoy that is a catch-all route to a forward proxy
			// cluster, which is the deployment's choice, not ours.
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: service \"*\" (defaults) has no Envoy resource of its own", p.Metadata.Name))
			continue
		}
		pns := p.Metadata.Namespace
		if pns == "" {
			pns = ns
		}
		host, port, domains := names(p.Spec.Service, pns)
		name := fmt.Sprintf("outbound|%d||%s", port, host)
		c, err := cluster(p, name, host, port)
		if err != nil {
			return nil, err
		}
		res.Clusters = append(res.Clusters, c)
		res.Routes.VirtualHosts = append(res.Routes.VirtualHosts, virtualHost(p, name, domains))
		res.Notes = append(res.Notes, grpcNotes(p)...)
	}
	slices.SortFunc(res.Clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(res.Routes.VirtualHosts, func(a, b *routev3.VirtualHost) int { return strings.Compare(a.Name, b.Name) })
	if err := res.Routes.Validate(); err != nil {
		return nil, fmt.Errorf("route configuration: %w", err)
	}
	return res, nil
}

// names returns the service's cluster-local FQDN, its port and every
// spelling an app may use for it in the Host header, as the sidecar
// matches them.
func names(service, ns string) (host string, port int, domains []string) {
	h, p, hasPort := strings.Cut(service, ":")
	port = defaultPort
	if hasPort {
		port, _ = strconv.Atoi(p)
	}
	labels := strings.Split(strings.TrimSuffix(strings.TrimSuffix(h, ".cluster.local"), ".svc"), ".")
	var spellings []string
	switch len(labels) {
	case 1:
		host = labels[0] + "." + ns + ".svc.cluster.local"
		spellings = []string{labels[0], labels[0] + "." + ns, labels[0] + "." + ns + ".svc", host}
	case 2:
		host = labels[0] + "." + labels[1] + ".svc.cluster.local"
		spellings = []string{h, labels[0] + "." + labels[1] + ".svc", host}
	default:
		host = h
		spellings = []string{h}
	}
	for _, s := range spellings {
		domains = append(domains, s+":"+strconv.Itoa(port))
		if !hasPort && port == defaultPort {
			domains = append(domains, s)
		}
	}
	return host, port, domains
}

func cluster(p *policy.ResiliencePolicy, name, host string, port int) (*clusterv3.Cluster, error) {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
					}}},
				}},
			}}}},
		},
	}
	spec, err := specMap(p)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", name, err)
	}
	// "spec" is the whole policy, so that a minimesh sidecar rebuilds it
	// exactly (FromCluster); the rest says what Envoy's fields could not.
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
	if cb := p.Spec.CircuitBreaker; cb != nil {
		c.OutlierDetection = outlier(cb)
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
		return nil, fmt.Errorf("cluster %s metadata: %w", name, err)
	}
	c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: st}}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", name, err)
	}
	return c, nil
}

// outlier maps the breaker onto outlier detection as closely as its
// meaning allows: Envoy ejects hosts, not the destination, for
// base_ejection_time, and brings them back without probes. max_ejection_
// time equal to the base keeps the ejection from growing, as minimesh's
// open time does not grow.
func outlier(cb *policy.CircuitBreaker) *clusterv3.OutlierDetection {
	n := wrapperspb.UInt32(uint32(cb.ConsecutiveFailures))
	all := wrapperspb.UInt32(100)
	none := wrapperspb.UInt32(0)
	od := &clusterv3.OutlierDetection{
		BaseEjectionTime:   durationpb.New(cb.OpenTimeout),
		MaxEjectionTime:    durationpb.New(cb.OpenTimeout),
		MaxEjectionPercent: all,
		Interval:           durationpb.New(time.Second),
		// Only what failOn names ejects.
		EnforcingConsecutive_5Xx:           none,
		EnforcingConsecutiveGatewayFailure: none,
		EnforcingSuccessRate:               none,
	}
	switch {
	case cb.FailOn.Has(policy.Class5xx):
		od.Consecutive_5Xx, od.EnforcingConsecutive_5Xx = n, all
	case cb.FailOn.Has(policy.ClassGatewayError):
		od.ConsecutiveGatewayFailure, od.EnforcingConsecutiveGatewayFailure = n, all
	}
	if cb.FailOn.Has(policy.ClassConnectFailure) || cb.FailOn.Has(policy.ClassReset) || cb.FailOn.Has(policy.ClassTimeout) {
		od.SplitExternalLocalOriginErrors = true
		od.ConsecutiveLocalOriginFailure, od.EnforcingConsecutiveLocalOriginFailure = n, all
	}
	if fr := cb.FailureRate; fr != nil {
		od.FailurePercentageThreshold = wrapperspb.UInt32(uint32(fr.Threshold*100 + 0.5))
		od.EnforcingFailurePercentage = all
		od.FailurePercentageRequestVolume = wrapperspb.UInt32(uint32(fr.MinRequests))
		od.FailurePercentageMinimumHosts = wrapperspb.UInt32(1)
		od.Interval = durationpb.New(fr.Window)
	}
	return od
}

// idempotent are the methods minimesh retries; Envoy's
// retriable_request_headers restricts retries to them, or to requests
// with an Idempotency-Key.
var idempotent = []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}

func virtualHost(p *policy.ResiliencePolicy, clusterName string, domains []string) *routev3.VirtualHost {
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: clusterName},
		// No timeout is no timeout, as in the sidecar (Envoy's default is 15 s).
		Timeout: durationpb.New(p.Spec.Timeout),
	}
	if r := p.Spec.Retries; r != nil && r.Attempts > 0 {
		rp := &routev3.RetryPolicy{
			RetryOn:    retryOn(r.RetryOn),
			NumRetries: wrapperspb.UInt32(uint32(r.Attempts)),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
				BaseInterval: durationpb.New(r.Backoff.Base),
				MaxInterval:  durationpb.New(r.Backoff.Max),
			},
		}
		if r.PerTryTimeout > 0 {
			rp.PerTryTimeout = durationpb.New(r.PerTryTimeout)
		}
		for _, code := range r.RetryOn.Codes {
			rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(code))
		}
		for _, m := range idempotent {
			rp.RetriableRequestHeaders = append(rp.RetriableRequestHeaders, &routev3.HeaderMatcher{
				Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m},
				}},
			})
		}
		rp.RetriableRequestHeaders = append(rp.RetriableRequestHeaders, &routev3.HeaderMatcher{
			Name: "idempotency-key", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		})
		if r.RetryOn.GRPC != 0 {
			// gRPC codes in retryOn declare gRPC calls safe to repeat
			// (docs/grpc.md): they are POSTs, let through by content-type.
			rp.RetriableRequestHeaders = append(rp.RetriableRequestHeaders, &routev3.HeaderMatcher{
				Name: "content-type", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "application/grpc"},
				}},
			})
		}
		action.RetryPolicy = rp
	}
	return &routev3.VirtualHost{
		Name:    clusterName,
		Domains: domains,
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: action},
		}},
	}
}

// retryOn is Envoy's retry_on for minimesh's classes; status codes go in
// retriable_status_codes.
func retryOn(c policy.Conditions) string {
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
		add("connect-failure")
	}
	if c.Has(policy.ClassReset) {
		add("reset")
	}
	if c.Has(policy.ClassTimeout) {
		// A per-try timeout is a 504 from Envoy's router.
		add("gateway-error")
	}
	if len(c.Codes) > 0 {
		add("retriable-status-codes")
	}
	for n := range policy.GRPCCodeNames {
		if name, ok := envoyGRPCRetryOn[n]; ok && c.GRPCStatus(n) {
			add(name)
		}
	}
	return strings.Join(on, ",")
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
		notes = append(notes, fmt.Sprintf("%s: retryOn gRPC codes: Envoy also replays a client stream that fits its buffer, and lets gRPC calls retry on the other retry_on conditions too; minimesh sends again only a one-message call, and only for the codes named", p.Metadata.Name))
	}
	if cb := p.Spec.CircuitBreaker; cb != nil && cb.FailOn.GRPC != 0 {
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

// specMap is the policy's spec in its JSON form (readable durations).
func specMap(p *policy.ResiliencePolicy) (map[string]any, error) {
	b, err := json.Marshal(p.Spec)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	err = json.Unmarshal(b, &m)
	return m, err
}

func strs(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
