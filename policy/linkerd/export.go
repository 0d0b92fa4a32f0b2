// Package linkerd exports ResiliencePolicy objects as Linkerd
// configuration: per policy an HTTPRoute carrying Linkerd's timeout and
// retry annotations (two when it retries: one for the requests that are
// safe to send again, one for the rest), and the destination Service's
// failure-accrual annotations (per-endpoint ejection, outlierDetection).
// It is the migration path the README promises;
// docs/migrating-to-linkerd.md lists every field, what it becomes, and
// what does not carry over.
package linkerd

import (
	"bytes"
	"fmt"
	"maps"
	"math"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
)

// Linkerd's annotation keys (linkerd.io reference: retries, timeouts,
// circuit breaking; 2.16 and later).
const (
	annRequestTimeout = "timeout.linkerd.io/request"
	annRetryHTTP      = "retry.linkerd.io/http"
	annRetryGRPC      = "retry.linkerd.io/grpc"
	annRetryLimit     = "retry.linkerd.io/limit"
	annRetryTimeout   = "retry.linkerd.io/timeout"
	annAccrual        = "balancer.linkerd.io/failure-accrual"
	annMaxFailures    = "balancer.linkerd.io/failure-accrual-consecutive-max-failures"
	annMinPenalty     = "balancer.linkerd.io/failure-accrual-consecutive-min-penalty"
	annMaxPenalty     = "balancer.linkerd.io/failure-accrual-consecutive-max-penalty"
)

// Export returns a YAML stream for kubectl: per policy an HTTPRoute (two
// when it retries, see safeMatches) and a partial Service holding only
// annotations (apply it server-side, so that it merges into the existing
// Service). What a policy says that Linkerd cannot is written as
// comments above its documents, so nothing is dropped silently.
//
// The policies are read together, not one by one, because Kubernetes
// objects are shared where policies are not: each HTTPRoute needs a name
// of its own in its namespace, and Linkerd reads failure accrual and gRPC
// retries from the Service, one setting for all its ports, where minimesh
// may have a policy per port. Each Service gets one document.
//
// Where a route goes decides which clients Linkerd applies it to
// (Gateway API GEP-1426, "Namespace boundaries"; Linkerd's policy
// controller, outbound index): an HTTPRoute in its parent Service's
// namespace is a producer route, for the clients of every namespace; one
// in another namespace, a consumer route, for that namespace's clients
// only. A minimesh policy of a namespace reaches that namespace's
// sidecars only (docs/controlplane.md), so it becomes a consumer route in
// its own namespace, named there (where another namespace's policy for
// the same Service cannot take its name), or, for a Service of its own
// namespace, the producer route Linkerd offers instead, with a note that
// it reaches every namespace. A cluster-wide policy becomes a producer
// route (routeScope).
//
// ns is the namespace whose pods the export is for: a policy that names
// no namespace and whose service is a short name is read as ns's, in
// which the name resolves ("" is "default"), as the command's
// scopeClusterWide reads it. clusterNS is the controller's namespace:
// its policies, and those naming no namespace, are cluster-wide.
func Export(pols []*policy.ResiliencePolicy, ns, clusterNS string) ([]byte, error) {
	plans := make([]*plan, len(pols))
	for i, p := range pols {
		plans[i] = newPlan(p, ns, clusterNS)
	}
	nameRoutes(plans)
	padRoutes(plans)
	notePortOverlap(plans)
	mergeServices(plans)

	var out bytes.Buffer
	for _, pl := range plans {
		fmt.Fprintf(&out, "---\n# ResiliencePolicy %s", displayName(pl.p))
		if pl.p.Source != "" {
			fmt.Fprintf(&out, " (%s)", pl.p.Source)
		}
		out.WriteString("\n")
		for _, c := range pl.comments {
			fmt.Fprintf(&out, "# %s\n", c)
		}
		for _, n := range pl.notes {
			fmt.Fprintf(&out, "# not carried over: %s\n", n)
		}
		for i, d := range pl.documents() {
			if i > 0 {
				out.WriteString("---\n")
			}
			b, err := yaml.Marshal(d)
			if err != nil {
				return nil, err
			}
			out.Write(b)
		}
	}
	return out.Bytes(), nil
}

type object = map[string]any

// serviceRef names the Kubernetes Service a policy governs: its name,
// namespace and the port of spec.service (0 for every port).
type serviceRef struct {
	name, ns string
	port     int
}

// plan is one policy's translation: its annotations, the names Export
// gives its objects and what it says about them.
type plan struct {
	p *policy.ResiliencePolicy
	// svc is the destination; inCluster is false for "*" and for hosts
	// outside the cluster, which get comments only.
	svc       serviceRef
	inCluster bool
	// routeNS is the namespace of the plan's HTTPRoutes (routeScope):
	// the policy's, or, for a cluster-wide policy, the Service's.
	// clusterWide: the policy applies in every namespace.
	routeNS     string
	clusterWide bool
	// canonical: the service is spelled as the sidecar's canonical name
	// of its Service (the short name for a Service of the namespace the
	// policy applies in, name.ns for another's), whose policy configures
	// the ejections of every spelling (servicePreference).
	canonical bool

	route     map[string]string // the HTTPRoute's annotations
	routeName string            // set by nameRoutes
	// restName names the second HTTPRoute of a plan whose route retries
	// (retrying): it takes the requests the first does not match, with
	// the timeout and no retry annotations. Set by nameRoutes.
	restName string
	// padded is set (by padRoutes) on a route without retries that also
	// lists safeMatches, so that the split routes of another policy for
	// the same Service and port do not outrank it: the route it keeps
	// level with.
	padded string

	// Service annotations, in two groups that Linkerd reads per
	// Service: failure accrual (nil when ejection is off) and gRPC
	// retries (nil without). mergeServices picks one of each per
	// Service and puts the Service document on one plan, in service.
	accrual, grpc map[string]string
	service       map[string]string

	comments []string // about the output: names, where a document went
	notes    []string // what Linkerd does not say as the policy does
}

