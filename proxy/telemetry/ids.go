package telemetry

import (
	"context"
	"encoding/binary"
	"math/rand/v2"

	"go.opentelemetry.io/otel/trace"
)

// idSource draws trace and span IDs as the SDK's default generator does
// (math/rand/v2, never all zeros), for the SDK's spans and Begin's alike.
// A new trace Begin decided to record reaches the SDK with the IDs it
// drew (drawnKey): the SDK's sampler then decides on the same trace ID.
type idSource struct {
	// next is the random source; nil: math/rand/v2's. Tests set a
	// seeded one to draw the same IDs twice.
	next func() uint64
}

type drawnKey struct{}

type drawn struct {
	tid trace.TraceID
	sid trace.SpanID
}

func (g *idSource) u64() uint64 {
	if g.next != nil {
		return g.next()
	}
	return rand.Uint64()
}

func (g *idSource) newIDs() (tid trace.TraceID, sid trace.SpanID) {
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], g.u64())
		binary.NativeEndian.PutUint64(tid[8:], g.u64())
	}
	return tid, g.spanID()
}

func (g *idSource) spanID() (sid trace.SpanID) {
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], g.u64())
	}
	return sid
}

// NewIDs is the SDK's IDGenerator's: a root span's IDs.
func (g *idSource) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if d, ok := ctx.Value(drawnKey{}).(drawn); ok {
		return d.tid, d.sid
	}
	return g.newIDs()
}

// NewSpanID is the SDK's IDGenerator's: a child span's ID.
func (g *idSource) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return g.spanID() }
