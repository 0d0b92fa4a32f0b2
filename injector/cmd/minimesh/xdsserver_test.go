package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/internal/grpcwire"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// pipeListener is a listener of in-memory connections (net.Pipe), which
// a synctest bubble's fake clock can run: a dialled connection can be
// made to go silent in both directions (hole), as a sidecar and its
// controller see each other when the other's node is lost.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "10.0.0.1:15010" }

// link is one dialled connection: its two ends, which go silent together.
type link struct {
	client, server *silentConn
	dead           chan struct{}
	deadOnce       sync.Once
}

func (k *link) hole() { k.deadOnce.Do(func() { close(k.dead) }) }

// dial makes a link and hands its server end to the listener.
func (l *pipeListener) dial(ctx context.Context) (*link, error) {
	c, s := bufPipe()
	k := &link{dead: make(chan struct{})}
	k.client = &silentConn{Conn: c, dead: k.dead, closed: make(chan struct{})}
	k.server = &silentConn{Conn: s, dead: k.dead, closed: make(chan struct{})}
	select {
	case l.conns <- k.server:
		return k, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// bufPipe is net.Pipe with a buffer each way, as a socket has: net.Pipe's
// writes wait for the reader, and an HTTP/2 client and server both write
// their SETTINGS before they read.
func bufPipe() (net.Conn, net.Conn) {
	a, b := newHalf(), newHalf()
	return &pipeEnd{in: a, out: b}, &pipeEnd{in: b, out: a}
}

// half is one direction of a bufPipe.
type half struct {
	mu     sync.Mutex
	buf    []byte
	closed bool
	more   chan struct{} // a token when something was written or closed
}

func newHalf() *half { return &half{more: make(chan struct{}, 1)} }

func (h *half) poke() {
	select {
	case h.more <- struct{}{}:
	default:
	}
}

func (h *half) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.poke()
}

type pipeEnd struct {
	in, out  *half
	mu       sync.Mutex
	deadline time.Time // for reads
}

func (p *pipeEnd) Read(b []byte) (int, error) {
	for {
		p.in.mu.Lock()
		if len(p.in.buf) > 0 {
			n := copy(b, p.in.buf)
			p.in.buf = p.in.buf[n:]
			p.in.mu.Unlock()
			p.in.poke() // for another reader, or what is left
			return n, nil
		}
		if p.in.closed {
			p.in.mu.Unlock()
			return 0, io.EOF
		}
		p.in.mu.Unlock()
		p.mu.Lock()
		dl := p.deadline
		p.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timeout = time.After(d)
		}
		select {
		case <-p.in.more:
		case <-timeout:
		}
	}
}

func (p *pipeEnd) Write(b []byte) (int, error) {
	p.out.mu.Lock()
	if p.out.closed {
		p.out.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	p.out.buf = append(p.out.buf, b...)
	p.out.mu.Unlock()
	p.out.poke()
	return len(b), nil
}

func (p *pipeEnd) Close() error {
	p.in.close()
	p.out.close()
	return nil
}

func (p *pipeEnd) LocalAddr() net.Addr  { return pipeAddr{} }
func (p *pipeEnd) RemoteAddr() net.Addr { return pipeAddr{} }
func (p *pipeEnd) SetDeadline(t time.Time) error {
	return p.SetReadDeadline(t)
}

func (p *pipeEnd) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	p.mu.Unlock()
	p.in.poke()
	return nil
}
func (p *pipeEnd) SetWriteDeadline(time.Time) error { return nil }

// silentConn, once its link is dead, drops what it is given to write and
// reads nothing more; only Close ends it.
type silentConn struct {
	net.Conn
	dead      chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *silentConn) Write(p []byte) (int, error) {
	select {
	case <-c.dead:
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		default:
			return len(p), nil
		}
	default:
		return c.Conn.Write(p)
	}
}

func (c *silentConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	select {
	case <-c.dead:
		<-c.closed // what came is dropped; wait for our own end's Close
		return 0, net.ErrClosed
	default:
		return n, err
	}
}