// retrying reports whether the plan's HTTPRoute has retry annotations;
// retries always write retry.linkerd.io/limit. Such a route is split in
// two (safeMatches).
func (pl *plan) retrying() bool {
	_, ok := pl.route[annRetryLimit]
	return ok
}

// producer reports whether the plan's HTTPRoutes are producer routes (in
// their Service's namespace), which Linkerd applies to the clients of
// every namespace; a consumer route applies to its own namespace's.
func (pl *plan) producer() bool { return pl.routeNS == pl.svc.ns }

// sharesClients reports whether Linkerd offers the routes of pl and o to
// some client together, for the same Service: both in one namespace, or
// either a producer route, which every namespace's clients get next to
// their own namespace's consumer routes (Linkerd's policy controller
// adds the producer routes to each consumer namespace's set).
func (pl *plan) sharesClients(o *plan) bool {
	return pl.svc.ns == o.svc.ns && pl.svc.name == o.svc.name &&
		(pl.routeNS == o.routeNS || pl.producer() || o.producer())
}

// linkerdBackoffBase and linkerdBackoffMax are the retry backoff Linkerd's
// policy controller sets on every route (since 2.16).
const (
	linkerdBackoffBase = 25 * time.Millisecond
	linkerdBackoffMax  = 250 * time.Millisecond
)

func (pl *plan) note(format string, a ...any) { pl.notes = append(pl.notes, fmt.Sprintf(format, a...)) }
func (pl *plan) comment(format string, a ...any) {
	pl.comments = append(pl.comments, fmt.Sprintf(format, a...))
}

// duration spells d for an annotation and notes when it had to round
// the policy's value (field names it).
func (pl *plan) duration(field string, d time.Duration) string {
	s, rounded := duration(d)
	if rounded {
		pl.note("%s (%s): Linkerd's durations are whole milliseconds; written as %s, rounded up", field, d, s)
	}
	return s
}

func newPlan(p *policy.ResiliencePolicy, defaultNS, clusterNS string) *plan {
	pl := &plan{p: p}
	s := &p.Spec
	if s.Service == policy.DefaultService {
		pl.note(`service "*": Linkerd has no mesh-wide default policy; annotate each Service or route`)
		return pl
	}
	if defaultNS == "" {
		defaultNS = "default"
	}
	ns := p.Metadata.Namespace
	host, _, _ := strings.Cut(s.Service, ":")
	_, isSvc := policy.ServiceFQDN(strings.ToLower(host), defaultNS)
	pl.clusterWide = ns == "" || ns == clusterNS
	if pl.clusterWide && isSvc && !strings.Contains(host, ".") {
		// A short name in a cluster-wide policy is a Service of every
		// namespace; exported, it is defaultNS's (as scopeClusterWide
		// in the command reads it, with a comment of its own).
		ns, pl.clusterWide = defaultNS, false
	}
	if ns == "" {
		ns = defaultNS
	}
	ref, ok := serviceOf(s.Service, ns)
	if !ok {
		pl.note("service %q is not a cluster Service: Linkerd configures egress with EgressNetwork resources", s.Service)
		return pl
	}
	pl.svc, pl.inCluster = ref, true
	pl.routeNS = ns
	spelled := strings.TrimSuffix(strings.ToLower(host), ".")
	// The canonical spelling is the one of the sidecars the policy
	// reaches: those of its namespace, and for a policy that stays
	// cluster-wide (every namespace) those of defaultNS, whose pods the
	// export is for. defaultNS alone made geo.shop canonical for a
	// policy of shop in an export for another namespace.
	appliesIn := ns
	if pl.clusterWide {
		appliesIn = defaultNS
	}
	if ref.ns == appliesIn {
		pl.canonical = spelled == ref.name
	} else {
		pl.canonical = spelled == ref.name+"."+ref.ns
	}
	if strings.Count(spelled, ".") == 1 {
		pl.note("service %q: a two-label name is read as Service %s in namespace %s, the HTTPRoutes' parent, as the sidecar's matcher reads it; but the sidecar dials %s as written, which the pod's resolver finds as that Service through its search path, and else outside the cluster (httpbin.org), where this parent does not apply", s.Service, ref.name, ref.ns, spelled)
	}
	if pl.clusterWide {
		pl.routeNS = ref.ns
	}
	pl.route = map[string]string{}
	if s.Timeout > 0 {
		pl.route[annRequestTimeout] = pl.duration("timeout", s.Timeout)
	}
	pl.retries(s.Retries)
	pl.failureAccrual(s)
	if cb := s.CircuitBreaker; cb != nil {
		n := fmt.Sprintf("circuitBreaker (%d failures in a row", cb.ConsecutiveFailures)
		if fr := cb.FailureRate; fr != nil {
			n += fmt.Sprintf(" or %g of %d requests in %s", fr.Threshold, fr.MinRequests, fr.Window)
		}
		pl.note("%s, open %s, %d probes): Linkerd has no breaker for a whole destination; it ejects single endpoints (pods), which is outlierDetection", n, cb.OpenTimeout, cb.HalfOpenRequests)
	}
	pl.routeScope()
	return pl
}

