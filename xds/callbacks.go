package xds

import (
	"context"
	"log/slog"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/minimesh/minimesh/internal/echo"
)

// endpointType is EDS's type URL.
const endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

// Callbacks make the server observable: connected sidecars as a gauge,
// and NACKs counted and logged with the sidecar, the type and its reason,
// because a sidecar refusing its policies or endpoints is the first
// thing to look for when a change does not take effect.
//
// The log has a line for the first NACK of each version a stream was
// sent, per type; the stream's further NACKs of the same version (or of
// a response the server cannot name, a stale nonce) are counted, and
// their number logged once the stream NACKs another version or closes:
// a client that NACKs in a loop costs the log a line per version, not
// one per request. The metric counts every NACK.
func Callbacks(log *slog.Logger, reg prometheus.Registerer) serverv3.Callbacks {
	streams := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "minimesh_xds_streams", Help: "Sidecars (xDS streams) connected to this controller.",
	})
	nacks := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "minimesh_xds_nacks_total", Help: "Responses a sidecar refused (NACK); the log names the sidecar and the reason.",
	})
	reg.MustRegister(streams, nacks)
	n := &nackLog{log: log, nacks: nacks, streams: map[streamKey]*streamNacks{}}
	open := func(k streamKey) {
		n.mu.Lock()
		n.streams[k] = &streamNacks{byType: map[string]*typeNacks{}}
		n.mu.Unlock()
		streams.Inc()
	}
	closed := func(k streamKey, node *corev3.Node) {
		// A stream counted down only if it was counted up: the server
		// calls close for a stream whose opening was refused too.
		if n.closed(k, node) {
			streams.Dec()
		}
	}
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, _ string) error {
			open(streamKey{id: id})
			return nil
		},
		StreamClosedFunc: func(id int64, node *corev3.Node) { closed(streamKey{id: id}, node) },
		// Incremental streams (an Envoy may use them) are sidecars too.
		DeltaStreamOpenFunc: func(_ context.Context, id int64, _ string) error {
			open(streamKey{delta: true, id: id})
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *corev3.Node) { closed(streamKey{delta: true, id: id}, node) },
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				// version_info is the last version the client accepted;
				// the nonce names the response it refused.
				n.nack(streamKey{id: id}, req.GetNode(), req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), d.GetMessage())
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			n.sent(streamKey{id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				n.nack(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), "", req.GetResponseNonce(), d.GetMessage())
			}
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			n.sent(streamKey{delta: true, id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
		},
	}
}

// nackLog is what Callbacks knows of each open stream to log its NACKs.
type nackLog struct {
	log     *slog.Logger
	nacks   prometheus.Counter
	mu      sync.Mutex
	streams map[streamKey]*streamNacks
}

type streamNacks struct {
	node   string // the id of the stream's node, which later requests may omit
	byType map[string]*typeNacks
}

// typeNacks is one type of one stream: its last response, and the
// version whose NACK was last logged with the NACKs not logged since.
type typeNacks struct {
	nonce, version string
	logged         bool
	loggedVersion  string
	repeats        int
}

func (n *nackLog) typeOf(k streamKey, typeURL string) *typeNacks {
	st := n.streams[k]
	if st == nil {
		return nil
	}
	t := st.byType[typeURL]
	if t == nil {
		t = &typeNacks{}
		st.byType[typeURL] = t
	}
	return t
}

func (n *nackLog) sent(k streamKey, typeURL, nonce, version string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t := n.typeOf(k, typeURL); t != nil {
		t.nonce, t.version = nonce, version
	}
}

func (n *nackLog) nack(k streamKey, node *corev3.Node, typeURL, accepted, nonce, reason string) {
	n.nacks.Inc()
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.streams[k]
	if st == nil {
		return // never opened: the server ends it
	}
	if node != nil {
		st.node = node.GetId()
	}
	t := n.typeOf(k, typeURL)
	// The version refused, as this server sent it; "" for a nonce that
	// is not the last response's (the server ignores such a request).
	refused := ""
	if nonce == t.nonce {
		refused = t.version
	}
	if t.logged && (refused == t.loggedVersion || nonce != t.nonce) {
		t.repeats++
		return
	}
	n.repeated(st.node, typeURL, t)
	t.logged, t.loggedVersion = true, refused
	what := "policies"
	if typeURL == endpointType {
		what = "endpoints"
	}
	// Every value but refused is the client's: a line repeats at most
	// 100 bytes of each (a client may send megabytes).
	n.log.Warn("xds: a sidecar refused its "+what+" (NACK)", "node", echo.Clip(st.node),
		"type", echo.Clip(typeURL), "version", echo.Clip(accepted), "refused", refused, "nonce", echo.Clip(nonce), "reason", echo.Clip(reason))
}

// repeated logs how many NACKs of t's logged version were not logged.
// The caller holds mu.
func (n *nackLog) repeated(node, typeURL string, t *typeNacks) {
	if t.repeats == 0 {
		return
	}
	n.log.Warn("xds: a sidecar repeated its NACK", "node", echo.Clip(node), "type", echo.Clip(typeURL),
		"refused", t.loggedVersion, "times", t.repeats)
	t.repeats = 0
}

// closed forgets stream k, reporting whether it was open.
func (n *nackLog) closed(k streamKey, node *corev3.Node) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.streams[k]
	if st == nil {
		return false
	}
	delete(n.streams, k)
	if node.GetId() != "" {
		st.node = node.GetId()
	}
	for typeURL, t := range st.byType {
		n.repeated(st.node, typeURL, t)
	}
	return true
}