func (c *silentConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *silentConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func testPolicies(t *testing.T, failures string) []*policy.ResiliencePolicy {
	t.Helper()
	ps, err := policy.Decode("p.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\n"+
		"spec: {service: geo, circuitBreaker: {consecutiveFailures: "+failures+"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestXDSKeepalive runs the controller's gRPC server options and the
// sidecar's client with their real figures on a fake clock:
//   - a quiet stream lives on: the client's pings (every 20 s) are within
//     the server's policy (grpc-go's default policy, MinTime 5 min, ended
//     the connection with GOAWAY "too_many_pings" after a minute);
//   - the server gone silent (no reset) is noticed by the client within
//     35 s of its last frame, and the client connects again keeping its
//     policies; before, it waited on the dead stream for ever (TCP
//     keepalive's minutes, which a pipe does not have);
//   - the client gone silent is dropped by the server within 40 s, and
//     its stream with it; before, the server held it for ever.
func TestXDSKeepalive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		srv := xds.NewServer(ctx, nil)
		if err := srv.Set(testPolicies(t, "3"), nil); err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer(xdsServerOptions()...)
		srv.Register(g)
		ln := newPipeListener()
		served := make(chan struct{})
		go func() { g.Serve(ln); close(served) }()
		defer func() { g.Stop(); <-served }()

		links := make(chan *link, 10)
		hc := grpcwire.NewKeepaliveClient(time.Second, xdsclient.DefaultKeepalive)
		hc.Transport.(*http.Transport).DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			k, err := ln.dial(ctx)
			if err != nil {
				return nil, err
			}
			links <- k
			return k.client, nil
		}
		applied := make(chan int, 10)
		c := &xdsclient.Client{Addr: "xds:15010", Node: xdsclient.Node("p", "shop", "web"), HTTPClient: hc,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Apply: func(p []*policy.ResiliencePolicy, _ string) error {
				applied <- p[0].Spec.CircuitBreaker.ConsecutiveFailures
				return nil
			}}
		cctx, stopClient := context.WithCancel(ctx)
		ran := make(chan struct{})
		go func() { c.Run(cctx); close(ran) }()
		defer func() { stopClient(); <-ran; hc.CloseIdleConnections() }()

		first := <-links
		if n := <-applied; n != 3 {
			t.Fatalf("applied %d", n)
		}
		// Ten quiet minutes, then a change: it comes on the same
		// connection and stream.
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if len(links) != 0 || first.client.isClosed() || first.server.isClosed() {
			t.Fatalf("the quiet stream was ended (%d new connections): pings refused?", len(links))
		}
		if err := srv.Set(testPolicies(t, "4"), nil); err != nil {
			t.Fatal(err)
		}
		if n := <-applied; n != 4 {
			t.Fatalf("applied %d", n)
		}
		synctest.Wait()
		if len(links) != 0 {
			t.Fatalf("%d new connections", len(links))
		}

		// The controller's node is lost: nothing answers, nothing resets.
		first.hole()
		start := time.Now()
		within(t, first.client.closed, "the client to notice a silent control plane")
		if d := time.Since(start); d > 35*time.Second {
			t.Errorf("a silent control plane noticed after %v; want at most 35 s", d)
		}
		second := <-links // after the first backoff, 125-375 ms
		if n := <-applied; n != 4 {
			t.Fatalf("applied %d after reconnecting", n)
		}
		// The server dropped its end of the silent connection too.
		within(t, first.server.closed, "the server to drop a silent client")
		if d := time.Since(start); d > 40*time.Second {
			t.Errorf("the server dropped a silent client after %v; want at most 40 s", d)
		}

		// The sidecar's pod is lost, its stream open: the server drops
		// the connection within 40 s (30 s without a read, 10 s for the
		// ping's answer), whatever the client does.
		second.hole()
		start = time.Now()
		within(t, second.server.closed, "the server to drop a silent client")
		if d := time.Since(start); d > 40*time.Second {
			t.Errorf("the server dropped a silent client after %v; want at most 40 s", d)
		}
	})
}