// routeScope says which clients Linkerd applies the plan's routes and
// Service annotations to, where that differs from minimesh: a policy of
// a namespace reaches that namespace's sidecars only, a cluster-wide one
// every namespace's sidecars that have no policy of their own for the
// service (docs/controlplane.md). Linkerd's policy controller (outbound
// index) gives a producer route (in the Service's namespace) to the
// clients of every namespace, and a consumer route (in another) to its
// namespace's clients only, next to the producer routes: it does not
// drop the producer routes for a namespace with consumer routes, as
// GEP-1426 asks, and picks among routes that match alike by age, then
// name. Failure accrual and gRPC retries are Service annotations, read
// for the clients of every namespace.
func (pl *plan) routeScope() {
	svc := pl.svc.ns + "/" + pl.svc.name
	var svcAnn []string
	if pl.accrual != nil {
		svcAnn = append(svcAnn, "outlierDetection (failure accrual)")
	}
	if pl.grpc != nil {
		svcAnn = append(svcAnn, "retryOn gRPC codes (retry.linkerd.io/grpc)")
	}
	switch {
	case pl.clusterWide:
		if len(pl.route) > 0 {
			pl.note("the policy applies cluster-wide, and the HTTPRoutes in namespace %s are producer routes (their Service's namespace), which Linkerd applies to the clients of every namespace, as minimesh applies the policy in every namespace; but where a namespace has a policy of its own for the service, which minimesh applies there instead, Linkerd gives that namespace's clients its consumer routes and these together, and picks among routes that match alike the oldest, then the first by name", pl.routeNS)
		}
		return
	case pl.producer():
		if len(pl.route) > 0 {
			pl.note("the HTTPRoutes in namespace %s are producer routes (Service %s is in the policy's own namespace), which Linkerd applies to the clients of every namespace; minimesh applies this policy to namespace %s's sidecars only, and Linkerd has no route for the clients of one namespace that is in their Service's namespace", pl.routeNS, svc, pl.routeNS)
		}
	case len(pl.route) > 0:
		pl.comment("the HTTPRoutes in namespace %s are consumer routes (their parent, Service %s, is in another namespace): Linkerd applies them to the clients in namespace %s only, as minimesh applies the policy to that namespace's sidecars", pl.routeNS, svc, pl.routeNS)
		pl.note("Linkerd gives the clients in namespace %s the producer routes of Service %s (HTTPRoutes in namespace %s) too, next to these, and picks among routes that match alike the oldest, then the first by name; minimesh applies this policy alone to namespace %s's sidecars", pl.routeNS, svc, pl.svc.ns, pl.routeNS)
	}
	if len(svcAnn) > 0 {
		what := "it"
		if len(svcAnn) > 1 {
			what = "them"
		}
		pl.note("%s: Linkerd reads %s from Service %s's annotations, for the clients of every namespace; minimesh applies this policy to namespace %s's sidecars only", strings.Join(svcAnn, " and "), what, svc, pl.routeNS)
	}
}

