package outbound

import (
	"context"
	"errors"
	"net/http"

	"github.com/minimesh/minimesh/internal/replayguard"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
)

// errReplayedOnce ends a try that http.Transport would have sent a third
// time: written on a kept connection that closed without an answer, then
// again on another that did the same.
var errReplayedOnce = errors.New("the upstream closed the connection without answering the request, sent again once already; not sent again")

// boundReplays returns ctx, with cancel (a try's own, which it makes if
// nil), watched by a replayguard.Guard when http.Transport may send req
// again after writing it (stdReplayable); else ctx and cancel as they are.
//
// On a kept HTTP/1 connection that fails before the answer, the transport
// sends a replayable request again, with no bound on the count and each
// time on the next kept connection: an upstream that crashes on the
// request ran it once per kept connection (up to
// --max-idle-conns-per-host + 1 times in one try). The guard lets a try
// that wrote be followed by one more, the keep-alive race (a connection
// closed while idle as it was reused), what curl and browsers allow;
// more are the policy's retries, which count, wait and stop at their
// budget. Tries that wrote nothing (kept connections found closed before
// a byte went) never count, however many in a row: the connections
// count their writes (dialer.pooled).
//
// The guard comes back too (nil: none), for resentFailure once the
// transport is done with the request.
func boundReplays(ctx context.Context, cancel context.CancelCauseFunc, req *http.Request) (context.Context, context.CancelCauseFunc, *replayguard.Guard) {
	if !stdReplayable(req) {
		return ctx, cancel, nil
	}
	g := new(replayguard.Guard)
	ctx, cancel = g.Watch(ctx, cancel, 1, errReplayedOnce)
	return ctx, cancel, g
}

// errClosedUnanswered is the first failure of a request http.Transport
// sent again, which it does not keep: the kept connection it was written
// on closed without an answer.
var errClosedUnanswered = errors.New("the upstream closed a kept connection without answering the request")

// resentError is the failure of a try whose request was written on a
// kept connection that closed without an answer (first), and whose one
// resend could not connect (dial): an upstream that crashed on the
// request, say, its listener gone. The upstream had the request, so the
// try failed as the first connection did (a reset), not as a connect
// failure, which says the request was never sent (docs/policy.md) and
// is retried whatever the method: the request that crashed one
// upstream went to the next endpoints. Under a request safe to repeat,
// an endpoint's refusal of the resend still sends it once to another
// (resentRefused): the try stays a reset, but its endpoint is gone.
type resentError struct{ first, dial error }

func (e *resentError) Error() string {
	return e.first.Error() + "; sent again on a new connection, which could not be made: " + e.dial.Error()
}

// Unwrap is the first failure only: the dial's dialError must not make
// the try a connect failure (classify, errorResponse).
func (e *resentError) Unwrap() error { return e.first }

// resentRefused reports whether err is a resentError whose dial was
// refused (refusedDial): the upstream that closed the kept connection the
// request was written on is gone, its listener closed (forward.go,
// refusedBy).
func resentRefused(err error) bool {
	var re *resentError
	return errors.As(err, &re) && refusedDial(re.dial)
}

// resentFailure is err, a try's failure, as the try's verdict when it
// was the failed dial of a resend of a request written before (on the
// fast transport: first is that write's failure; on http.Transport:
// written says a try wrote, g.Wrote). A dial that ran out of the try's
// or the request's time stays a timeout, and the sidecar's own want of
// resources (localError) its own failure.
func resentFailure(first, err error, written bool) error {
	var de *dialError
	if !written || !errors.As(err, &de) || errors.As(err, new(*localError)) ||
		errors.Is(err, errPerTryTimeout) || errors.Is(err, errTimeout) {
		return err
	}
	if first == nil {
		first = errClosedUnanswered
	}
	return &resentError{first: first, dial: err}
}

// stdReplayable is http.Transport's Request.isReplayable: replayable,
// with no body or one it can get again.
func stdReplayable(req *http.Request) bool {
	return (req.Body == nil || nobody.Is(req.Body) || req.GetBody != nil) && replayable(req)
}
