package xds

import (
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/minimesh/minimesh/xds/xdsclient"
)

// LoadAssignment is the ClusterLoadAssignment of a Service port's
// endpoints (the control plane's side of xdsclient.FromLoadAssignment):
// one locality per zone, in the order the zones first appear, without
// the addresses no endpoint may have (xdsclient.Dialable). It lives
// here, not in xdsclient, so that the sidecar links no Envoy type.
//
// clusterIPs, the Service's own addresses on this port (ClusterIP:port,
// spec.clusterIPs order), go in named_endpoints[xdsclient.ClusterIPName]:
// one Endpoint with the first as its address and the others as its
// additional_addresses, as Envoy describes a host of two families.
// Envoy balances over none of it; a sidecar maps a connection to one of
// them to this Service (xdsclient.Client.ApplyClusterIPs).
func LoadAssignment(name string, eps []xdsclient.Endpoint, clusterIPs ...netip.AddrPort) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	var vip *endpointv3.Endpoint
	for _, a := range clusterIPs {
		if !xdsclient.Dialable(a.Addr()) {
			continue // no sidecar would take it (xdsclient.Dialable)
		}
		if vip == nil {
			vip = &endpointv3.Endpoint{Address: socketAddress(a)}
			continue
		}
		vip.AdditionalAddresses = append(vip.AdditionalAddresses, &endpointv3.Endpoint_AdditionalAddress{Address: socketAddress(a)})
	}
	if vip != nil {
		cla.NamedEndpoints = map[string]*endpointv3.Endpoint{xdsclient.ClusterIPName: vip}
	}
	byZone := map[string]*endpointv3.LocalityLbEndpoints{}
	for _, e := range eps {
		if !xdsclient.Dialable(e.Addr.Addr()) {
			// Never sent: no sidecar would use it (xdsclient.Dialable).
			continue
		}
		l := byZone[e.Zone]
		if l == nil {
			l = &endpointv3.LocalityLbEndpoints{}
			if e.Zone != "" {
				l.Locality = &corev3.Locality{Zone: e.Zone}
			}
			byZone[e.Zone] = l
			cla.Endpoints = append(cla.Endpoints, l)
		}
		health := corev3.HealthStatus_HEALTHY
		if e.Terminating {
			health = corev3.HealthStatus_DRAINING
		}
		l.LbEndpoints = append(l.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(e.Addr),
			}},
			HealthStatus: health,
		})
	}
	return cla
}

func socketAddress(a netip.AddrPort) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       a.Addr().String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port())},
	}}}
}
