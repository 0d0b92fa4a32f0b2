package xds

import (
	"context"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/xds/xdsclient"
)

// TestStuckStreamsSparedByNeighbour is the adversarial review's
// reproducer: 40 streams that never read share a connection with a
// neighbour that, every quarter timeout, opens a stream, takes one
// message and leaves. Its writes were credited to every stream of the
// connection: none of the 40 was ever closed. Credited only while one
// stream has a response pending, they are closed by their responses'
// age.
func TestStuckStreamsSparedByNeighbour(t *testing.T) {
	const n, timeout = 40, 2 * time.Second
	ts := newTimedServer(t, timeout, many("shop", "svc", 190, 100, 1))
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	node := &corev3.Node{Id: "stuck", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		xdsclient.NamespaceKey: structpb.NewStringValue("shop")}}}
	open := func(ctx context.Context) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: endpointType}); err != nil {
			t.Fatal(err)
		}
		return st
	}
	for range n {
		open(t.Context()) // never read
	}
	waitFor(t, "a response on every stream", func() bool { return ts.responses.Load() >= n })
	// Judged by age each is closed within a timeout of its send, later
	// only as far as the machine lags; the bound leaves it three more.
	for stop := time.Now().Add(4 * timeout); ts.timeout.Load() < n && time.Now().Before(stop); time.Sleep(timeout / 4) {
		ctx, cancel := context.WithCancel(t.Context())
		open(ctx).Recv() // the neighbour reads one message and leaves
		cancel()
	}
	if got := ts.timeout.Load(); got < n {
		t.Fatalf("%d of %d stuck streams closed after %v (send timeout %v) while a neighbour read on their connection", got, n, 4*timeout, timeout)
	}
}

// scriptedStream is a server stream that sends into nothing and
// receives the requests it is given.
type scriptedStream struct {
	grpc.ServerStream
	next *discovery.DiscoveryRequest
}

func (s *scriptedStream) SendMsg(any) error { return nil }

func (s *scriptedStream) RecvMsg(m any) error {
	proto.Merge(m.(proto.Message), s.next)
	return nil
}

// TestPendingStreamsCounted: a connection counts its streams with a
// response pending, each once, until every response is acknowledged or
// the stream stops (its handler returned or the timeout closed it), and
// a stream that stopped is not counted again by a send its handler
// still makes; a write is progress only while at most one is counted.
func TestPendingStreamsCounted(t *testing.T) {
	resp := func(nonce string) *discovery.DiscoveryResponse {
		return &discovery.DiscoveryResponse{TypeUrl: endpointType, Nonce: nonce}
	}
	type step struct {
		stream int    // 0 or 1
		send   string // a response's nonce
		ack    string // a request's nonce
		stop   bool
		want   int32 // conn.pending after the step
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"acknowledged", []step{{send: "1", want: 1}, {send: "2", want: 1}, {ack: "1", want: 1}, {ack: "2", want: 0}}},
		{"an unknown nonce", []step{{send: "1", want: 1}, {ack: "9", want: 1}}},
		{"two streams", []step{{send: "1", want: 1}, {stream: 1, send: "1", want: 2}, {ack: "1", want: 1}, {stream: 1, ack: "1", want: 0}}},
		{"stopped pending", []step{{send: "1", want: 1}, {stream: 1, send: "1", want: 2}, {stop: true, want: 1}, {stream: 1, stop: true, want: 0}}},
		{"stopped idle", []step{{send: "1", want: 1}, {ack: "1", want: 0}, {stop: true, want: 0}}},
		{"sends after the stop", []step{{send: "1", want: 1}, {stop: true, want: 0}, {send: "2", want: 0}, {stop: true, want: 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &trackedConn{}
			var ss [2]*scriptedStream
			var ws [2]*watchedStream
			for i := range ws {
				ss[i] = &scriptedStream{}
				ws[i] = &watchedStream{ServerStream: ss[i], ctx: t.Context(), timeout: time.Hour, conn: c,
					pending: map[string][]sentAt{}, stuck: make(chan struct{})}
				defer ws[i].stop()
			}
			for i, st := range tc.steps {
				w := ws[st.stream]
				switch {
				case st.send != "":
					if err := w.SendMsg(resp(st.send)); err != nil {
						t.Fatal(err)
					}
				case st.ack != "":
					ss[st.stream].next = &discovery.DiscoveryRequest{TypeUrl: endpointType, ResponseNonce: st.ack}
					if err := w.RecvMsg(&discovery.DiscoveryRequest{}); err != nil {
						t.Fatal(err)
					}
				case st.stop:
					w.stop()
				}
				if got := c.pending.Load(); got != st.want {
					t.Fatalf("step %d %+v: %d streams pending, want %d", i, st, got, st.want)
				}
			}
		})
	}

	// Writes while 0, 1 or 2 streams are pending.
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		b := make([]byte, 4096)
		for {
			if _, err := client.Read(b); err != nil {
				return
			}
		}
	}()
	c := &trackedConn{Conn: server}
	for _, tc := range []struct {
		pending  int32
		progress bool
	}{{0, true}, {1, true}, {2, false}, {99, false}} {
		c.last.Store(0)
		c.pending.Store(tc.pending)
		if _, err := c.Write(make([]byte, minProgressWrite)); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.lastWrite(); ok != tc.progress {
			t.Errorf("a write with %d streams pending: progress %v, want %v", tc.pending, ok, tc.progress)
		}
	}
}
