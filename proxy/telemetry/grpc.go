package telemetry

import "github.com/minimesh/minimesh/internal/promtext"

// GRPCCodes are the names of the gRPC status codes, by value
// (google.golang.org/grpc/codes): the grpc_code label's values.
var GRPCCodes = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// newGRPCVec is minimesh_grpc_requests_total{direction, destination,
// grpc_code}: every gRPC call once, by the status its client got
// (docs/metrics.md). It is a counter of its own rather than a label of
// minimesh_requests_total, whose series stay as they were (no empty
// grpc_code on every HTTP series, no queries to change); its cardinality
// is the destination cap times the 17 codes, each series made when its
// code is first seen.
func newGRPCVec() *promtext.CounterVec {
	return promtext.NewCounterVec("minimesh_grpc_requests_total",
		"gRPC calls handled by the sidecar, by direction, destination and the gRPC status the client got (the sidecar's own answers included).",
		"direction", "destination", "grpc_code")
}

type grpcCounter struct{ c *promtext.Counter }

// GRPC counts one gRPC call that ended with code (a value of GRPCCodes;
// anything else counts as UNKNOWN). The counter of each code is bound to
// its labels on first use: no label hashing per call.
func (d *Destination) GRPC(code int) {
	if code < 0 || code >= len(GRPCCodes) {
		code = 2 // UNKNOWN
	}
	c := d.grpc[code].Load()
	if c == nil {
		c = &grpcCounter{d.m.grpc.With(d.direction, d.label, GRPCCodes[code])}
		d.grpc[code].CompareAndSwap(nil, c)
	}
	c.c.Inc()
}
