package rawio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"
)

// TestZeroLength: empty reads and writes answer as net.Conn's do. An open
// connection reads and writes nothing without error; a closed one is an
// error (a caller that probes with an empty read must not spin on a dead
// connection); a passed write deadline fails an empty write, a passed read
// deadline does not fail an empty read.
func TestZeroLength(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			c, _ := pair(t)
			var conn net.Conn = c
			if !raw {
				conn = c.TCPConn
			}
			if n, err := conn.Read(nil); n != 0 || err != nil {
				t.Fatalf("empty read of an open connection: %d, %v", n, err)
			}
			if n, err := conn.Write(nil); n != 0 || err != nil {
				t.Fatalf("empty write to an open connection: %d, %v", n, err)
			}
			conn.SetDeadline(time.Now().Add(-time.Second))
			if _, err := conn.Read(nil); err != nil {
				t.Fatalf("empty read past the deadline: %v", err)
			}
			if _, err := conn.Write(nil); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("empty write past the deadline: %v", err)
			}
			conn.Close()
			_, err := conn.Read(nil)
			var oe *net.OpError
			if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != "read" {
				t.Fatalf("empty read of a closed connection: %v", err)
			}
			_, err = conn.Write(nil)
			if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != "write" {
				t.Fatalf("empty write to a closed connection: %v", err)
			}
		})
	}
}