// within waits for ch on the bubble's clock, at most 10 minutes.
func within(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Minute):
		t.Fatalf("waited 10 minutes for %s", what)
	}
}

// h2Handshake writes a client's preface and SETTINGS on c and returns the
// server's first SETTINGS.
func h2Handshake(t *testing.T, c net.Conn) (*http2.Framer, *http2.SettingsFrame) {
	t.Helper()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, bufio.NewReader(c))
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %T", f)
	}
	return fr, sf
}

// TestXDSConnectionBounds: a connection may open at most 100 streams
// (the server says so in its SETTINGS; grpc-go's default is no limit);
// one that completes no handshake is closed after 10 s (grpc-go: 120 s),
// and one that opens no stream after a minute (grpc-go: never).
func TestXDSConnectionBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		srv := xds.NewServer(ctx, nil)
		g := grpc.NewServer(xdsServerOptions()...)
		srv.Register(g)
		ln := newPipeListener()
		served := make(chan struct{})
		go func() { g.Serve(ln); close(served) }()
		defer func() { g.Stop(); <-served }()

		k, err := ln.dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer k.client.Close()
		fr, sf := h2Handshake(t, k.client)
		if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 100 {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d (%v), want 100", v, ok)
		}
		start := time.Now()
		var away *http2.GoAwayFrame
		for time.Since(start) < 10*time.Minute {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok && away == nil {
				away = ga
				if d := time.Since(start); d != xdsMaxIdle {
					t.Errorf("GOAWAY after %v without a stream, want %v", d, xdsMaxIdle)
				}
			}
			if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
				fr.WriteSettingsAck()
			}
			if pf, ok := f.(*http2.PingFrame); ok && !pf.IsAck() {
				fr.WritePing(true, pf.Data)
			}
		}
		if away == nil {
			t.Fatal("a connection without a stream closed without GOAWAY")
		}

		// No preface: closed after 10 s.
		k2, err := ln.dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer k2.client.Close()
		start = time.Now()
		if _, err := io.Copy(io.Discard, k2.client); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Logf("read: %v", err)
		}
		if d := time.Since(start); d != 10*time.Second {
			t.Errorf("a connection without a handshake closed after %v, want 10 s", d)
		}
	})
}

// TestXDSRequestSizeBound: a message over xds.MaxRequestBytes is refused
// by the transport before it is read (ResourceExhausted, grpc-go's
// message), not decoded and then refused by the xds server
// (InvalidArgument); one at the bound goes through.
func TestXDSRequestSizeBound(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := xds.NewServer(ctx, nil)
	if err := srv.Set(testPolicies(t, "3"), nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(xdsServerOptions()...)
	srv.Register(g)
	go g.Serve(l)
	defer g.Stop()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	send := func(size int) error {
		st, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		req := &discovery.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}
		md, _ := structpb.NewStruct(map[string]any{xdsclient.NamespaceKey: "shop"})
		req.Node = &corev3.Node{Id: "p", Metadata: md}
		pad := size - proto.Size(req) - 4 // the version_info field's tag and 3-byte length
		req.VersionInfo = strings.Repeat("v", pad)
		if n := proto.Size(req); n != size {
			t.Fatalf("a request of %d bytes, want %d", n, size)
		}
		if err := st.Send(req); err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
	if err := send(xds.MaxRequestBytes); err != nil {
		t.Fatalf("a request at the bound: %v", err)
	}
	err = send(xds.MaxRequestBytes + 1)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("a request over the bound: %v; want the transport's ResourceExhausted", err)
	}
}

