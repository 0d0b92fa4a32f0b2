// Package linkerd exports ResiliencePolicy objects as Linkerd
// configuration: an HTTPRoute per policy carrying Linkerd's timeout and
// retry annotations, and the destination Service's failure-accrual
// annotations (per-endpoint ejection, outlierDetection). It is the migration path the README
// promises; docs/migrating-to-linkerd.md lists every field, what it
// becomes, and what does not carry over.
package linkerd

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
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

// Export returns a YAML stream for kubectl: per policy an HTTPRoute and a
// partial Service holding only annotations (apply it server-side, so that
// it merges into the existing Service). What a policy says that Linkerd
// cannot is written as comments above its documents, so nothing is
// dropped silently.
func Export(pols []*policy.ResiliencePolicy) ([]byte, error) {
	var out bytes.Buffer
	for _, p := range pols {
		docs, notes, err := export(p)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&out, "---\n# ResiliencePolicy %s", p.Metadata.Name)
		if p.Source != "" {
			fmt.Fprintf(&out, " (%s)", p.Source)
		}
		out.WriteString("\n")
		for _, n := range notes {
			fmt.Fprintf(&out, "# not carried over: %s\n", n)
		}
		for i, d := range docs {
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

func export(p *policy.ResiliencePolicy) ([]object, []string, error) {
	s := &p.Spec
	var notes []string
	if s.Service == policy.DefaultService {
		return nil, []string{`service "*": Linkerd has no mesh-wide default policy; annotate each Service or route`}, nil
	}
	name, ns, port, ok := serviceRef(s.Service, p.Metadata.Namespace)
	if !ok {
		return nil, []string{fmt.Sprintf("service %q is not a cluster Service: Linkerd configures egress with EgressNetwork resources", s.Service)}, nil
	}

	route := object{}
	if s.Timeout > 0 {
		route[annRequestTimeout] = duration(s.Timeout)
	}
	if r := s.Retries; r != nil && r.Attempts > 0 {
		codes, n := retryCodes(r.RetryOn)
		notes = append(notes, n...)
		if codes != "" {
			route[annRetryHTTP] = codes
			route[annRetryLimit] = strconv.Itoa(r.Attempts)
			if r.PerTryTimeout > 0 {
				route[annRetryTimeout] = duration(r.PerTryTimeout)
			}
		}
		notes = append(notes,
			fmt.Sprintf("retries.backoff (%s-%s): Linkerd retries at once", r.Backoff.Base, r.Backoff.Max),
			fmt.Sprintf("retries.budget (ratio %g, %d/s): Linkerd's route annotations have no retry budget", r.Budget.Ratio, r.Budget.MinPerSecond))
	}

	svcAnn := object{}
	if r := s.Retries; r != nil && r.Attempts > 0 && r.RetryOn.GRPC != 0 {
		codes, n := grpcRetryCodes(r.RetryOn)
		notes = append(notes, n...)
		if codes != "" {
			// Not valid on an HTTPRoute: on the Service, for its gRPC
			// calls that no route with retry annotations of its own
			// matches.
			svcAnn[annRetryGRPC] = codes
			svcAnn[annRetryLimit] = strconv.Itoa(r.Attempts)
			if r.PerTryTimeout > 0 {
				svcAnn[annRetryTimeout] = duration(r.PerTryTimeout)
			}
			if _, ok := route[annRetryHTTP]; ok {
				notes = append(notes, "retryOn gRPC codes: retry.linkerd.io/grpc goes on the Service, and the HTTPRoute's own retry annotations win for the gRPC calls it matches (every path): give gRPC calls a GRPCRoute, or drop the HTTP retries")
			}
		}
	}
	if od := s.OutlierDetection; od.Enabled() {
		// Linkerd's failure accrual is outlierDetection's counterpart: it
		// ejects one endpoint after a run of failures, for a penalty
		// between min and max.
		svcAnn[annAccrual] = "consecutive"
		svcAnn[annMaxFailures] = strconv.Itoa(od.ConsecutiveFailures)
		svcAnn[annMinPenalty] = duration(od.BaseEjectionTime)
		svcAnn[annMaxPenalty] = duration(od.MaxEjectionTime)
		notes = append(notes,
			fmt.Sprintf("outlierDetection ejection time (%s × ejections, at most %s): Linkerd's penalty doubles from min-penalty to max-penalty, with jitter, and an ejected endpoint comes back through a probe; minimesh's grows linearly, base × ejections, as Envoy's does", od.BaseEjectionTime, od.MaxEjectionTime),
			fmt.Sprintf("outlierDetection.maxEjectionPercent (%d): Linkerd has no cap and may eject every endpoint, then fails requests with 503", od.MaxEjectionPercent))
		if cb := s.CircuitBreaker; cb != nil {
			notes = append(notes, fmt.Sprintf("circuitBreaker.failOn (%s), which outlierDetection counts: Linkerd counts 5xx responses and failed connections", strings.Join(cb.FailOn.Strings(), ", ")))
		}
	}
	if cb := s.CircuitBreaker; cb != nil {
		n := fmt.Sprintf("circuitBreaker (%d failures in a row", cb.ConsecutiveFailures)
		if fr := cb.FailureRate; fr != nil {
			n += fmt.Sprintf(" or %g of %d requests in %s", fr.Threshold, fr.MinRequests, fr.Window)
		}
		notes = append(notes, n+fmt.Sprintf(", open %s, %d probes): Linkerd has no breaker for a whole destination; it ejects single endpoints (pods), which is outlierDetection", cb.OpenTimeout, cb.HalfOpenRequests))
	}

	var docs []object
	if len(route) > 0 {
		parent := object{"group": "core", "kind": "Service", "name": name}
		if port != 0 {
			parent["port"] = port
		}
		docs = append(docs, object{
			"apiVersion": "gateway.networking.k8s.io/v1",
			"kind":       "HTTPRoute",
			"metadata":   object{"name": p.Metadata.Name, "namespace": ns, "annotations": route},
			"spec": object{
				"parentRefs": []any{parent},
				"rules":      []any{object{"matches": []any{object{"path": object{"type": "PathPrefix", "value": "/"}}}}},
			},
		})
	}
	if len(svcAnn) > 0 {
		docs = append(docs, object{
			"apiVersion": "v1",
			"kind":       "Service",
			"metadata":   object{"name": name, "namespace": ns, "annotations": svcAnn},
		})
	}
	return docs, notes, nil
}

// serviceRef reads a policy's service the way the sidecar matches it:
// "name", "name.ns", "name.ns.svc" or "name.ns.svc.cluster.local", with an
// optional port. Other hosts are outside the cluster.
func serviceRef(service, policyNS string) (name, ns string, port int, ok bool) {
	host := service
	if h, p, found := strings.Cut(service, ":"); found {
		host = h
		port, _ = strconv.Atoi(p)
	}
	labels := strings.Split(strings.TrimSuffix(strings.TrimSuffix(host, ".cluster.local"), ".svc"), ".")
	switch {
	case len(labels) == 1:
		ns = policyNS
	case len(labels) == 2:
		ns = labels[1]
	default:
		return "", "", 0, false
	}
	if ns == "" {
		ns = "default"
	}
	return labels[0], ns, port, true
}

// retryCodes is retryOn in Linkerd's retry.linkerd.io/http spelling, and
// the conditions that have none.
func retryCodes(c policy.Conditions) (string, []string) {
	var codes, notes []string
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
	if c.Has(policy.ClassConnectFailure) || c.Has(policy.ClassReset) {
		notes = append(notes, "retryOn connect-failure/reset: Linkerd's proxy handles connection errors itself (it does not send on a failed connection)")
	}
	if c.Has(policy.ClassTimeout) {
		notes = append(notes, "retryOn timeout: Linkerd retries a try that exceeds retry.linkerd.io/timeout on its own")
	}
	return strings.Join(codes, ","), notes
}

// linkerdGRPCRetry are the gRPC codes retry.linkerd.io/grpc can name.
var linkerdGRPCRetry = map[int]string{1: "cancelled", 4: "deadline-exceeded", 8: "resource-exhausted", 13: "internal", 14: "unavailable"}

// grpcRetryCodes is retryOn's gRPC codes in retry.linkerd.io/grpc's
// spelling, and the codes it has none for.
func grpcRetryCodes(c policy.Conditions) (string, []string) {
	var codes, left, notes []string
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
	if len(left) > 0 {
		notes = append(notes, fmt.Sprintf("retryOn %s: Linkerd retries only cancelled, deadline-exceeded, internal, resource-exhausted and unavailable", strings.Join(left, ", ")))
	}
	return strings.Join(codes, ","), notes
}

// duration spells d in Linkerd's duration syntax: an integer and one unit.
func duration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	default:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	}
}