// retries maps spec.retries onto Linkerd's retry annotations (linkerd.io
// reference "Retries", 2.16+). Linkerd retries a try when its response
// status is in retry.linkerd.io/http (or its gRPC status in
// retry.linkerd.io/grpc), and when it outlives retry.linkerd.io/timeout:
// that timeout cancels the try and retries it whatever the status list
// says. So retryOn [timeout] with a perTryTimeout is a limit and a
// timeout with no status list, which Linkerd's policy controller accepts
// (parse_http_retry: any of the three annotations makes a retry policy).
//
// What Linkerd's proxy retries on its own is narrower than minimesh's
// conditions (linkerd2-proxy, outbound route retry.rs, retryable_error):
// the retry timeout, fail-fast, and an HTTP/2 stream the peer refused
// (REFUSED_STREAM). Connection errors are not retried (the source says
// so: "connection errors require changes to the endpoint stack"); its
// balancer sends requests only to endpoints it holds a connection to.
func (pl *plan) retries(r *policy.Retries) {
	if r == nil {
		return
	}
	if r.Attempts == 0 {
		// A retry.linkerd.io/limit of 0 is read as no limit given, and
		// then Linkerd's default, 1, applies: writing the timeout here
		// would add a retry. timeout.linkerd.io/response bounds the
		// response body too, where perTryTimeout stops at the headers.
		if r.PerTryTimeout > 0 {
			pl.note("retries.perTryTimeout (%s) with attempts 0: Linkerd bounds a single try only with retry.linkerd.io/timeout, which comes with a retry (a retry.linkerd.io/limit of 0 means its default, 1); timeout.linkerd.io/response is the nearest, but it also bounds the response body, so the export leaves it to you", r.PerTryTimeout)
		}
		return
	}
	on := r.RetryOn
	codes := retryCodes(on)
	var perTry string
	if r.PerTryTimeout > 0 {
		perTry = pl.duration("retries.perTryTimeout", r.PerTryTimeout)
	}
	if codes != "" {
		pl.route[annRetryHTTP] = codes
	}
	if codes != "" || perTry != "" {
		pl.route[annRetryLimit] = strconv.Itoa(r.Attempts)
	}
	if perTry != "" {
		pl.route[annRetryTimeout] = perTry
		if !on.Has(policy.ClassTimeout) {
			pl.note("retryOn has no timeout: Linkerd also retries a try that exceeds retry.linkerd.io/timeout (%s), where minimesh answers 504", perTry)
		}
		// linkerd2-proxy drops the per-try timeout of the try after
		// which no retry is left (retry.rs, set_extensions).
		pl.note("retries.perTryTimeout on the last try: Linkerd lifts retry.linkerd.io/timeout once no retry is left, so only timeout.linkerd.io/request (if set) bounds the last try")
	}
	if on.Has(policy.ClassConnectFailure) {
		pl.note("retryOn connect-failure: Linkerd does not retry connection errors; its load balancer sends requests only to endpoints it is connected to, and fails fast (503) when none is available")
	}
	if on.Has(policy.ClassReset) {
		pl.note("retryOn reset: Linkerd retries a connection lost before the response only when an HTTP/2 peer refused the stream (REFUSED_STREAM)")
	}
	if on.Has(policy.ClassTimeout) && perTry == "" {
		pl.note("retryOn timeout without perTryTimeout: only the whole timeout can expire, and Linkerd does not retry timeout.linkerd.io/request (nor does minimesh, which has no time left then)")
	}
	// Linkerd's policy controller gives every retrying route one backoff
	// (policy-controller/grpc/src/outbound/http.rs), which no annotation
	// sets: 25 ms to 250 ms with a jitter ratio of 1.0, which adds up to
	// the whole wait again rather than drawing below it, and waits before
	// the first retry too. The proxy cuts the jitter to what is left
	// below the maximum (linkerd2-proxy, exp-backoff: .min(max - base)),
	// so no wait passes 250 ms: retry 1 waits 25-50 ms, retry 4
	// 200-250 ms, from retry 5 on exactly 250 ms. Even minimesh's default
	// bounds wait otherwise.
	pl.note("retries.backoff (%s-%s): Linkerd's backoff is fixed (no annotation changes it): before retry n, the first included, it waits min(%s, %s·2^(n-1)) plus up to as much again, never past %s in all (jitter ratio 1.0); the sidecar waits a random time in (0, min(max, base·2^(n-1))]", r.Backoff.Base, r.Backoff.Max, linkerdBackoffMax, linkerdBackoffBase, linkerdBackoffMax)
	pl.note("retries.budget (ratio %g, %d/s): Linkerd's route annotations have no retry budget", r.Budget.Ratio, r.Budget.MinPerSecond)

	if on.GRPC == 0 {
		return
	}
	grpcCodes, left := grpcRetryCodes(on)
	if len(left) > 0 {
		pl.note("retryOn %s: Linkerd retries only cancelled, deadline-exceeded, internal, resource-exhausted and unavailable", strings.Join(left, ", "))
	}
	if grpcCodes == "" {
		return
	}
	// Not valid on an HTTPRoute: on the Service, for its gRPC calls
	// that no route with retry annotations of its own matches.
	pl.grpc = map[string]string{annRetryGRPC: grpcCodes, annRetryLimit: strconv.Itoa(r.Attempts)}
	if perTry != "" {
		pl.grpc[annRetryTimeout] = perTry
	}
	// Linkerd's policy controller reads retry.linkerd.io/grpc only into
	// GRPCRoutes: for a Service port with GRPCRoutes it sends those (and
	// not the HTTPRoutes), else the HTTPRoutes, or a default route when
	// there are none, whose retries come from the Service's
	// retry.linkerd.io/http, limit and timeout (linkerd2
	// policy-controller, grpc/src/outbound.rs and outbound/http.rs); the
	// proxy's HTTP route retries no gRPC status (linkerd2-proxy, outbound
	// policy/route.rs). Linkerd's maintainers say as much: gRPC retries
	// need a GRPCRoute (linkerd/linkerd2#14033).
	pl.note("retryOn gRPC codes (%s): written as retry.linkerd.io/grpc on the Service, which Linkerd applies only through GRPCRoutes: HTTPRoutes (those exported here, and the default route of a Service without routes) retry no gRPC status, so gRPC calls are retried on these codes only once a GRPCRoute is attached to the Service, and Linkerd then routes that port by its GRPCRoutes instead of its HTTPRoutes", grpcCodes)
}

// failureAccrual is outlierDetection as Linkerd's failure accrual: it
// ejects one endpoint after a run of failures, for a penalty between min
// and max.
func (pl *plan) failureAccrual(s *policy.Spec) {
	od := s.OutlierDetection
	if !od.Enabled() {
		return
	}
	pl.accrual = map[string]string{
		annAccrual:     "consecutive",
		annMaxFailures: strconv.Itoa(od.ConsecutiveFailures),
		annMinPenalty:  pl.duration("outlierDetection.baseEjectionTime", od.BaseEjectionTime),
		annMaxPenalty:  pl.duration("outlierDetection.maxEjectionTime", od.MaxEjectionTime),
	}
	pl.note("outlierDetection ejection time (%s × ejections, at most %s): Linkerd's penalty doubles from min-penalty to max-penalty, with jitter, and an ejected endpoint comes back through a probe; minimesh's grows linearly, base × ejections, as Envoy's does", od.BaseEjectionTime, od.MaxEjectionTime)
	pl.note("outlierDetection.maxEjectionPercent (%d): Linkerd has no cap and may eject every endpoint, then fails requests with 503", od.MaxEjectionPercent)
	if cb := s.CircuitBreaker; cb != nil {
		pl.note("circuitBreaker.failOn (%s), which outlierDetection counts: Linkerd counts 5xx responses and failed connections", strings.Join(cb.FailOn.Strings(), ", "))
	}
}

// idempotentMethods are the methods minimesh retries (docs/policy.md,
// "Retries"), in that order.
var idempotentMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}

// idempotencyKeyValue is the RegularExpression that matches an
// Idempotency-Key header with a value: the sidecar takes a request with a
// non-empty one as safe to send again.
const idempotencyKeyValue = ".+"

