// Package envoy translates ResiliencePolicy objects into Envoy resources:
// a Cluster per destination (per-endpoint ejection as outlier detection,
// the retry budget as a circuit-breaker threshold) and one RouteConfiguration
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
		c, notes, err := cluster(p, name, host, port)
		if err != nil {
			return nil, err
		}
		res.Clusters = append(res.Clusters, c)
		res.Routes.VirtualHosts = append(res.Routes.VirtualHosts, virtualHost(p, name, domains))
		res.Notes = append(res.Notes, notes...)
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

// cluster is the policy's Cluster, and notes on what it cannot carry.
func cluster(p *policy.ResiliencePolicy, name, host string, port int) (c *clusterv3.Cluster, notes []string, err error) {
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
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
					}}},
				}},
			}}}},
		},
	}
	spec, err := specMap(p)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s: %w", name, err)
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
	if od := p.Spec.OutlierDetection; od != nil && p.Spec.CircuitBreaker != nil {
		c.OutlierDetection, notes = outlier(p.Metadata.Name, od, p.Spec.CircuitBreaker.FailOn)
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
const sweep = time.Second

// outlier is outlierDetection as Envoy's outlier_detection, exactly where
// Envoy can say it: consecutive failures of the classes failOn names,
// base_ejection_time × the ejections so far up to max_ejection_time, and
// max_ejection_percent (Envoy too ejects at least one host). Nil when
// ejection is off, or when failOn names nothing Envoy counts; notes says
// what is lost.
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
	return o, notes
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
