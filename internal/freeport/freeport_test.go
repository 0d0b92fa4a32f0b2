package freeport

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

func TestAddrs(t *testing.T) {
	addrs, err := Addrs(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if !strings.HasPrefix(a, "127.0.0.1:") || seen[a] {
			t.Errorf("bad or repeated address %q in %v", a, addrs)
		}
		seen[a] = true
	}
	if len(addrs) != 5 {
		t.Errorf("Addrs(5) = %v", addrs)
	}
}

// TestStartPortTaken: a start whose port another process took meanwhile
// (here a listener of the test's, bound first) fails with EADDRINUSE, and
// Start calls it again on other ports; any other error ends it at once.
// Before 2026-12-07 the e2e sidecars and controllers were started once,
// and such a start failed the test. (A process's exit that says so:
// e2e/internal/proc's TestPortTakenProcessExit.)
func TestStartPortTaken(t *testing.T) {
	var tries [][]string
	addrs, err := Start(2, func(addrs []string) error {
		tries = append(tries, addrs)
		if len(tries) == 1 {
			taker, err := net.Listen("tcp", addrs[1])
			if err != nil {
				t.Fatal(err)
			}
			defer taker.Close()
		}
		l, err := net.Listen("tcp", addrs[1])
		if err != nil {
			return err
		}
		return l.Close()
	})
	if err != nil || len(tries) != 2 || addrs[1] != tries[1][1] || tries[0][1] == tries[1][1] {
		t.Errorf("Start = %v, %v after tries on %v: want the second try's addresses", addrs, err, tries)
	}

	n := 0
	other := errors.New("not ready")
	if _, err := Start(1, func([]string) error { n++; return other }); err != other || n != 1 {
		t.Errorf("Start with another error: %v after %d tries, want it after 1", err, n)
	}

	n = 0
	taken := &net.OpError{Op: "listen", Err: syscall.EADDRINUSE}
	if _, err := Start(1, func([]string) error { n++; return taken }); err != taken || n != 3 {
		t.Errorf("Start with every port taken: %v after %d tries, want it after 3", err, n)
	}
}