// safeMatches are the HTTPRoute matches of the requests minimesh may
// send again (docs/policy.md, "Retries"): one per idempotent method, and
// one for an Idempotency-Key header with a value. They are how the
// export keeps minimesh's rule, which Linkerd does not have:
//
//   - Linkerd retries any method. Its retry policy decides on the
//     response status (retry.linkerd.io/http), the gRPC status and the
//     error alone (linkerd2-proxy, outbound policy/route/retry.rs,
//     is_retryable), and the only request it declines is one whose body
//     passed 64 KiB (linkerd/http/retry). Its docs leave the choice to
//     the user: annotate the HTTPRoutes that are idempotent (linkerd.io
//     2.16, "Configuring Retries").
//   - So a retrying policy becomes two HTTPRoutes for the same parent:
//     one with these matches and the retry annotations, one matching
//     every request (PathPrefix /) with the timeout only. A request goes
//     to the route with the best match. The Gateway API ranks a method
//     match above the number of header matches (HTTPRouteRule.Matches,
//     gateway.networking.k8s.io/v1); Linkerd's proxy ranks them the other
//     way round, after the path (linkerd/http/route, http/match.rs). Each
//     of these matches has a method or a header and the catch-all has
//     neither, so either way the safe requests take the retrying route,
//     and the rest the other one.
//   - The second route must exist: when HTTPRoutes are attached to a
//     Service, Linkerd's proxy answers a request that none of them
//     matches with 404 (outbound http/server.rs, NoRoute), as the Gateway
//     API requires; only a Service without routes gets Linkerd's default
//     route (policy-controller, grpc/src/outbound/http.rs).
//   - Header presence is a RegularExpression match, which Linkerd accepts
//     (policy-controller k8s/index/src/routes/http.rs): its proxy wants
//     the expression to cover the whole value, of any of the header's
//     values, read as visible ASCII (http/match/header.rs). So a value
//     with other bytes does not match, and that request is not retried.
//   - A route without retry annotations takes the Service's
//     (retry.linkerd.io/limit and timeout, which the gRPC retries put
//     there; policy-controller grpc/src/outbound/http.rs): mergeServices
//     says so when they include a timeout, which retries any method.
func safeMatches() []any {
	var m []any
	for _, method := range idempotentMethods {
		m = append(m, object{"path": pathPrefixRoot(), "method": method})
	}
	return append(m, object{"path": pathPrefixRoot(), "headers": []any{
		object{"name": wellknown.HeaderIdempotencyKey, "type": "RegularExpression", "value": idempotencyKeyValue},
	}})
}

// matchAll matches every request.
func matchAll() any { return object{"path": pathPrefixRoot()} }

func pathPrefixRoot() object { return object{"type": "PathPrefix", "value": "/"} }

// withoutRetries is the route's annotations less Linkerd's retry ones.
func withoutRetries(ann map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range ann {
		if !strings.HasPrefix(k, "retry.linkerd.io/") {
			out[k] = v
		}
	}
	return out
}

// httpRoute is an HTTPRoute for the plan's Service (and port) with one
// rule, in routeNS. Its parentRef names the Service's namespace, which
// for a consumer route (routeNS another namespace) is required, and for
// a producer route says the same as the default.
func (pl *plan) httpRoute(name string, ann map[string]string, matches []any) object {
	parent := object{"group": "core", "kind": "Service", "name": pl.svc.name, "namespace": pl.svc.ns}
	if pl.svc.port != 0 {
		parent["port"] = pl.svc.port
	}
	meta := object{"name": name, "namespace": pl.routeNS}
	if len(ann) > 0 {
		meta["annotations"] = ann
	}
	return object{
		"apiVersion": "gateway.networking.k8s.io/v1",
		"kind":       "HTTPRoute",
		"metadata":   meta,
		"spec": object{
			"parentRefs": []any{parent},
			"rules":      []any{object{"matches": matches}},
		},
	}
}

// routesWithoutRetries are the plan's HTTPRoutes without retry
// annotations of their own, as namespace/name: the one route of a plan
// that does not retry, or the second of one that does.
func (pl *plan) routesWithoutRetries() []string {
	switch {
	case len(pl.route) == 0:
		return nil
	case pl.retrying():
		return []string{pl.routeNS + "/" + pl.restName}
	default:
		return []string{pl.routeNS + "/" + pl.routeName}
	}
}

// documents are the plan's Kubernetes objects: its HTTPRoutes, and the
// Service document when mergeServices put it on this plan.
func (pl *plan) documents() []object {
	var docs []object
	switch {
	case len(pl.route) == 0:
	case pl.retrying():
		docs = append(docs,
			pl.httpRoute(pl.routeName, pl.route, safeMatches()),
			pl.httpRoute(pl.restName, withoutRetries(pl.route), []any{matchAll()}))
	case pl.padded != "":
		docs = append(docs, pl.httpRoute(pl.routeName, pl.route, append(safeMatches(), matchAll())))
	default:
		docs = append(docs, pl.httpRoute(pl.routeName, pl.route, []any{matchAll()}))
	}
	if len(pl.service) > 0 {
		docs = append(docs, object{
			"apiVersion": "v1",
			"kind":       "Service",
			"metadata":   object{"name": pl.svc.name, "namespace": pl.svc.ns, "annotations": pl.service},
		})
	}
	return docs
}

// displayName is the policy's name for comments; metadata.name is
// optional.
func displayName(p *policy.ResiliencePolicy) string {
	if p.Metadata.Name == "" {
		return "(unnamed)"
	}
	return p.Metadata.Name
}

