package outbound

import (
	"context"
	"errors"
	"net/http"

	"github.com/minimesh/minimesh/internal/replayguard"
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
func boundReplays(ctx context.Context, cancel context.CancelCauseFunc, req *http.Request) (context.Context, context.CancelCauseFunc) {
	if !stdReplayable(req) {
		return ctx, cancel
	}
	return new(replayguard.Guard).Watch(ctx, cancel, 1, errReplayedOnce)
}

// stdReplayable is http.Transport's Request.isReplayable: replayable,
// with no body or one it can get again.
func stdReplayable(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil) && replayable(req)
}
