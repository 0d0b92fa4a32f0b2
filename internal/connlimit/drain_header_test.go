package connlimit

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestSweepHeaderArriving drives the drain's sweep (sweepHead) over a
// real http.Server while a request's header lines arrive. net/http
// reports a request (StateActive) only once its header block is in, and
// reads what arrives into its own buffer, where pending cannot see it:
// the connection looks new (or idle) all along. A connection that read
// bytes since the sweep's last look is not idle; one whose header stops
// arriving for grace is (the drain's bound, as for a silent one).
func TestSweepHeaderArriving(t *testing.T) {
	for _, tc := range []headDrainCase{
		{name: "new connection", parts: []string{"GET / HTTP/1.1\r\nHost: x\r\n", "X-Part-1: y\r\n", "X-Part-2: y\r\n"}},
		{name: "kept-alive connection", keptAlive: true, parts: []string{"GET / HTTP/1.1\r\nHost: x\r\n", "X-Part-1: y\r\n", "X-Part-2: y\r\n"}},
		{name: "header stalls for grace", parts: []string{"GET / HTTP/1.1\r\nHost: x\r\n"}, stall: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, 0)
			srv := &http.Server{ConnState: l.ConnState, Handler: okPart2}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { srv.Close() })
			sweepHead(t, l, tc)
		})
	}
}

// TestReadOutsideDrain: before a drain, a read records nothing (the
// request path's cost is the one load of the listener's flag); during
// one, Read and ReadLazy (the lean loop's first read of a request) both
// record their bytes.
func TestReadOutsideDrain(t *testing.T) {
	for _, tc := range []struct {
		name string
		read func(*Conn) error
	}{
		{"Read", func(c *Conn) error { _, err := io.ReadFull(c, make([]byte, 1)); return err }},
		{"ReadLazy", func(c *Conn) error {
			_, n, err := c.ReadLazy(&countBufs{})
			if err == nil && n != 1 {
				err = fmt.Errorf("read %d bytes, want 1", n)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, 0)
			c := dial(t, l.Addr().String())
			nc, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			sc := nc.(*Conn)
			if _, err := io.WriteString(c, "a"); err != nil {
				t.Fatal(err)
			}
			if err := tc.read(sc); err != nil {
				t.Fatal(err)
			}
			if sc.drainRead.Load() {
				t.Fatal("a read before the drain was recorded for it")
			}
			l.sweep(time.Now(), time.Hour)
			if _, err := io.WriteString(c, "b"); err != nil {
				t.Fatal(err)
			}
			if err := tc.read(sc); err != nil {
				t.Fatal(err)
			}
			if !sc.drainRead.Load() {
				t.Fatal("a read during the drain was not recorded")
			}
		})
	}
}
