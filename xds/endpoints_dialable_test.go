package xds

import (
	"net/netip"
	"testing"

	"github.com/minimesh/minimesh/xds/xdsclient"
)

// TestLoadAssignmentLeavesOutNotDialable: the controller never sends an
// address no sidecar would use (xdsclient.Dialable), nor a locality that
// held only such addresses.
func TestLoadAssignmentLeavesOutNotDialable(t *testing.T) {
	eps := []xdsclient.Endpoint{
		{Addr: netip.MustParseAddrPort("127.0.0.1:6379"), Zone: "z1"},
		{Addr: netip.MustParseAddrPort("169.254.169.254:80"), Zone: "z1"},
		{Addr: netip.MustParseAddrPort("[::1]:80"), Zone: "z2"},
		{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Zone: "z2"},
	}
	cla := LoadAssignment(geoName, eps)
	if len(cla.Endpoints) != 1 || len(cla.Endpoints[0].LbEndpoints) != 1 ||
		cla.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress() != "10.0.0.1" {
		t.Fatalf("load assignment %v, want only 10.0.0.1 in zone z2", cla)
	}
}
