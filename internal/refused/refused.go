// Package refused gives tests and the benchmark harness a loopback address
// where a connection is refused, for as long as they hold it.
//
// Why not the address of a listener just closed: the port is free again,
// and another test binary running at the same time (go test runs packages
// in parallel) may listen on it. A soak run once got 71 answers of
// "404 page not found" from some other test's server at its "refused"
// destination. A socket bound to the port and never listening keeps it:
// the kernel refuses connections to it (nothing listens) and will not give
// the port to another bind, nor to a connection's own end, until the
// socket is closed.
package refused

import "testing"

// Addr returns a loopback address ("127.0.0.1:port") where connections are
// refused until t's end.
func Addr(t testing.TB) string {
	t.Helper()
	addr, release, err := Hold()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return addr
}
