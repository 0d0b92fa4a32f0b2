package webhook

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ConnCap is a listener that holds at most a fixed number of connections:
// one past it is reset as soon as accepted (the client dials again, with
// backoff), and counted. Blocking in Accept instead would leave the
// clients in the kernel's backlog, where no timeout of the server's
// reaches them. The controller caps both its webhook listener and its
// xDS listener with it; internal/connlimit does this for the sidecar, but
// injector/ must not import proxy/ (docs/architecture.md).
type ConnCap struct {
	net.Listener
	places  chan struct{}
	refused prometheus.Counter
	what    string // the listener, for the log: "webhook", "xds"
	log     *slog.Logger
	logged  atomic.Int64 // unix nanoseconds of the last warning
}

// CapConns caps l at n connections; refused counts the ones reset, and
// what names the listener in the log line that says so (at most one
// every 10 s: a flood is the counter's to show).
func CapConns(l net.Listener, n int, what string, refused prometheus.Counter, log *slog.Logger) *ConnCap {
	return &ConnCap{Listener: l, places: make(chan struct{}, n), refused: refused, what: what, log: log}
}

// Open is the number of connections accepted and not yet closed.
func (c *ConnCap) Open() int { return len(c.places) }

// Max is the cap.
func (c *ConnCap) Max() int { return cap(c.places) }

func (c *ConnCap) Accept() (net.Conn, error) {
	for {
		conn, err := c.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case c.places <- struct{}{}:
			return &cappedConn{Conn: conn, release: func() { <-c.places }}, nil
		default:
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset: nothing waits in TIME_WAIT
		}
		conn.Close()
		c.refused.Inc()
		if now := time.Now().UnixNano(); now-c.logged.Load() > int64(10*time.Second) {
			c.logged.Store(now)
			c.log.Warn(c.what+": connection refused, the listener holds its most", "max", cap(c.places), "peer", conn.RemoteAddr().String())
		}
	}
}

// cappedConn gives its place back once, at its first Close.
type cappedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