// label tells a policy apart from others of the same name: by its
// service, and its namespace, since the policies of several namespaces
// may share a Service's annotations (mergeServices).
func label(p *policy.ResiliencePolicy) string {
	if ns := p.Metadata.Namespace; ns != "" {
		return fmt.Sprintf("%s (%s, namespace %s)", displayName(p), p.Spec.Service, ns)
	}
	return fmt.Sprintf("%s (%s)", displayName(p), p.Spec.Service)
}

// serviceOf reads a policy's service the way the sidecar matches it,
// through policy.ServiceFQDN: "name", "name.ns", "name.ns.svc" or
// "name.ns.svc.cluster.local", with an optional port, is a Service; any
// other host (a.b.cluster.local, api.example.com, an IP address) is
// outside the cluster and matches only itself. A short name is in the
// policy's namespace, "default" when it names none.
func serviceOf(service, policyNS string) (serviceRef, bool) {
	host, portStr, _ := strings.Cut(strings.ToLower(service), ":")
	ns := policyNS
	if ns == "" {
		ns = "default"
	}
	fqdn, ok := policy.ServiceFQDN(host, ns)
	if !ok {
		return serviceRef{}, false
	}
	labels := strings.Split(fqdn, ".") // name.ns.svc.cluster.local
	ref := serviceRef{name: labels[0], ns: labels[1]}
	if portStr != "" {
		ref.port, _ = strconv.Atoi(portStr)
	}
	return ref, true
}

// maxNameLen is the longest name Kubernetes accepts for an HTTPRoute (a
// DNS-1123 subdomain).
const maxNameLen = 253

// nameRoutes names each HTTPRoute. kubectl rejects an object without a
// name, and metadata.name is optional in a policy (it is only shown), so
// an unnamed policy's route is named after its service and port
// ("orders-9000"). Names must also be unique in a namespace, or one
// policy's route replaces another's on apply: policies keep their own
// (valid) name when it is free, claimed in input order, and the others
// get their service and port appended, then a number. Last, the second
// route of each retrying policy is named after its first, with
// "-no-retry" (then a number).
func nameRoutes(plans []*plan) {
	taken := map[string]bool{}
	key := func(pl *plan, name string) string { return pl.routeNS + "/" + name }
	var rest []*plan
	for _, pl := range plans {
		if len(pl.route) == 0 {
			continue
		}
		own := sanitizeName(pl.p.Metadata.Name)
		if own == "" || taken[key(pl, own)] {
			rest = append(rest, pl)
			continue
		}
		pl.routeName = own
		taken[key(pl, own)] = true
		if own != pl.p.Metadata.Name {
			pl.comment("HTTPRoute %s/%s: metadata.name %q is not a valid Kubernetes name", pl.routeNS, own, pl.p.Metadata.Name)
		}
	}
	for _, pl := range rest {
		base := pl.svc.name
		if pl.svc.port != 0 {
			base += "-" + strconv.Itoa(pl.svc.port)
		}
		own := sanitizeName(pl.p.Metadata.Name)
		if own != "" && base != own && !strings.HasPrefix(base, own+"-") {
			base = joinName(own, base)
		}
		name := base
		for i := 2; taken[key(pl, name)]; i++ {
			name = joinName(base, strconv.Itoa(i))
		}
		pl.routeName = name
		taken[key(pl, name)] = true
		if own == "" {
			pl.comment("HTTPRoute %s/%s: named after spec.service, as the policy has no metadata.name", pl.routeNS, name)
		} else {
			pl.comment("HTTPRoute %s/%s: another policy's HTTPRoute in namespace %s is named %s", pl.routeNS, name, pl.routeNS, own)
		}
	}
	for _, pl := range plans {
		if !pl.retrying() {
			continue
		}
		base := joinName(pl.routeName, "no-retry")
		name := base
		for i := 2; taken[key(pl, name)]; i++ {
			name = joinName(base, strconv.Itoa(i))
		}
		pl.restName = name
		taken[key(pl, name)] = true
		with := "no annotations"
		if t := pl.route[annRequestTimeout]; t != "" {
			with = "the same timeout and no retry annotations"
		}
		if name != base {
			with += fmt.Sprintf(" (HTTPRoute %s/%s is another policy's)", pl.routeNS, base)
		}
		pl.comment("HTTPRoute %s/%s retries only what minimesh retries: %s requests, and those with an %s header (Linkerd would retry any method); HTTPRoute %s/%s takes the others, with %s",
			pl.routeNS, pl.routeName, strings.Join(idempotentMethods, ", "), wellknown.HeaderIdempotencyKey, pl.routeNS, name, with)
	}
}

// padRoutes keeps the split routes of a retrying policy from changing
// which policy's route Linkerd picks where two policies' routes apply on
// one port of a Service: a policy without a port applies on all of them
// (Linkerd attaches a parentRef without a port to every port), next to
// the policies for one port, which minimesh applies there instead, and
// next to the Service's other spellings, which minimesh tells apart by
// host. Linkerd picks by the matches, then the oldest route, then the
// first by name (timestamp_then_name in its policy controller), so
// routes that match alike were level before the split, and the one
// created first won. The retrying route matches the safe requests by
// method or header (safeMatches), which outranks a match on the path
// alone: so a route without retries that shares a port with it lists
// safeMatches too, without retrying them, and the two stay level. Only a
// policy without a port is left to be outranked on a port by that
// port's own retrying routes, as minimesh would apply that port's
// policy there. Routes compete only where Linkerd offers them to the same
// clients (sharesClients): a consumer route of one namespace never meets
// another namespace's.
func padRoutes(plans []*plan) {
	for _, split := range plans {
		if !split.retrying() {
			continue
		}
		on := fmt.Sprintf("on port %d of", split.svc.port)
		if split.svc.port == 0 {
			on = "on every port of"
		}
		for _, pl := range plans {
			if pl == split || len(pl.route) == 0 || pl.retrying() || pl.padded != "" ||
				!pl.sharesClients(split) ||
				split.svc.port != 0 && split.svc.port != pl.svc.port {
				continue
			}
			pl.padded = split.routeName
			pl.comment("HTTPRoute %s/%s also matches %s requests, and those with an %s header, without retrying them, so that HTTPRoute %s/%s (%s Service %s/%s), which retries them, does not outrank it: Linkerd prefers a match on the method or a header to one on the path alone; between routes that match alike it takes the oldest, then the first by name",
				pl.routeNS, pl.routeName, strings.Join(idempotentMethods, ", "), wellknown.HeaderIdempotencyKey, split.routeNS, split.routeName, on, split.svc.ns, split.svc.name)
		}
	}
}

