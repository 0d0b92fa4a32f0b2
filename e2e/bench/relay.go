package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/minimesh/minimesh/internal/freeport"
	"github.com/minimesh/minimesh/internal/rawio"
)

// The go-relay scenario is not a proxy anyone would run: it is the floor
// under every Go proxy of the sidecar's design (docs/benchmarks.md, "Where
// the gap to nginx is"). One goroutine per client connection, with a kept
// connection of its own to the upstream, passes each request head on and
// the response back unchanged, through the sidecar's own raw read(2) and
// write(2) (internal/rawio): the same system calls and goroutine
// wake-ups as the sidecar's exchange, and none of its HTTP work
// (no parsing beyond the head's end and Content-Length, no header map, no
// policy). Only bodiless requests and responses framed by Content-Length,
// fortio's, are relayed; anything else closes the connection.

// relayArg is the hidden first argument that runs the harness binary as
// the relay: bench relay LISTEN UPSTREAM.
const relayArg = "relay"

const keyRelay = "go-relay"

func startRelay(ctx context.Context, ps *procs, dir, upstream string) (*target, error) {
	return startSelf(ctx, ps, dir, upstream, keyRelay, []string{relayArg},
		"the floor of a Go proxy: one goroutine per connection relays each request head and response unparsed, "+
			"raw read(2)/write(2) as the sidecar's, GOMAXPROCS=1 GOGC=50")
}

// startSelf starts the harness's own binary as the target key: args, then
// the address it is to listen on and the upstream's. As the sidecar is
// injected: one P, GOGC=50.
func startSelf(ctx context.Context, ps *procs, dir, upstream, key string, args []string, config string) (*target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	listen, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	p, err := ps.start(key, self, append(args, listen, upstream), cleanEnv("GOMAXPROCS=1", "GOGC=50"), dir)
	if err != nil {
		return nil, err
	}
	if err := waitOK(ctx, p, "http://"+listen+"/", upstream, 10*time.Second); err != nil {
		return nil, err
	}
	return &target{key: key, name: key, addr: listen, proc: p, version: "this harness", config: config}, nil
}

// runRelay serves the relay until the process is stopped or its
// listener fails, with that failure.
func runRelay(listen, upstream string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			_ = relay(rawio.Wrap(c), rawio.Wrap(u))
		}()
	}
}

// relay passes requests from c to u and their responses back until
// either side ends or sends what it cannot frame.
func relay(c, u net.Conn) error {
	req := make([]byte, 0, 4096)
	resp := make([]byte, 0, 4096)
	for {
		var err error
		if req, err = readMessage(c, req[:0], false); err != nil {
			return err
		}
		if _, err := u.Write(req); err != nil {
			return err
		}
		if resp, err = readMessage(u, resp[:0], true); err != nil {
			return err
		}
		if _, err := c.Write(resp); err != nil {
			return err
		}
	}
}

var errUnframed = errors.New("relay: a message it cannot frame")

// readMessage reads one message into buf: a head, and for a response the
// Content-Length bytes after it.
func readMessage(c net.Conn, buf []byte, response bool) ([]byte, error) {
	for {
		n, err := frame(buf, response)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			return buf, nil
		}
		if len(buf) == cap(buf) {
			return nil, errUnframed
		}
		m, err := c.Read(buf[len(buf):cap(buf)])
		if err != nil {
			return nil, err // io.EOF: the peer is done
		}
		buf = buf[:len(buf)+m]
	}
}

// frame returns the length of the one message buf holds whole, a head and
// for a response the Content-Length bytes after it; 0 while it is not
// whole yet; errUnframed for what the relays do not pass on (a response
// without Content-Length, bytes past the message: pipelined, or a body).
func frame(buf []byte, response bool) (int, error) {
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		return 0, nil
	}
	want := end + 4
	if response {
		n, ok := contentLength(buf[:end])
		if !ok {
			return 0, errUnframed
		}
		want += n
	}
	switch {
	case len(buf) == want:
		return want, nil
	case len(buf) > want:
		return 0, errUnframed
	}
	return 0, nil
}

func contentLength(head []byte) (int, bool) {
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(k, []byte("Content-Length")) {
			n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
			if err != nil || n < 0 {
				return 0, false
			}
			return n, true
		}
	}
	return 0, false
}
