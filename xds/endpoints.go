package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/minimesh/minimesh/xds/xdsclient"
)

// LoadAssignment is the ClusterLoadAssignment of a Service port's
// endpoints (the control plane's side of xdsclient.FromLoadAssignment):
// one locality per zone, in the order the zones first appear, without
// the addresses no endpoint may have (xdsclient.Dialable). It lives
// here, not in xdsclient, so that the sidecar links no Envoy type.
func LoadAssignment(name string, eps []xdsclient.Endpoint) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
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
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       e.Addr.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())},
				}}},
			}},
			HealthStatus: health,
		})
	}
	return cla
}
