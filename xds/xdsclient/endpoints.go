package xdsclient

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// endpointType is EDS's type URL.
const endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

// MaxEndpoints bounds the endpoints of one EDS response, all Services
// together: a response over it is refused (NACK) and the last good set
// stays. 20,000 is a cluster of several hundred Services with tens of
// replicas each; decoded, it is about 1.1 MB of the sidecar's heap (an
// Endpoint is 56 bytes, measured at 54 per endpoint with the map around
// them), and its encoding (~27 bytes an endpoint, 540 KB) stays well
// under gRPC's default 4 MB message limit. The controller never sends
// more: past it, it leaves whole Services out of the set (their callers
// dial the Service's name, through kube-proxy) rather than have every
// sidecar refuse the set, or keep an old one for every Service
// (docs/controlplane.md, "Endpoints (EDS)").
const MaxEndpoints = 20000

// MaxEndpointBytes bounds the encoded resources of one EDS response, as
// the control plane sends them: the sidecar's transport refuses a
// message over grpcwire.DefaultMaxMessage (4 MiB) whole, which ends the
// stream that carries its policies too, and MaxEndpoints alone does not
// bound it (a Service without endpoints costs its name, about 100 bytes
// on the wire, and counts no endpoint). 3 MiB leaves the response's own
// fields a megabyte; the controller leaves Services out to stay under
// it, as under MaxEndpoints.
const MaxEndpointBytes = 3 << 20

// ClusterIPName is the key, in a ClusterLoadAssignment's
// named_endpoints, of the Service's own addresses: an Endpoint whose
// address is the Service's first ClusterIP (spec.clusterIPs[0]) on the
// resource's port, and whose additional_addresses are the others (the
// second family of a dual-stack Service). A headless or ExternalName
// Service has none, and neither do the resources of a control plane that
// predates them. The sidecar names a redirected connection to one of them
// by its Service (docs/interception.md, "HTTP/1.x"); they are never
// balanced over. Envoy leaves named_endpoints unused, and a client that
// does not know the field skips it.
const ClusterIPName = "cluster-ip"

// Endpoint is one address of a Service port, as the sidecar balances
// over it.
type Endpoint struct {
	Addr netip.AddrPort
	// Terminating: the pod is shutting down but still serving
	// (Kubernetes' serving && terminating); for requests only when no
	// ready endpoint is left.
	Terminating bool
	// Zone is the endpoint's topology zone ("" when unknown), for
	// zone-aware balancing later.
	Zone string
}

// checkEndpointName refuses a resource name that is not
// <name>.<namespace>.svc.cluster.local:<port>.
func checkEndpointName(name string) error {
	host, port, ok := strings.Cut(name, ":")
	if !ok {
		return errors.New("not <service>.<namespace>.svc.cluster.local:<port>")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	svc, ns, ok := strings.Cut(strings.TrimSuffix(host, ".svc.cluster.local"), ".")
	if !ok || !strings.HasSuffix(host, ".svc.cluster.local") || svc == "" || ns == "" || strings.Contains(ns, ".") || len(host) > 253 {
		return errors.New("not <service>.<namespace>.svc.cluster.local:<port>")
	}
	return nil
}

// Dialable reports whether ip may be a Service's endpoint: not the
// unspecified address, loopback, link-local (169.254.0.0/16, where cloud
// metadata answers, and fe80::/10) or multicast, the addresses Kubernetes
// refuses in an endpoint (ValidateEndpointIP; EndpointSlices since 1.33).
// An EndpointSlice written by hand in an older cluster can carry them, and
// the sidecar dials an endpoint from inside the calling pod: 127.0.0.1:6379
// would be the caller's own loopback-only Redis, 169.254.169.254:80 its
// node's metadata server, for any app that calls the Service of whoever
// wrote the slice. kube-proxy never routes to them. Such an endpoint is
// left out, not the response refused: one namespace's slice must not stop
// every Service's endpoints in every sidecar (docs/controlplane.md,
// "Endpoints (EDS)").
func Dialable(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsValid() && !ip.IsUnspecified() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast() &&
		ip != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// FromLoadAssignment is the endpoints of one ClusterLoadAssignment (its
// encoding),
// checked as input: its name is a Service port's, every address an IP
// literal with a port in 1-65535. HEALTHY and UNKNOWN endpoints are
// ready, DRAINING ones terminating, and the rest (UNHEALTHY, TIMEOUT,
// DEGRADED) left out, as Envoy would, and so are addresses that are not
// Dialable. The same address twice is kept once (ready wins).
func FromLoadAssignment(b []byte) ([]Endpoint, error) {
	var cla loadAssignment
	if err := cla.unmarshal(b); err != nil {
		return nil, err
	}
	return fromLoadAssignment(&cla)
}

func fromLoadAssignment(cla *loadAssignment) ([]Endpoint, error) {
	name := cla.name
	if err := checkEndpointName(name); err != nil {
		return nil, fmt.Errorf("endpoints %q: %w", name, err)
	}
	var out []Endpoint
	at := map[netip.AddrPort]int{}
	for _, l := range cla.localities {
		zone := l.zone
		for _, lb := range l.lbs {
			if !lb.hasSocket {
				return nil, fmt.Errorf("endpoints %q: an endpoint without a socket address", name)
			}
			ip, err := netip.ParseAddr(lb.address)
			if err != nil || ip.Zone() != "" {
				return nil, fmt.Errorf("endpoints %q: address %q is not an IP literal", name, lb.address)
			}
			port := lb.port
			if port < 1 || port > 65535 {
				return nil, fmt.Errorf("endpoints %q: %s: port %d is not 1-65535", name, ip, port)
			}
			if !Dialable(ip) {
				continue
			}
			var terminating bool
			switch lb.health {
			case healthHealthy, healthUnknown:
			case healthDraining:
				terminating = true
			default:
				continue
			}
			e := Endpoint{Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port)), Terminating: terminating, Zone: zone}
			if i, dup := at[e.Addr]; dup {
				out[i].Terminating = out[i].Terminating && terminating
				continue
			}
			at[e.Addr] = len(out)
			out = append(out, e)
		}
	}
	return out, nil
}

// clusterIPs are the Service's addresses that cla carries
// (ClusterIPName), checked as the endpoints are: IP literals on the
// resource's own port. Addresses no Service may have (not Dialable) are
// left out.
func clusterIPs(cla *loadAssignment) ([]netip.AddrPort, error) {
	if len(cla.clusterIPs) == 0 {
		return nil, nil
	}
	_, port, _ := strings.Cut(cla.name, ":") // checked by fromLoadAssignment
	var out []netip.AddrPort
	for _, a := range cla.clusterIPs {
		if !a.hasSocket {
			return nil, fmt.Errorf("endpoints %q: a cluster IP without a socket address", cla.name)
		}
		ip, err := netip.ParseAddr(a.address)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("endpoints %q: cluster IP %q is not an IP literal", cla.name, a.address)
		}
		if strconv.Itoa(int(a.port)) != port {
			return nil, fmt.Errorf("endpoints %q: cluster IP %s on port %d, not the Service's %s", cla.name, ip, a.port, port)
		}
		if !Dialable(ip) {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(a.port)))
	}
	return out, nil
}