// notePortOverlap notes, on a policy without a port and on one for a
// port of the same Service whose routes Linkerd offers to the same
// clients, that Linkerd may apply the wrong one there: the route of the
// first attaches to every port (a parentRef without a port), and where
// both routes match a request alike Linkerd takes the oldest, then the
// first by name, where the sidecar always applies the port's policy.
// (padRoutes keeps the split routes from outranking; it cannot make the
// port's policy win.)
func notePortOverlap(plans []*plan) {
	for _, wide := range plans {
		if wide.svc.port != 0 || len(wide.route) == 0 {
			continue
		}
		for _, port := range plans {
			if port.svc.port == 0 || len(port.route) == 0 || !wide.sharesClients(port) {
				continue
			}
			what := fmt.Sprintf("the HTTPRoutes of ResiliencePolicy %s attach to every port of Service %s/%s, those of ResiliencePolicy %s to port %d", label(wide.p), wide.svc.ns, wide.svc.name, label(port.p), port.svc.port)
			why := fmt.Sprintf("where their matches are alike Linkerd takes the oldest route, then the first by name, where the sidecar always applies the port's policy on port %d (apply that policy's HTTPRoutes first)", port.svc.port)
			wide.note("%s: %s", what, why)
			port.note("%s: %s", what, why)
		}
	}
}

// sanitizeName turns s into a DNS-1123 subdomain, the names Kubernetes
// accepts: lower case, other characters as '-', each dot-separated part
// starting and ending with a letter or digit. It returns "" when nothing
// is left.
func sanitizeName(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			b[i] = '-'
		}
	}
	var parts []string
	for part := range strings.SplitSeq(string(b), ".") {
		if part = strings.Trim(part, "-"); part != "" {
			parts = append(parts, part)
		}
	}
	return trimName(strings.Join(parts, "."), maxNameLen)
}

// joinName is base-suffix, base shortened to keep it a valid name.
func joinName(base, suffix string) string {
	return trimName(base, maxNameLen-1-len(suffix)) + "-" + suffix
}

func trimName(s string, n int) string {
	if len(s) > n {
		s = strings.TrimRight(s[:n], "-.")
	}
	return s
}

// servicePreference orders the policies whose annotations a Service may
// keep (mergeServices): first one of the Service's canonical spelling,
// as the sidecar ejects the endpoints of every spelling with that
// policy's outlierDetection (docs/policy.md, "Precedence rules");
// then a cluster-wide one, as Linkerd reads the annotations for the
// clients of every namespace, which is where a cluster-wide policy
// applies; then one without a port.
func servicePreference(pl *plan) int {
	r := 0
	if pl.canonical {
		r += 4
	}
	if pl.clusterWide {
		r += 2
	}
	if pl.svc.port == 0 {
		r++
	}
	return r
}

// mergeServices writes one Service document per Service. Linkerd reads
// failure accrual (reference "Circuit Breaking") and gRPC retries from
// the Service's annotations, for all its ports, while minimesh may have
// a policy per port, each with its own outlierDetection and retries; two
// Service documents would leave the last one applied, silently; and the
// policies of several namespaces may name one Service, whose annotations
// all their clients share. Each group of annotations is taken whole from
// one policy (servicePreference): a cluster-wide one, then one without a
// port, which minimesh applies on every port that has no policy of its
// own, else the first in the input. Every policy that asked for
// something else gets a comment naming the conflict and what was kept.
// The document goes with the Service's first policy.
func mergeServices(plans []*plan) {
	type key struct{ ns, name string }
	byService := map[key][]*plan{}
	var order []key
	for _, pl := range plans {
		if !pl.inCluster {
			continue
		}
		k := key{pl.svc.ns, pl.svc.name}
		if byService[k] == nil {
			order = append(order, k)
		}
		byService[k] = append(byService[k], pl)
	}
	groups := []struct {
		get      func(*plan) map[string]string
		what, is string
		describe func(map[string]string) string
		kept     func(kept *plan, pls []*plan) // called with the plan whose annotations are kept
	}{
		{
			get: func(pl *plan) map[string]string { return pl.accrual }, what: "outlierDetection",
			is: "Linkerd's failure accrual is per Service, for all its ports and the clients of every namespace",
			describe: func(a map[string]string) string {
				if a == nil {
					return "no ejection"
				}
				return fmt.Sprintf("%s failures in a row, penalty %s to %s", a[annMaxFailures], a[annMinPenalty], a[annMaxPenalty])
			},
		},
		{
			get: func(pl *plan) map[string]string { return pl.grpc }, what: "retryOn gRPC codes",
			is: "retry.linkerd.io/grpc is per Service (an HTTPRoute may not carry it), for all its ports and the clients of every namespace",
			describe: func(a map[string]string) string {
				if a == nil {
					return "no gRPC retries"
				}
				s := fmt.Sprintf("%s, limit %s", a[annRetryGRPC], a[annRetryLimit])
				if t := a[annRetryTimeout]; t != "" {
					s += ", timeout " + t
				}
				return s
			},
			kept: retryInherited,
		},
	}
	for _, k := range order {
		pls := byService[k]
		ann := map[string]string{}
		for _, g := range groups {
			var kept *plan
			for _, pl := range pls {
				if g.get(pl) != nil && (kept == nil || servicePreference(pl) > servicePreference(kept)) {
					kept = pl
				}
			}
			if kept == nil {
				continue
			}
			if g.kept != nil {
				g.kept(kept, pls)
			}
			maps.Copy(ann, g.get(kept))
			for _, pl := range pls {
				if !maps.Equal(g.get(pl), g.get(kept)) {
					pl.note("%s (%s): %s; Service %s/%s keeps that of ResiliencePolicy %s, on every port: %s", g.what, g.describe(g.get(pl)), g.is, k.ns, k.name, label(kept.p), g.describe(g.get(kept)))
				}
			}
		}
		if len(ann) == 0 {
			continue
		}
		pls[0].service = ann
		for _, pl := range pls[1:] {
			pl.comment("Service %s/%s: its annotations are in one document, with ResiliencePolicy %s", k.ns, k.name, label(pls[0].p))
		}
	}
}

