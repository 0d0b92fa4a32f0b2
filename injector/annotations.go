package injector

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/wellknown"
)

// The pod annotations of DESIGN.md ("Pod annotations"), beyond the two in
// wellknown that the sidecar's tooling shares.
const (
	annInterception      = wellknown.AnnotationPrefix + "interception"
	annSkipOutboundPorts = wellknown.AnnotationPrefix + "skip-outbound-ports"
	annSkipOutboundCIDRs = wellknown.AnnotationPrefix + "skip-outbound-cidrs"
	annCPURequest        = wellknown.AnnotationPrefix + "proxy-cpu-request"
	annMemoryRequest     = wellknown.AnnotationPrefix + "proxy-memory-request"
	annCPULimit          = wellknown.AnnotationPrefix + "proxy-cpu-limit"
	annMemoryLimit       = wellknown.AnnotationPrefix + "proxy-memory-limit"
	annLogLevel          = wellknown.AnnotationPrefix + "proxy-log-level"
	annServiceName       = wellknown.AnnotationPrefix + "service-name"
)

// knownAnnotations are every minimesh.io/ annotation; any other key with
// the prefix is most likely a typo, and a typo silently ignored is a
// setting the user believes in and does not have.
var knownAnnotations = []string{
	wellknown.AnnotationInject, wellknown.AnnotationStatus, annInterception,
	annSkipOutboundPorts, annSkipOutboundCIDRs, annCPURequest, annMemoryRequest,
	annCPULimit, annMemoryLimit, annLogLevel, annServiceName,
}

// maxAnnotationBytes bounds the value of every minimesh annotation. The
// longest legitimate one is a list of CIDRs or ports; skip-outbound-cidrs
// is copied into NO_PROXY and no_proxy of every app container, so its
// length is multiplied in the pod and in the webhook's patch.
const maxAnnotationBytes = 4096

// maxWarnings bounds the warnings of one pod: each app container can earn
// four (its own proxy variables) and each unknown annotation one. kubectl
// prints every warning, and the API server truncates long lists anyway.
const maxWarnings = 10

// The most a sidecar may be given. Beyond these a value is a typo
// (999999999999999999Ei, 1e308) or a pod no node can schedule; the sidecar
// uses about 0.2 core per 1,000 requests/s and 22 MB under load.
var (
	maxProxyCPU    = resource.MustParse("8")
	maxProxyMemory = resource.MustParse("8Gi")
)

const (
	interceptionProxyEnv = "proxy-env"
	interceptionIPTables = "iptables"
)

// settings are a pod's annotations, parsed and checked.
type settings struct {
	serviceName   string // "" when no annotation names it
	logLevel      string
	cpuRequest    *resource.Quantity
	memoryRequest *resource.Quantity
	cpuLimit      *resource.Quantity
	memoryLimit   *resource.Quantity
	skipCIDRs     []string
	warnings      []string
}

// parseSettings reads the annotations over the config's defaults. The first
// bad value is returned as a *DenyError naming the annotation and the value.
func parseSettings(ann map[string]string, cfg *Config) (*settings, error) {
	s := &settings{logLevel: cfg.Proxy.LogLevel}
	var unknown []string
	for k := range ann {
		if strings.HasPrefix(k, wellknown.AnnotationPrefix) && !slices.Contains(knownAnnotations, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		s.warnf("annotation %s is not a minimesh annotation and has no effect (known: %s)",
			echo.Clip(k), strings.Join(knownAnnotations, ", "))
	}
	for _, k := range knownAnnotations {
		if v := ann[k]; len(v) > maxAnnotationBytes {
			return nil, deny(k, v, fmt.Sprintf("%d bytes, more than the %d a minimesh annotation may hold", len(v), maxAnnotationBytes))
		}
	}

	switch v, ok := ann[annInterception]; {
	case !ok || v == interceptionProxyEnv:
	case v == interceptionIPTables:
		return nil, deny(annInterception, v, "transparent interception is not available yet; use proxy-env (HTTP_PROXY)")
	default:
		return nil, deny(annInterception, v, "want proxy-env")
	}

	if v, ok := ann[annServiceName]; ok {
		if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
			return nil, deny(annServiceName, v, errs[0])
		}
		s.serviceName = v
	}
	if v, ok := ann[annLogLevel]; ok {
		if !validLogLevel(v) {
			return nil, deny(annLogLevel, v, "want debug, info, warn or error")
		}
		s.logLevel = v
	}

	var err error
	for _, q := range []struct {
		key, def string
		max      resource.Quantity
		dst      **resource.Quantity
	}{
		{annCPURequest, cfg.Proxy.CPURequest, maxProxyCPU, &s.cpuRequest},
		{annMemoryRequest, cfg.Proxy.MemoryRequest, maxProxyMemory, &s.memoryRequest},
		{annCPULimit, cfg.Proxy.CPULimit, maxProxyCPU, &s.cpuLimit},
		{annMemoryLimit, cfg.Proxy.MemoryLimit, maxProxyMemory, &s.memoryLimit},
	} {
		if *q.dst, err = quantity(ann, q.key, q.def, q.max); err != nil {
			return nil, err
		}
	}
	if err := checkRequestLimit(ann, annCPURequest, annCPULimit, &s.cpuRequest, s.cpuLimit); err != nil {
		return nil, err
	}
	if err := checkRequestLimit(ann, annMemoryRequest, annMemoryLimit, &s.memoryRequest, s.memoryLimit); err != nil {
		return nil, err
	}
	if s.memoryLimit != nil && s.memoryLimit.Cmp(resource.MustParse("32Mi")) < 0 {
		s.warnf("a proxy memory limit of %s is below the sidecar's working set (about 22 MB under load): it may be OOM-killed", s.memoryLimit)
	}
	if s.cpuLimit != nil && s.cpuLimit.Cmp(resource.MustParse("100m")) < 0 {
		s.warnf("a proxy CPU limit of %s throttles the sidecar (about 0.2 core per 1,000 requests/s) and adds latency to every call", s.cpuLimit)
	}

	if v, ok := ann[annSkipOutboundPorts]; ok {
		if err := checkPorts(v); err != nil {
			return nil, err
		}
		s.warnf("%s only applies to iptables interception; with proxy-env the app decides what goes through HTTP_PROXY", annSkipOutboundPorts)
	}
	if v, ok := ann[annSkipOutboundCIDRs]; ok {
		for _, c := range splitList(v) {
			if _, err := netip.ParsePrefix(c); err != nil {
				return nil, deny(annSkipOutboundCIDRs, v, fmt.Sprintf("%s is not a CIDR like 10.0.0.0/8", quote(c)))
			}
			s.skipCIDRs = append(s.skipCIDRs, c)
		}
	}
	return s, nil
}

