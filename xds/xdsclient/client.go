// Package xdsclient is the sidecar's side of the control plane: it follows
// the ADS stream of minimesh controller and turns clusters back into
// policies. It is a package of its own so that the sidecar links only the
// Envoy types it decodes (Cluster and the discovery service), not the
// server's cache and every xDS service: measured, that is most of the
// memory xDS costs a sidecar.
package xdsclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
)

// clusterType is CDS's type URL (go-control-plane's resource package has
// it, and links every xDS type with it).
const clusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

// NamespaceKey is the node metadata field that names the sidecar's
// namespace: the server serves each namespace its own snapshot.
const NamespaceKey = "namespace"

// Node is the identity a sidecar presents: the server groups by namespace.
func Node(pod, namespace, service string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{NamespaceKey: namespace, "service": service})
	return &corev3.Node{Id: namespace + "/" + pod, Cluster: service, Metadata: md}
}

// Client keeps a sidecar's policies in step with the control plane. It
// applies a response only when every resource in it decodes and
// validates (ACK), and otherwise refuses it with the reason (NACK) and
// keeps what it had; when the server is gone it keeps serving the last
// good policies and reconnects with jittered exponential backoff.
type Client struct {
	Addr string
	Node *corev3.Node
	// Apply installs the policies of a response; its error NACKs it.
	Apply func(pols []*policy.ResiliencePolicy, version string) error
	Log   *slog.Logger
	// Backoff bounds between reconnects (defaults 250 ms and 30 s).
	MinBackoff, MaxBackoff time.Duration
	DialOptions            []grpc.DialOption
}

// Run follows the server until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	lo, hi := c.MinBackoff, c.MaxBackoff
	if lo <= 0 {
		lo = 250 * time.Millisecond
	}
	if hi <= 0 {
		hi = 30 * time.Second
	}
	wait := lo
	for {
		got, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			wait = lo
		}
		c.Log.Warn("xds: stream ended; keeping the last good policies", "addr", c.Addr, "err", err, "retry_in", wait.String())
		// Full jitter: a control plane that restarts is not met by every
		// sidecar at the same instant.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(rand.Int64N(int64(wait))) + wait/2):
		}
		wait = min(2*wait, hi)
	}
}

// session runs one stream; got says whether a response arrived.
func (c *Client) session(ctx context.Context) (got bool, err error) {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.DialOptions...)
	conn, err := grpc.NewClient(c.Addr, opts...)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads := sotw.NewADSClient(sctx, c.Node, clusterType)
	if err := ads.InitConnect(conn); err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	// A NACK carries the last accepted version, so a snapshot cache
	// answers it at once with the same refused content: without a pause
	// the two would spin. The same content is refused again only after a
	// growing wait (1 s to 5 s, which is also the most a fix pushed during
	// the wait is delayed); new content is judged at once.
	var lastNack string
	nackWait := time.Second
	for {
		resp, err := ads.Fetch()
		if err != nil {
			return got, err
		}
		got = true
		pols, version, err := decode(resp)
		if err == nil {
			err = c.Apply(pols, version)
		}
		if err != nil {
			if version == lastNack {
				select {
				case <-sctx.Done():
					return got, sctx.Err()
				case <-time.After(nackWait):
				}
				nackWait = min(2*nackWait, 5*time.Second)
			} else {
				c.Log.Error("xds: refused the control plane's policies (NACK); keeping the last good ones", "version", version, "err", err)
				lastNack, nackWait = version, time.Second
			}
			if err := ads.Nack(err.Error()); err != nil {
				return got, err
			}
			continue
		}
		lastNack = ""
		c.Log.Info("xds: applied policies (ACK)", "version", version, "policies", len(pols))
		if err := ads.Ack(); err != nil {
			return got, err
		}
	}
}

// decode turns a CDS response into policies; version is a hash of the
// resources as received.
func decode(resp *sotw.Response) ([]*policy.ResiliencePolicy, string, error) {
	h := sha256.New()
	var pols []*policy.ResiliencePolicy
	var errs []error
	for _, a := range resp.Resources {
		h.Write(a.GetValue())
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			errs = append(errs, fmt.Errorf("resource %s: %w", a.GetTypeUrl(), err))
			continue
		}
		p, err := FromCluster(&c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.Source = "xds:" + c.GetName()
		pols = append(pols, p)
	}
	return pols, hex.EncodeToString(h.Sum(nil))[:16], errors.Join(errs...)
}
