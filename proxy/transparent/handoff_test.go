package transparent

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
)

// TestCloseWaitsForTheRelayToTakeOver: a connection on its way from
// detection to its relay is waited for by Close until the relay has
// counted it (Taken): Close ended detection's count before OnTCP ran, and
// a drain that looked in between saw neither count and ended under the
// relay.
func TestCloseWaitsForTheRelayToTakeOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ports, err := ParsePorts("9999")
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		relayed := make(chan struct{})
		d := New(Config{OpaquePorts: ports, OnTCP: func(c *Conn) {
			close(relayed)
			<-release // the relay has not counted the connection yet
			c.Taken()
		}})
		client, server := net.Pipe()
		defer client.Close()
		d.detecting.Add()
		go d.dispatch(server, netip.MustParseAddrPort("10.0.0.1:9999"))
		<-relayed
		closed := make(chan struct{})
		go func() { d.Close(context.Background()); close(closed) }()
		synctest.Wait()
		select {
		case <-closed:
			t.Fatal("Close returned while the connection was between detection and its relay's count")
		default:
		}
		close(release)
		<-closed
	})
}
