package outbound

import (
	"context"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

// TestDrainWaitsForLateTunnel: a tunnel or relay in flight whose
// connections are not registered yet when the drain begins (a CONNECT
// whose dial or 200 is under way, a redirected connection still dialling)
// is waited for, and closed at the drain's end like the others. The drain
// looked only at the tunnels registered when it began: with none, it
// returned at once (the sidecar exited under the tunnel, its log line
// lost) and, at its end, closed none registered later.
func TestDrainWaitsForLateTunnel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &Handler{}
		h.relays.Add() // serveConnect or ServeTCP has begun
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained := make(chan struct{})
		go func() { h.Drain(ctx); close(drained) }()
		synctest.Wait() // the drain has looked, and waits

		// The relay registers its connections after the drain began.
		client, app := net.Pipe()
		up, upstream := net.Pipe()
		if !h.tunnels.add(client, up) {
			t.Fatal("a relay begun before the drain's end was refused")
		}
		time.Sleep(5 * time.Second) // half the drain timeout
		synctest.Wait()
		select {
		case <-drained:
			t.Fatal("the drain ended while a tunnel was in flight, before its timeout")
		default:
		}

		time.Sleep(5 * time.Second) // the drain timeout
		synctest.Wait()
		for _, c := range []net.Conn{app, upstream} {
			_ = c.SetReadDeadline(time.Now()) // a closed pipe says so first
			if _, err := c.Read(make([]byte, 1)); err != io.EOF && err != io.ErrClosedPipe {
				t.Fatalf("a tunnel left at the drain's end was not closed: read %v", err)
			}
		}
		if !h.closing.Load() {
			t.Error("closing not set at the drain's end")
		}
		h.tunnels.remove(client, up)
		h.relays.Done() // its log line is written
		<-drained
		if h.tunnels.add(app, upstream) {
			t.Error("a relay registered after the drain closed the others was accepted")
		}
	})
}

// TestDrainReturnsWhenRelaysEnd: the drain returns as soon as the last
// relay in flight has ended, not at its timeout.
func TestDrainReturnsWhenRelaysEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &Handler{}
		h.relays.Add()
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		began := time.Now()
		drained := make(chan struct{})
		go func() { h.Drain(ctx); close(drained) }()
		time.Sleep(time.Second)
		h.relays.Done()
		<-drained
		if took := time.Since(began); took != time.Second {
			t.Errorf("the drain returned %v after it began, want 1s (when the relay ended)", took)
		}
		if h.closing.Load() {
			t.Error("closing set by a drain that ended in time")
		}
	})
}