// TestXDSConnectionCap: `minimesh controller` holds at most
// --xds-max-connections on its xDS listener; one more is reset as soon as
// accepted and counted, and a place freed is taken again. Before, a
// client could hold connections without end.
func TestXDSConnectionCap(t *testing.T) {
	dir := t.TempDir()
	var errOut safeBuf
	var exited chan error
	var cancel func()
	defer func() {
		stopController(t, exited, cancel)
		if t.Failed() {
			t.Logf("controller stderr:\n%s", errOut.String())
		}
	}()
	addrs := onFreeAddrs(t, 3, func(addrs []string) (err error) {
		exited, cancel, err = controllerOn(addrs, &errOut, "--policy-dir", dir, "--xds-max-connections", "2", "--shutdown-delay", "0")
		return err
	})
	// held: a connection the server took answers the handshake.
	held := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addrs[2])
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		h2Handshake(t, c)
		return c
	}
	a, b := held(), held()
	defer b.Close()
	// The reset may come before the dial returns (the listener refuses
	// as soon as it accepts), or on the first read.
	c, err := net.Dial("tcp", addrs[2])
	if err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, http2.ClientPreface)
		var n int
		if n, err = c.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the third connection: read %d bytes, %v; want it reset", n, err)
		}
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the third connection: %v; want it reset", err)
	}
	resp, err := http.Get("http://" + addrs[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"minimesh_xds_connections_refused_total 1\n", "minimesh_xds_connections 2\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// A place freed is taken again (once the server has seen the close).
	a.Close()
	waitFor(t, exited, 10*time.Second, func() error {
		c, err := net.Dial("tcp", addrs[2])
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, http2.ClientPreface)
		http2.NewFramer(c, c).WriteSettings()
		_, err = http2.NewFramer(io.Discard, c).ReadFrame()
		return err
	})
}

// controllerOn runs `minimesh controller` in this process on addrs (its
// webhook, admin and xDS listeners) with more args, until /readyz answers
// 200 (not any answer: another process holding the admin port answers
// too). On an error it has ended, its exit put back in exited.
func controllerOn(addrs []string, errOut io.Writer, args ...string) (exited chan error, cancel func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	root := newRootCmd(io.Discard, errOut)
	root.SetArgs(append([]string{"controller", "--webhook-addr", addrs[0], "--admin-addr", addrs[1], "--xds-addr", addrs[2]}, args...))
	exited = make(chan error, 1)
	go func() { exited <- root.ExecuteContext(ctx) }()
	err = awaitCond(exited, 20*time.Second, readyz(addrs[1]))
	if err != nil {
		cancel()
		werr := <-exited
		exited <- werr
	}
	return exited, cancel, err
}

// stopController ends a controller that controllerOn started (its exit
// and cancel) and fails t if it ended with an error. Nothing when none
// was started: a test that failed before would otherwise wait for ever on
// the nil exit channel.
func stopController(t *testing.T, exited chan error, cancel func()) {
	t.Helper()
	if exited == nil {
		return
	}
	cancel()
	if err := <-exited; err != nil {
		t.Errorf("controller: %v", err)
	}
}

// TestControllerPortTaken: a port that freeport.Start found free and another
// process took before the controller bound it fails that start with
// EADDRINUSE, and onFreeAddrs starts it again on other ports. (CI runs
// packages side by side; before 2026-12-07 such a start failed the test.)
func TestControllerPortTaken(t *testing.T) {
	var errOut safeBuf
	var starts []error
	var exited chan error
	var cancel func()
	defer func() { stopController(t, exited, cancel) }()
	onFreeAddrs(t, 3, func(addrs []string) (err error) {
		if len(starts) == 0 {
			// The other process, on the xDS port, bound first.
			l, err := net.Listen("tcp", addrs[2])
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
		}
		exited, cancel, err = controllerOn(addrs, &errOut, "--policy-dir", t.TempDir(), "--shutdown-delay", "0")
		starts = append(starts, err)
		return err
	})
	if len(starts) != 2 || !errors.Is(starts[0], syscall.EADDRINUSE) || starts[1] != nil {
		t.Errorf("starts ended %v, want EADDRINUSE then ready on other ports", starts)
	}
}

type safeBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *safeBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *safeBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