func (s *settings) warnf(format string, args ...any) {
	s.warnings = append(s.warnings, "minimesh: "+fmt.Sprintf(format, args...))
}

// capWarnings keeps the first maxWarnings and says how many more there
// were.
func capWarnings(w []string) []string {
	if len(w) <= maxWarnings {
		return w
	}
	return append(w[:maxWarnings:maxWarnings], fmt.Sprintf("minimesh: %d more warnings not shown", len(w)-maxWarnings))
}

// quantity is the annotation key's value, else def; an empty result means
// no value (no request or no limit).
func quantity(ann map[string]string, key, def string, max resource.Quantity) (*resource.Quantity, error) {
	v, ok := ann[key]
	if !ok {
		v = def
	}
	if v == "" {
		return nil, nil
	}
	q, err := parseResource(v, max)
	if err != nil {
		if ok {
			return nil, deny(key, v, err.Error())
		}
		return nil, fmt.Errorf("config default for %s %s: %w", key, quote(v), err)
	}
	return &q, nil
}

// quantitySyntax is the form of a quantity that resource.ParseQuantity is
// safe on: it parses 1e999999999 by computing 10^999999999, which holds a
// CPU for minutes, and a sidecar's resources need no exponent beyond two
// digits.
var quantitySyntax = regexp.MustCompile(`^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]{1,2})?$`)

// parseResource parses a sidecar's CPU or memory quantity, more than zero
// and at most max. The error's text is the reason, for a denial or a
// config error that names the field.
func parseResource(v string, max resource.Quantity) (resource.Quantity, error) {
	if !quantitySyntax.MatchString(v) {
		return resource.Quantity{}, errors.New("not a quantity like 100m or 64Mi")
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return resource.Quantity{}, errors.New("not a quantity like 100m or 64Mi")
	}
	if q.Sign() <= 0 {
		return resource.Quantity{}, errors.New("must be more than zero")
	}
	if q.Cmp(max) > 0 {
		return resource.Quantity{}, fmt.Errorf("more than %s, the most a sidecar may be given", max.String())
	}
	return q, nil
}

// checkRequestLimit refuses a request above its limit here, with the
// annotation's name, rather than leaving the API server to refuse the pod
// with a message about a container the user never wrote. A limit annotated
// below the config's default request lowers the request, as Kubernetes
// does for a container with only a limit.
func checkRequestLimit(ann map[string]string, reqKey, limKey string, req **resource.Quantity, lim *resource.Quantity) error {
	if *req == nil || lim == nil || (*req).Cmp(*lim) <= 0 {
		return nil
	}
	_, reqSet := ann[reqKey]
	lv, limSet := ann[limKey]
	switch {
	case limSet && !reqSet:
		*req = lim
		return nil
	case limSet:
		return deny(limKey, lv, fmt.Sprintf("the proxy's limit is less than its request %s", *req))
	default:
		return deny(reqKey, (*req).String(), fmt.Sprintf("the proxy's request is more than its limit %s", lim))
	}
}

func checkPorts(v string) error {
	for _, p := range splitList(v) {
		lo, hi, isRange := strings.Cut(p, "-")
		for _, n := range []string{lo, hi} {
			if n == "" && !isRange {
				continue
			}
			port, err := strconv.Atoi(n)
			if err != nil || port < 1 || port > 65535 {
				return deny(annSkipOutboundPorts, v, fmt.Sprintf("%s is not a port (1-65535) or a range like 8000-8100", quote(p)))
			}
		}
	}
	return nil
}

// splitList splits a comma-separated annotation value, ignoring spaces and
// empty items.
func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func deny(key, value, reason string) *DenyError {
	return &DenyError{Field: "metadata.annotations[" + key + "]", Value: value, Reason: reason}
}
