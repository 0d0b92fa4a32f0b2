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

// AnnotationInterception chooses how the app's traffic reaches the sidecar:
// InterceptionProxyEnv (the default) or InterceptionIPTables.
const AnnotationInterception = wellknown.AnnotationPrefix + "interception"

// Values of AnnotationInterception.
const (
	InterceptionProxyEnv = "proxy-env"
	InterceptionIPTables = "iptables"
)

// The pod annotations of docs/annotations.md, beyond those in wellknown
// that the sidecar's tooling shares.
const (
	annInterception      = AnnotationInterception
	annSkipOutboundPorts = wellknown.AnnotationPrefix + "skip-outbound-ports"
	annSkipOutboundCIDRs = wellknown.AnnotationPrefix + "skip-outbound-cidrs"
	annSkipInboundPorts  = wellknown.AnnotationPrefix + "skip-inbound-ports"
	annCaptureInbound    = wellknown.AnnotationPrefix + "capture-inbound"
	annOpaquePorts       = wellknown.AnnotationPrefix + "opaque-ports"
	annProxyHTTPS        = wellknown.AnnotationPrefix + "proxy-https"
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
	annSkipOutboundPorts, annSkipOutboundCIDRs, annSkipInboundPorts, annCaptureInbound,
	annOpaquePorts, annProxyHTTPS, annCPURequest, annMemoryRequest,
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
// uses 0.05–0.14 core at 1,000 requests/s and 15 MB under load.
var (
	maxProxyCPU    = resource.MustParse("8")
	maxProxyMemory = resource.MustParse("8Gi")
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
	// iptables interception: the init container's rules, and the ports
	// the sidecar treats as opaque TCP.
	iptables          bool
	captureInbound    bool
	skipOutboundPorts []string
	skipInboundPorts  []string
	opaquePorts       []string
	opaqueSet         bool // the annotation is there, maybe empty: no opaque ports
	// proxyHTTPS: HTTPS_PROXY too (proxy-env).
	proxyHTTPS bool
	// javaNonProxy is NO_PROXY in the form of -Dhttp.nonProxyHosts.
	javaNonProxy string
	warnings     []string
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
	case !ok || v == InterceptionProxyEnv:
	case v == InterceptionIPTables:
		s.iptables = true
	default:
		return nil, deny(annInterception, v, "want "+InterceptionProxyEnv+" or "+InterceptionIPTables)
	}
	var err error
	if s.captureInbound, err = enabledDisabled(ann, annCaptureInbound); err != nil {
		return nil, err
	}
	if s.proxyHTTPS, err = enabledDisabled(ann, annProxyHTTPS); err != nil {
		return nil, err
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
		s.warnf("a proxy memory limit of %s is below the sidecar's working set (about 15 MB under load): it may be OOM-killed", s.memoryLimit)
	}
	if s.cpuLimit != nil && s.cpuLimit.Cmp(resource.MustParse("100m")) < 0 {
		s.warnf("a proxy CPU limit of %s throttles the sidecar (measured: 0.05–0.14 core at 1,000 requests/s) and adds latency to every call", s.cpuLimit)
	}

	for _, l := range []struct {
		key string
		dst *[]string
	}{
		{annSkipOutboundPorts, &s.skipOutboundPorts},
		{annSkipInboundPorts, &s.skipInboundPorts},
		{annOpaquePorts, &s.opaquePorts},
	} {
		if *l.dst, err = ports(ann, l.key); err != nil {
			return nil, err
		}
	}
	_, s.opaqueSet = ann[annOpaquePorts]
	if v, ok := ann[annSkipOutboundCIDRs]; ok {
		for _, c := range splitList(v) {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				return nil, deny(annSkipOutboundCIDRs, v, fmt.Sprintf("%s is not a CIDR like 10.0.0.0/8", quote(c)))
			}
			if p != p.Masked() {
				// 10.1.2.3/8 is most likely a typo for 10.1.2.3/32 or
				// 10.0.0.0/8; guessing would skip the wrong addresses.
				return nil, deny(annSkipOutboundCIDRs, v, fmt.Sprintf("%s has host bits set; write %s, or /%d for the one address", quote(c), p.Masked(), p.Addr().BitLen()))
			}
			s.skipCIDRs = append(s.skipCIDRs, c)
		}
	}
	if !s.iptables {
		np, dropped, ok := javaNonProxyHosts(noProxy(cfg.NoProxy, s.skipCIDRs))
		if !ok {
			// The config's own list fits (Validate): the pod's CIDRs
			// made it too long.
			return nil, deny(annSkipOutboundCIDRs, ann[annSkipOutboundCIDRs], fmt.Sprintf(
				"in Java's -Dhttp.nonProxyHosts, which has no CIDRs, these prefixes take more than %d bytes of patterns; use prefixes on octet boundaries (/8, /16, /24)", maxJavaNonProxyBytes))
		}
		s.javaNonProxy = np
		for _, d := range dropped {
			if slices.Contains(s.skipCIDRs, d) {
				s.warnf("%s: %s cannot be written in Java's -Dhttp.nonProxyHosts (no IPv6 prefixes): JVM apps send its HTTP through the sidecar", annSkipOutboundCIDRs, quote(d))
			}
		}
	}
	s.modeWarnings(ann)
	return s, nil
}