// retryInherited notes, on the policy whose gRPC retry annotations a
// Service keeps (kept), that Linkerd also reads their limit and timeout
// as the Service's HTTP retry policy: its policy controller parses the
// Service's annotations with the HTTPRoutes' parser (parse_http_retry;
// any of http, limit and timeout makes a retry policy) and gives it to
// every route rule without retry annotations of its own, and to the
// default route of a Service without routes (policy-controller,
// k8s/index/src/outbound/index.rs and grpc/src/outbound/http.rs). A limit
// alone retries only what was never sent (fail-fast, REFUSED_STREAM);
// with a timeout, a try of any method that exceeds it is retried, the
// requests of the routes that do not retry (safeMatches) included.
func retryInherited(kept *plan, pls []*plan) {
	t := kept.grpc[annRetryTimeout]
	if t == "" {
		return
	}
	var routes []string
	for _, pl := range pls {
		routes = append(routes, pl.routesWithoutRetries()...)
	}
	where := "its default route, on a port without HTTPRoutes"
	if len(routes) > 0 {
		where = "its HTTPRoutes without retry annotations of their own (" + strings.Join(routes, ", ") + ") and to " + where
	}
	kept.note("retry.linkerd.io/timeout (%s) and retry.linkerd.io/limit (%s) on Service %s/%s, written for its gRPC retries: Linkerd also applies them to %s, and there retries any request, whatever its method, whose try exceeds %s; minimesh retries only requests safe to send again",
		t, kept.grpc[annRetryLimit], kept.svc.ns, kept.svc.name, where, t)
}

// retryCodes is retryOn in Linkerd's retry.linkerd.io/http spelling;
// codes a class already covers are folded into it.
func retryCodes(c policy.Conditions) string {
	var codes []string
	if c.Has(policy.Class5xx) {
		codes = append(codes, "5xx")
	} else if c.Has(policy.ClassGatewayError) {
		codes = append(codes, "gateway-error")
	}
	for _, code := range c.Codes {
		covered := c.Has(policy.Class5xx) && code >= 500 && code <= 599 ||
			c.Has(policy.ClassGatewayError) && code >= 502 && code <= 504
		if !covered {
			codes = append(codes, strconv.Itoa(code))
		}
	}
	return strings.Join(codes, ",")
}

// linkerdGRPCRetry are the gRPC codes retry.linkerd.io/grpc can name.
var linkerdGRPCRetry = map[int]string{1: "cancelled", 4: "deadline-exceeded", 8: "resource-exhausted", 13: "internal", 14: "unavailable"}

// grpcRetryCodes is retryOn's gRPC codes in retry.linkerd.io/grpc's
// spelling, and the names of the codes it has none for.
func grpcRetryCodes(c policy.Conditions) (string, []string) {
	var codes, left []string
	for n, name := range policy.GRPCCodeNames {
		if !c.GRPCStatus(n) {
			continue
		}
		if l, ok := linkerdGRPCRetry[n]; ok {
			codes = append(codes, l)
		} else {
			left = append(left, name)
		}
	}
	return strings.Join(codes, ","), left
}

// duration spells d in Linkerd's duration syntax: an integer and one
// unit, the millisecond at the finest. A d that is not whole
// milliseconds is rounded up, and rounded says so: never down, because
// 500µs would become 0ms, which Linkerd reads as no timeout at all (its
// policy controller drops a zero retry timeout, as it drops a zero
// request timeout per GEP-1742), and a timeout that comes sooner than
// asked would fail requests the policy lets through. Within the last
// millisecond of time.Duration's range, where there is no next one, it
// is the last whole millisecond: rounding up there wrapped to a negative
// duration (Validate bounds the timeouts far below, but the export takes
// any policy).
func duration(d time.Duration) (s string, rounded bool) {
	const last = math.MaxInt64 / time.Millisecond * time.Millisecond
	if d > last {
		d, rounded = last, true
	}
	if r := d % time.Millisecond; r != 0 {
		d += time.Millisecond - r
		rounded = true
	}
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h", rounded
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m", rounded
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s", rounded
	default:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms", rounded
	}
}
