// Package freeport picks loopback ports for tests and their child
// processes, and starts those again when another process took a port
// between the pick and the bind. It is the one implementation the
// controller's tests (injector/cmd/minimesh) and the e2e helpers share.
package freeport

import (
	"errors"
	"net"
	"strings"
	"syscall"
)

// Addr returns a loopback address whose port was free a moment ago.
func Addr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Addrs returns n distinct loopback addresses whose ports were free a
// moment ago: the listeners are held until all n are chosen, so that the
// kernel does not hand out the same port twice.
func Addrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// Taken reports whether err says that a port was taken: a bind's
// EADDRINUSE, or a process's exit whose output says so. Addrs' ports
// were free a moment ago; go test ./... runs packages side by side, and
// any process may bind one, or dial from it, before the process started
// on it binds it.
func Taken(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), syscall.EADDRINUSE.Error()))
}

// Start calls start with n Addrs, and again with new ones while it fails
// with a port taken (Taken), at most three times in all. It returns the
// addresses of the start that succeeded, or start's last error. start
// leaves nothing listening when it fails.
func Start(n int, start func(addrs []string) error) ([]string, error) {
	var err error
	for range 3 {
		var addrs []string
		if addrs, err = Addrs(n); err != nil {
			return nil, err
		}
		if err = start(addrs); !Taken(err) {
			if err != nil {
				return nil, err
			}
			return addrs, nil
		}
	}
	return nil, err
}