// modeWarnings names the annotations that the pod's interception mode
// ignores: a setting the user believes in and does not have.
func (s *settings) modeWarnings(ann map[string]string) {
	has := func(k string) bool { _, ok := ann[k]; return ok }
	if s.iptables {
		if has(annProxyHTTPS) {
			s.warnf("%s only applies to proxy-env interception; iptables redirects HTTPS (as opaque TCP) anyway", annProxyHTTPS)
		}
		if has(annSkipInboundPorts) && !s.captureInbound {
			s.warnf("%s has no effect without %s: enabled (inbound traffic is not redirected)", annSkipInboundPorts, annCaptureInbound)
		}
		return
	}
	for _, k := range []string{annSkipOutboundPorts, annSkipInboundPorts, annCaptureInbound, annOpaquePorts} {
		if has(k) {
			s.warnf("%s only applies to iptables interception; with proxy-env the app decides what goes through HTTP_PROXY", k)
		}
	}
}

// enabledDisabled reads an annotation that is enabled or disabled, absent
// meaning disabled.
func enabledDisabled(ann map[string]string, key string) (bool, error) {
	switch v, ok := ann[key]; {
	case !ok || v == wellknown.InjectDisabled:
		return false, nil
	case v == wellknown.InjectEnabled:
		return true, nil
	default:
		return false, deny(key, v, "want enabled or disabled")
	}
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
	if strings.HasPrefix(v, "-") && quantitySyntax.MatchString(v[1:]) {
		return resource.Quantity{}, errors.New("must be more than zero")
	}
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

// ports reads a list of ports and ranges (5432,8000-8100) and returns it
// without spaces or empty items; nil when the annotation is absent.
func ports(ann map[string]string, key string) ([]string, error) {
	v, ok := ann[key]
	if !ok {
		return nil, nil
	}
	items := splitList(v)
	for _, p := range items {
		bad := func(why string) error {
			return deny(key, v, fmt.Sprintf("%s %s", quote(p), why))
		}
		lo, hi, isRange := strings.Cut(p, "-")
		first, err := port(lo)
		if err != nil {
			return nil, bad("is not a port (1-65535) or a range like 8000-8100")
		}
		if !isRange {
			continue
		}
		last, err := port(hi)
		if err != nil {
			return nil, bad("is not a port (1-65535) or a range like 8000-8100")
		}
		if last < first {
			return nil, bad("is a range that ends before it starts")
		}
	}
	return items, nil
}

// port parses a port number, 1-65535, in plain decimal: "+80" and "080"
// are no ports in an iptables rule.
func port(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != s {
		return 0, errors.New("not a port")
	}
	return n, nil
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
