package inbound

import (
	"context"
	"errors"
	"net/http"

	"github.com/minimesh/minimesh/internal/replayguard"
)

// errNotResent ends a request whose try was written to the app on a
// kept connection that then closed without an answer.
var errNotResent = errors.New("the request was written to the app, which closed the connection without answering; not sent again")

// replayGuard keeps http.Transport from writing a request into the app a
// second time, as Envoy and Linkerd never retry inbound
// (docs/interception.md, "No resilience policy inbound"): a
// replayguard.Guard that lets no try that wrote be followed by another.
// A try that wrote nothing (a kept connection the app closed while idle)
// is followed by one on the next connection, as the transport does. The
// connections to the app count their writes (Handler.dial).
type replayGuard struct{ g replayguard.Guard }

// guard returns ctx with g watching the tries of req, a request
// http.Transport may send again after writing it (resendable); cancel
// must be called when the request is done. Other requests are returned
// as they are: the transport sends them again only when nothing was
// written.
func (g *replayGuard) guard(ctx context.Context, req *http.Request) (context.Context, context.CancelCauseFunc) {
	if !resendable(req) {
		return ctx, nil
	}
	return g.g.Watch(ctx, nil, 0, errNotResent)
}

// wrote reports whether a try of the request wrote it into the app, once
// the transport is done with it. A dial that failed after such a try was
// the transport's resend, which GotConn never saw: the app had the
// request and went away with it (a crash, a pod deleted), a reset, not
// the connect failure that says the app never got it. Zero (no request
// watched) when the transport never resends.
func (g *replayGuard) wrote() bool { return g.g.Wrote() }

// resendable reports whether http.Transport may write the request the
// ReverseProxy makes of req (bodiless when req's Content-Length is 0)
// again after writing it once: its Request.isReplayable.
func resendable(req *http.Request) bool {
	if req.ContentLength != 0 {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}
