package xds

import (
	"context"
	"log/slog"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/minimesh/minimesh/internal/echo"
)

// endpointType is EDS's type URL.
const endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

// Callbacks make the server observable: connected sidecars as a gauge,
// and every NACK logged with the sidecar, the type and its reason,
// because a sidecar refusing its policies or endpoints is the first
// thing to look for when a change does not take effect.
func Callbacks(log *slog.Logger, reg prometheus.Registerer) serverv3.Callbacks {
	streams := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "minimesh_xds_streams", Help: "Sidecars (xDS streams) connected to this controller.",
	})
	nacks := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "minimesh_xds_nacks_total", Help: "Responses a sidecar refused (NACK); the log names the sidecar and the reason.",
	})
	reg.MustRegister(streams, nacks)
	nack := func(node *corev3.Node, typeURL, version, nonce, reason string) {
		what := "policies"
		if typeURL == endpointType {
			what = "endpoints"
		}
		// Every value is the client's: a line per NACK repeats at most
		// 100 bytes of each (a client may send megabytes).
		log.Warn("xds: a sidecar refused its "+what+" (NACK)", "node", echo.Clip(node.GetId()),
			"type", echo.Clip(typeURL), "version", echo.Clip(version), "nonce", echo.Clip(nonce), "reason", echo.Clip(reason))
		// Counted once logged: whoever sees the count finds the line.
		nacks.Inc()
	}
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			streams.Inc()
			return nil
		},
		StreamClosedFunc: func(int64, *corev3.Node) { streams.Dec() },
		// Incremental streams (an Envoy may use them) are sidecars too.
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			streams.Inc()
			return nil
		},
		DeltaStreamClosedFunc: func(int64, *corev3.Node) { streams.Dec() },
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				// version_info is the last version the client accepted;
				// the nonce names the response it refused.
				nack(req.GetNode(), req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), d.GetMessage())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				nack(req.GetNode(), req.GetTypeUrl(), "", req.GetResponseNonce(), d.GetMessage())
			}
			return nil
		},
	}
}
