package outbound

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
)

// errReplayedOnce ends a try that http.Transport would have sent a third
// time: written on a kept connection that closed without an answer, then
// again on another that did the same.
var errReplayedOnce = errors.New("the upstream closed the connection without answering the request, sent again once already; not sent again")

// replayBound keeps http.Transport from sending a request more than
// twice within one try. On a kept HTTP/1 connection that fails before
// the answer, the transport sends a replayable request again (a bodiless
// GET, HEAD, OPTIONS, TRACE, or one with an Idempotency-Key), with no
// bound on the count and each time on the next kept connection: an
// upstream that crashes on the request ran it once per kept connection
// (up to --max-idle-conns-per-host + 1 times in one try). One replay is
// the keep-alive race (a connection closed while idle as it was reused),
// what curl and browsers allow; more are the policy's retries, which
// count, wait and stop at their budget.
//
// Each of the transport's tries gets its connection through GotConn, on
// the request's goroutine, before the try writes anything (the write
// loop takes the request after). At the third, the bound closes the
// connection just handed over, so that the write fails whatever the
// transport does next (cancelling the context alone races the write),
// and cancels the try's context, which ends the transport's loop with
// errReplayedOnce before it takes another connection.
type replayBound struct {
	trace  httptrace.ClientTrace
	cancel context.CancelCauseFunc
	tries  int
}

func (b *replayBound) gotConn(i httptrace.GotConnInfo) {
	b.tries++
	if b.tries > 2 {
		i.Conn.Close()
		b.cancel(errReplayedOnce)
	}
}

// boundReplays returns ctx, with cancel (a try's own, which it makes if
// nil), watched by a replayBound when http.Transport may send req again
// after writing it (stdReplayable); else ctx and cancel as they are.
func boundReplays(ctx context.Context, cancel context.CancelCauseFunc, req *http.Request) (context.Context, context.CancelCauseFunc) {
	if !stdReplayable(req) {
		return ctx, cancel
	}
	if cancel == nil {
		ctx, cancel = context.WithCancelCause(ctx)
	}
	b := &replayBound{cancel: cancel}
	b.trace.GotConn = b.gotConn
	return httptrace.WithClientTrace(ctx, &b.trace), cancel
}

// stdReplayable is http.Transport's Request.isReplayable: replayable,
// with no body or one it can get again.
func stdReplayable(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil) && replayable(req)
}
