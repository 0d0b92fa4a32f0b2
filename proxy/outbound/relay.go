package outbound

import (
	"net"
	"time"

	"github.com/minimesh/minimesh/proxy/telemetry"
)

// Results of Relay, as minimesh_tcp_connections_total's result label.
const (
	RelayOK          = tcpOK
	RelayReset       = tcpReset
	RelayIdleTimeout = tcpIdleTimeout
	RelayShutdown    = tcpShutdown
)

// Relay copies an opaque TCP connection both ways between client and
// server with ServeTCP's relay (half-closes passed on, a reset on one side
// resets the other, small buffers while quiet), until both directions are
// done, a side fails, or nothing moved for idle; then it closes both. It
// counts bytes in bytes as they pass and returns the bytes each way (client
// to server first) and the result: RelayOK, RelayReset or
// RelayIdleTimeout. The inbound listener relays into the app with it.
func Relay(client, server net.Conn, bytes *telemetry.TCPBytes, idle time.Duration) (sent, received int64, result string) {
	if idle <= 0 {
		idle = DefaultTCPIdleTimeout
	}
	rl := &relay{client: client, up: server, bytes: bytes}
	return rl.run(idle)
}

// Abort resets a connection (SO_LINGER 0, through wrappers that Unwrap to
// a TCP connection) and closes it: the peer learns at once, as from a
// refused connect.
func Abort(c net.Conn) { abort(c) }
