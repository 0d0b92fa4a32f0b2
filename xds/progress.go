package xds

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// minProgressWrite is the smallest socket write that counts as a
// connection making progress. The control frames a stuck client can
// provoke without taking a byte of its response (a PING ack, a
// WINDOW_UPDATE, a SETTINGS ack: 9 to 17 bytes, a few together) are
// smaller, so that a grpc-go client pinging every 10 s while it leaves
// its stream's window closed is still closed.
const minProgressWrite = 64

// epoch is the origin of the write times, kept as monotonic nanoseconds
// in an atomic so that a write takes no lock.
var epoch = time.Now()

// WriteTracker is a listener whose connections record when they last
// wrote (Server.SendTimeouts reads it): the send timeout judges whether
// a connection moves its bytes, not how old a response is. Serve the
// xDS gRPC server on it.
type WriteTracker struct {
	net.Listener
	mu    sync.Mutex
	conns map[connKey]*trackedConn
}

// connKey is a connection's two ends, as grpc-go's peer.Peer has them.
type connKey struct{ local, remote string }

// TrackWrites wraps l (see WriteTracker).
func TrackWrites(l net.Listener) *WriteTracker {
	return &WriteTracker{Listener: l, conns: map[connKey]*trackedConn{}}
}

func (l *WriteTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l, key: keyOf(c.LocalAddr(), c.RemoteAddr())}
	// A response queued on a connection that never wrote is judged from
	// when it was queued (see lastWrite), not from this.
	l.mu.Lock()
	l.conns[tc.key] = tc
	l.mu.Unlock()
	return tc, nil
}

// conn is the tracked connection with these ends; nil once it is
// closed or if it was not accepted here.
func (l *WriteTracker) conn(local, remote net.Addr) *trackedConn {
	if l == nil || local == nil || remote == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[keyOf(local, remote)]
}

func keyOf(local, remote net.Addr) connKey {
	var k connKey
	if local != nil {
		k.local = local.String()
	}
	if remote != nil {
		k.remote = remote.String()
	}
	return k
}

// trackedConn is a connection that records its last write.
type trackedConn struct {
	net.Conn
	l   *WriteTracker
	key connKey
	// last is when a write of at least minProgressWrite bytes last
	// returned while at most one stream had a response pending, in
	// nanoseconds since epoch; 0: none yet.
	last atomic.Int64
	// pending is how many of the connection's streams have a response
	// not taken (watchedStream.settle). A write made while two or more
	// do may be any one's bytes: crediting it to each let a client keep
	// up to 99 streams that never read open by reading on one more.
	pending atomic.Int32
}

func (c *trackedConn) Write(b []byte) (int, error) {
	// Read before the write: a stream is counted before its response is
	// queued, so a buffer holding a second stream's bytes is never
	// credited, and one counted during the write only has later bytes.
	alone := c.pending.Load() <= 1
	n, err := c.Conn.Write(b)
	if n >= minProgressWrite && alone {
		c.last.Store(int64(time.Since(epoch)))
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	// A later connection may have the same ends once this one is gone.
	if c.l.conns[c.key] == c {
		delete(c.l.conns, c.key)
	}
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// lastWrite is when the connection last wrote while at most one stream
// had a response pending; ok is false if it never did.
func (c *trackedConn) lastWrite() (at time.Time, ok bool) {
	n := c.last.Load()
	if n == 0 {
		return time.Time{}, false
	}
	return epoch.Add(time.Duration(n)), true
}
