package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/minimesh/minimesh/internal/replayguard"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
	"github.com/minimesh/minimesh/proxy/retry"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/otel/trace"
)

// forwarder is the ReverseProxy's Transport: it sends one request as one
// or more tries, each through the destination's breaker, and returns the
// response to hand the client or an error for the ErrorHandler.
type forwarder struct {
	t http.RoundTripper
	// h2 sends the requests of HTTP/2 clients, as h2c: a gRPC upstream
	// speaks nothing else (docs/grpc.md).
	h2      http.RoundTripper
	tracing *telemetry.Tracing
}

func (f *forwarder) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateOf(req.Context())
	dst := st.dest
	r := dst.begin(st.start)
	switch {
	case st.replay != nil:
		// Read whole already (fastProxy's readBody).
	case r != nil && appPaced(req, st) && hasBody(req):
		// Never buffered ahead of the upstream: a streaming call's next
		// message may wait for the first answer, and so may the next
		// bytes of any HTTP/2 body without a content-length (a Connect
		// or other bidirectional stream; read ahead, it deadlocked with
		// no try made). A call goes again if not a byte of it was sent
		// (a connect failure), or, when retryOn names gRPC codes, if it
		// was one whole message (a unary call), kept as it went
		// (docs/grpc.md, "Retries"); another stream, if it was read to
		// its end within MaxReplayBody by then.
		st.replay = &replay{stream: req.Body, closer: req.Body, length: req.ContentLength}
		if !st.grpc {
			st.replay.rec = &recording{body: req.Body, plain: true}
		} else if r.RetryOn.GRPC != 0 || r.RetryOn.Has(policy.ClassConnectFailure) {
			// Kept as it goes also for connect-failure: an upstream that
			// refuses the stream unprocessed (REFUSED_STREAM, a GOAWAY
			// below it) may have been sent the message already.
			st.replay.rec = &recording{body: req.Body}
		}
	case hasBody(req) && (r != nil || st.arrived && 0 < req.ContentLength && req.ProtoMajor == 1 && !st.grpc && holdable(req)):
		// Kept to be sent again, or, small, of a known length and here
		// already, to go whole with the head on the fast transport
		// (sendable).
		rp, err := newReplay(req.Body, req.ContentLength)
		if err != nil {
			return nil, unreadBody(req.Context(), err)
		}
		st.replay = rp
	}
	retries := 0 // the policy's, sent: not a free try (unsent, elsewhere)
	var resent, moved bool
	for attempt := 0; ; attempt++ {
		st.attempts = attempt + 1
		resp, class, held, err := f.try(req, st)
		if err != nil && class == 0 {
			return nil, err // refused, the app's fault or the app gone: nothing to retry
		}
		free := false // each kind once per request
		switch {
		case err == nil:
		case !resent && unsent(err):
			free, resent = true, true
		case !moved && st.elsewhere(req, err, class):
			free, moved = true, true
		}
		if !free && (r == nil || retries >= r.Attempts) || req.Context().Err() != nil || errors.Is(err, errTimeout) {
			held.report()
			return resp, err
		}
		var wait time.Duration
		if !free {
			wait = retry.Backoff(retries+1, r.Backoff.Base, r.Backoff.Max)
			retries++
		}
		if !f.retryable(req, st, r, resp, class, wait, held, free) {
			held.report()
			return resp, err
		}
		// The breaker's state as the retry's permission was taken: one
		// taken in another state is asked for again after the wait.
		closed := dst.breaker == nil || dst.breaker.Cached() == breaker.Closed
		if resp != nil && dst.breaker == nil {
			discard(resp)
		}
		if ctx := req.Context(); !free && !backoffSleep(ctx, wait, st.deadline) {
			held.ignore() // the request ends as the wait did, not as this try
			if resp != nil {
				// The request ends as the wait did (its timeout, the app
				// gone), not as this body would: the try stays its status.
				replaced(resp)
				resp.Body.Close()
			}
			if ctx.Err() == nil {
				return nil, &upstreamError{class: policy.ClassTimeout, err: errTimeout} // st.deadline
			}
			if _, gone := classify(ctx.Err(), ctx, ctx); gone {
				return nil, errClientGone
			}
			return nil, &upstreamError{class: policy.ClassTimeout, err: context.Cause(ctx)}
		}
		if !st.readmit(closed) {
			// The breaker opened during the wait (other requests'
			// failures), or another probe took the place: the retry is not
			// sent into it, and the app gets this try's answer, as when
			// retryable refuses, a held verdict reported as it. Its body
			// was held, not drained, for this.
			held.report()
			return resp, err
		}
		held.ignore() // the retry is sent, judged instead (heldVerdict)
		if resp != nil && dst.breaker != nil {
			discard(resp)
		}
		if free && st.replay == nil && hasBody(req) {
			// The try's transport closed the ReverseProxy's wrapper of
			// the body, read of none of it (retryable): the next try
			// streams it from the app, once, as the first would have.
			st.replay = &replay{stream: &st.in, length: req.ContentLength}
		}
		dst.metrics.Retry(reason(resp, st, class))
	}
}

// backoffSleep is sleep, the wait before a retry; a test holds a retry in
// its backoff with it (breaker_failures_export_test.go).
var backoffSleep = sleep

// discard ends a try's response that a retry replaces. A little is read so
// that the connection can be reused; a large error body is not worth the
// wait.
func discard(resp *http.Response) {
	replaced(resp)
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

// replaced ends the try of a response that will not reach the app, as
// its status judged it: its span ends with that status, the breaker and
// the endpoint hear that status if settle left it to here, and nothing
// its body does from now on (the drain, a cut) is the request's. Only
// here, once no refusal can hand the response on: until then its body is
// watched, so that an answer the retry did not replace after all records
// a cut as the 502 it is (docs/operations.md, "A response that fails
// after its headers").
func replaced(resp *http.Response) {
	if ub, ok := resp.Body.(*upstreamBody); ok && !ub.ended {
		ub.ended = true
		endTry(ub.done, ub.ep, ub.epTry, ub.verdict)
		ub.done, ub.ep = nil, nil
		ub.endSpan("", false)
	}
}

// readmit asks the breaker again, after the backoff, for a retry whose
// permission retryable took before it: the breaker may have opened
// meanwhile on other requests' failures, and a permission of a state it
// has left counts for nothing (Envoy and Linkerd ask the breaker as the
// retry is sent). A breaker that read closed then and reads closed now
// keeps it, for one atomic read (one that opened and closed again in
// between leaves the retry's outcome uncounted, as before); otherwise
// the permission is given back, freeing a half-open place, and asked
// for again. False: refused, and no permission is held.
func (st *reqState) readmit(closed bool) bool {
	b := st.dest.breaker
	if b == nil || closed && b.Cached() == breaker.Closed {
		return true
	}
	report(st.admitted, breaker.ErrIgnored)
	st.admitted = nil
	done, err := b.Allow()
	if err != nil {
		return false
	}
	st.admitted = done
	return true
}

// unreadBody is the error to answer with when the app's body could not
// be read whole before the first try: the app's fault, or gone.
func unreadBody(ctx context.Context, err error) error {
	if ctx.Err() != nil || SenderGone(err) {
		return errClientGone // (the lean server ends no context on a failed read)
	}
	return &clientError{err}
}

// retried reports whether d's requests may be tried again: their
// bodies are held to be sent again (newReplay).
func (d *destination) retried() bool {
	r := d.policy.Spec.Retries
	return r != nil && r.Attempts > 0
}

// begin counts a request to d, started at start, in its retry budget
// and returns its retries (nil: none), as every request starts: the
// forwarder's, and one the fast fail answers before it.
func (d *destination) begin(start time.Time) *policy.Retries {
	if !d.retried() {
		return nil
	}
	d.budget.Request(start)
	return d.policy.Spec.Retries
}

// reject records a try its destination's open breaker refused.
func (st *reqState) reject() {
	st.dest.metrics.Rejected()
	st.rejected = true
}

// errClientGone ends a request whose client disconnected.
var errClientGone = context.Canceled

// try sends one try. It returns the response, or the error with the
// class that failOn and retryOn name when the upstream failed before
// answering (class 0: the try was not sent, or the app is to blame). For
// a try the upstream refused unprocessed, the breaker's verdict is held
// (heldVerdict): the caller reports or ignores it.
func (f *forwarder) try(req *http.Request, st *reqState) (*http.Response, policy.Class, *heldVerdict, error) {
	dst := st.dest
	var done breaker.Done
	if st.admitted != nil {
		done, st.admitted = st.admitted, nil
	} else if dst.breaker != nil {
		d, err := dst.breaker.Allow()
		if err != nil {
			st.reject()
			return nil, 0, nil, &circuitOpenError{destination: dst.name, retryAfter: dst.breaker.RetryAfter(time.Now())}
		}
		done = d
	}
	// A body held whole goes with the head on the fast transport
	// (sendable), from the replay's bytes: the request goes as it is.
	var body []byte
	if st.replay != nil {
		body = st.replay.whole()
	}
	t := f.t
	if req.ProtoMajor == 2 {
		t = f.h2
	}
	ft, fast := t.(*fastTransport)
	// A lined request's map is the server's, which serve found without
	// Upgrade (fastProxied): no look-up.
	fast = fast && sendable(req, body) && (st.wire.lined || field.Get(req.Header, "Upgrade") == "")
	out := req
	if st.replay != nil && !fast {
		b, n, ok := st.replay.body()
		if !ok {
			panic("outbound: retrying an unsendable body") // retryable() checks first
		}
		c := *req
		c.Body, c.ContentLength = b, n
		// No GetBody: with one, Go's HTTP/2 transport resends a request
		// by itself on errors that do not say the upstream did nothing
		// (an RST_STREAM PROTOCOL_ERROR after reading it whole), unseen by
		// the try loop, its method rule, budget and breaker: a POST went
		// thousands of times a second (docs/grpc.md, "Retries").
		out = &c
	}
	// The upstream always gets the request ID, one the app named as a
	// hop-by-hop field (Connection: X-Request-ID) too, which forwarding
	// drops with the others: in the map, or with the app's lines
	// (writeRequestLines), and in the map if they are unlined.
	if !st.wire.lined {
		out.Header[requestIDKey] = st.idValue()
	}
	ep, epTry := pickEndpoint(req, st)
	ctx := req.Context()
	var span trace.Span // the try's
	if tr := f.tracing; tr != nil {
		p := st.trace
		// With retries, each try of a recorded request is a span of its
		// own under the request's, and the upstream's server span hangs
		// under the try it served. A request not recorded (most, at a
		// sample ratio of 0.01) sends its own span's context: its tries'
		// spans would not be recorded either, and each cost two
		// allocations and a span ID (docs/benchmarks.md, "Tracing at 0.01").
		if r := dst.policy.Spec.Retries; r != nil && r.Attempts > 0 && p.Span != nil {
			ctx, p = tr.Try(ctx, p, req.Method)
			span = p.Span
			if span != nil {
				span.SetAttributes(tryAttrs(req, st, ep)...)
			}
		}
		// The fast transport writes the fields with the head: no
		// header map writes (writeRequestHead).
		st.wire.trace = nil
		ok := false
		if fast {
			st.wire.trace, ok = telemetry.Fields(p, &st.wire.traceRoom)
		}
		if !ok {
			st.wire.unline(out.Header) // Inject writes them into the map
			tr.Inject(ctx, p, out.Header)
		}
	}
	if !fast {
		st.wire.unline(out.Header) // http.Transport writes the map
	}
	if !fast && !st.deadline.IsZero() {
		panic("outbound: a request timeout as a deadline on a try the fast transport does not send") // fastProxy's requests are its
	}
	var timer *tryTimer
	var cancel context.CancelCauseFunc
	dl := deadlines{whole: st.deadline}
	if r := dst.policy.Spec.Retries; r != nil && r.PerTryTimeout > 0 {
		// (An upgrade's too: the timer runs until the response's head,
		// a 101 included, and the switched connection outlives it.)
		if fast {
			// The fast transport ends the try at a deadline on its
			// connection: no context, timer and request copy per try.
			dl.now = mono()
			dl.try = epoch.Add(dl.now + r.PerTryTimeout)
		} else {
			var tctx context.Context
			tctx, cancel = context.WithCancelCause(ctx)
			// It runs from when the try has the whole request: now, or
			// from the end of a body still coming from the app (timeTry).
			timer = &tryTimer{d: r.PerTryTimeout, cancel: cancel}
			st.in.timeTry(timer, hasBody(out) && (st.replay == nil || st.replay.whole() == nil))
			ctx = tctx
			out = out.WithContext(ctx)
		}
	}
	var replays *replayguard.Guard
	if !fast && req.ProtoMajor != 2 {
		// HTTP/2's own resends are of streams the upstream refused
		// unprocessed; HTTP/1's are bounded here (replaybound.go).
		if bctx, bcancel, g := boundReplays(ctx, cancel, out); g != nil {
			ctx, cancel, replays = bctx, bcancel, g
			out = out.WithContext(ctx)
		}
	}
	if st.grpc {
		st.grpcStatus = -1
		st.setTryTimeout(out.Header, req.Context())
	}
	var resp *http.Response
	var err error
	if fast {
		var raw *[]byte
		if st.rawOK {
			raw = &st.raw
		}
		st.wire.body = body
		resp, err = ft.roundTrip(out, dl, raw, &st.wire)
		st.wire.body = nil
	} else {
		resp, err = t.RoundTrip(out)
		if err != nil && replays != nil {
			err = resentFailure(nil, err, replays.Wrote())
		}
	}
	if err == nil && st.in.ReadCloser != nil {
		// --request-body-timeout is for an upload the upstream waits
		// for: once it answers, a quiet app is a stream's business.
		st.in.answered.Store(true)
	}
	if timer != nil && st.in.untimeTry(timer) && err == nil {
		// The timer fired as the headers arrived: the body is already
		// cancelled, so this try timed out.
		resp.Body.Close()
		resp, err = nil, errPerTryTimeout
	}
	if err == nil && resp.StatusCode < 100 {
		// http.ReadResponse reads any three digits, and http.Transport
		// passes a status under 100 on as a final answer; no server sends
		// one, and net/http's WriteHeader panics on it with the try open.
		// A malformed answer: the upstream's failure (reset).
		code := resp.StatusCode
		resp.Body.Close()
		resp, err = nil, fmt.Errorf("malformed HTTP status code %03d from the upstream", code)
	} else if err == nil && resp.StatusCode == http.StatusSwitchingProtocols && (!st.upgrade || !switchedAsAsked(req, resp)) {
		// A switch nobody asked for (RFC 9110 §15.2.2), which the
		// ReverseProxy refuses with a 502: the upstream's failure, as the
		// fast transport takes it, not a success for the breaker.
		resp.Body.Close() // the switched connection: never left open (switchedAsAsked)
		resp, err = nil, errors.New("unexpected 101 Switching Protocols from the upstream to a request that asked for no upgrade, or for another protocol")
	} else if err == nil && resp.ContentLength < 0 && resp.ProtoMajor == 2 {
		// Content-Length fields Go's HTTP/2 transport left unread: one
		// length, or a malformed answer (oneLength), judged here as an
		// HTTP/1 upstream's is in its transport.
		if err = oneLength(resp); err != nil {
			resp.Body.Close()
			resp = nil
		}
	}
	failOn := dst.policy.Spec.CircuitBreaker.FailOn
	if err != nil {
		if cancel != nil {
			cancel(nil)
		}
		unprocessed := !fast && req.ProtoMajor == 2 && h2Unprocessed(err)
		if unprocessed {
			// The upstream refused the stream unprocessed, or Go's
			// transport never sent it: never sent, as a connect failure
			// (docs/grpc.md, "Retries").
			err = &unprocessedError{err: err, unsent: h2Unsent(err)}
		}
		if ep != nil {
			err = endpointSelf(err) // the endpoint's fault, not the app's (dial.go)
		}
		if cerr := refusal(err, st, req.Context()); cerr != nil {
			// The app's body was bad or too large, or the request was
			// aimed at the sidecar itself: nothing to hold against the
			// upstream, and nothing to retry.
			endTry(done, ep, epTry, breaker.ErrIgnored)
			if span != nil {
				code, kind, _ := errorResponse(cerr, dst.name)
				endSpan(span, code, kind, "")
			}
			return nil, 0, nil, cerr
		}
		class, gone := classify(err, ctx, req.Context())
		if gone {
			endTry(done, ep, epTry, breaker.ErrIgnored)
			if span != nil {
				endSpan(span, statusClientClosed, "", "")
			}
			return nil, 0, nil, errClientGone
		}
		if span != nil {
			endSpan(span, 0, classErrorType(class), "")
		}
		outcome := error(nil)
		if st.clientsDeadline(class, -1) {
			outcome = breaker.ErrIgnored // the app's own deadline (docs/grpc.md, "Deadlines")
		} else if failOn.Has(class) {
			outcome = breaker.ErrFailed
		}
		// Refused before the upstream took anything, by one connection or
		// one endpoint of the destination, or the endpoint gone under a
		// request safe to repeat (refusedBy): the breaker's verdict waits
		// for whether another try follows (heldVerdict). A name or
		// ClusterIP that refuses (no endpoints) is the destination down:
		// each try a failure, as before.
		refused, movable := st.refusedBy(req, err, class)
		held := endFailed(done, ep, epTry, outcome, refused, class == policy.ClassConnectFailure && unprocessed || movable)
		return nil, class, held, &upstreamError{class: class, err: err}
	}
	dropTrailerID(resp.Trailer) // announced: the app is not told of one to come
	verdict := error(nil)
	if failOn.Status(countedStatus(resp, st)) || st.grpc && failOn.GRPCStatus(st.grpcStatus) {
		verdict = breaker.ErrFailed
		if st.clientsDeadline(0, st.grpcStatus) {
			verdict = breaker.ErrIgnored // the app's own deadline (docs/grpc.md, "Deadlines")
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.Body == nil || nobody.Is(resp.Body) {
		// Nothing more can fail that a breaker should hear of (an
		// upgraded connection's bytes are the peers' business).
		endTry(done, ep, epTry, verdict)
		if span != nil {
			endSpan(span, resp.StatusCode, "", "")
		}
		if cancel != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			cancel(nil)
		}
		return resp, 0, nil, nil
	}
	// The exchange is over only when the body is: the breaker hears of
	// the try then, so that a body cut short counts as the failure it is.
	// One try's body at a time (the retry loop closes one before the next
	// try): it lives in the request's state, not an allocation of its own.
	// The try's span ends with it too, as the breaker's verdict does.
	// The try's latency is to its answer, now (balancer.Endpoint.Answered):
	// it stays in flight on its endpoint until the body ends.
	if ep != nil {
		ep.Answered(&epTry)
	}
	st.body = upstreamBody{ReadCloser: resp.Body, st: st, done: done, ep: ep, epTry: epTry, verdict: verdict, failOn: failOn, try: ctx, req: req.Context(), cancel: cancel, span: span, code: resp.StatusCode, res: resp}
	if st.grpc && grpcContentType(resp.Header) {
		st.body.grpc = resp // the status comes in its trailers, if any (countedStatus)
	}
	resp.Body = &st.body
	return resp, 0, nil, nil
}

// refusal returns the error to answer with when a try failed through no
// fault of the upstream's: the app's request body could not be read (bad
// framing, over the limit, stalled), or the connection would have reached
// the sidecar itself. Nil otherwise.
func refusal(err error, st *reqState, ctx context.Context) error {
	if context.Cause(ctx) == errBodyTimeout {
		return &clientError{&bodyTimeoutError{}}
	}
	var se *selfError
	if errors.As(err, &se) {
		return se
	}
	if errors.As(err, new(*localError)) {
		return err // the sidecar's own want of descriptors (dial.go)
	}
	if errors.As(err, new(*http.MaxBytesError)) {
		return &clientError{err}
	}
	if peerHeaderLimit(err) {
		return &headerListError{err}
	}
	if berr := st.in.failed(); berr != nil {
		if SenderGone(berr) {
			return errClientGone
		}
		return &clientError{berr}
	}
	return nil
}

// SenderGone reports whether a failed read of a request body is its
// sender going away (its connection closed or reset mid-body, its HTTP/2
// stream reset) rather than bytes the server refused (bad chunked
// framing, a body over the limit): the transport may report it before
// the server cancels the request. The inbound path asks it too.
func SenderGone(err error) bool {
	var ne *net.OpError
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.Canceled) || errors.As(err, &ne) {
		return true
	}
	// net/http's HTTP/2 server, whose error types are its own: a stream
	// the app reset (RST_STREAM CANCEL as it cancels a call), or its
	// connection gone.
	msg := err.Error()
	return strings.HasPrefix(msg, "stream error: ") || msg == "client disconnected"
}

// upstreamBody is a response body on its way to the app. It tells the
// breaker the try's outcome when the body ends, and records a body that
// failed midway (a reset, a timeout) as the request's failure. While the
// app has received nothing yet, such a failure reads as an empty body so
// that the handler can answer with the error instead.
type upstreamBody struct {
	io.ReadCloser
	st       *reqState
	done     breaker.Done
	ep       *balancer.Endpoint // the try's endpoint; nil when the name was dialled, or once told (settle, replaced)
	epTry    balancer.Try       // answered: its latency ends at the headers, not the body's end
	verdict  error              // the status's outcome, reported on a whole body
	failOn   policy.Conditions
	try, req context.Context
	cancel   context.CancelCauseFunc // the try's (per-try timeout, boundReplays); may be nil
	// span is the try's span, recorded (nil: none), which ends with the
	// body (endSpan): a try whose body is cut is a failed try, as the
	// breaker, the metric and the access log have it, not the success
	// its headers said; code is the try's status.
	span trace.Span
	code int
	// grpc is the response of a gRPC call whose status is in the
	// trailers: the verdict is made from them at the body's end.
	grpc *http.Response
	// res is the response, whose trailers the transport fills as the
	// body ends: the upstream's X-Request-ID is dropped from them then
	// (dropTrailerID), before the ReverseProxy or fastProxy passes them on.
	res   *http.Response
	ended bool
	// pfx and left follow grpc's messages, so that a failure can end
	// the call with trailers when it falls between two (endGRPC): the
	// bytes of the current message's 5-byte prefix read (0: at a
	// boundary), and those of its payload still to come.
	pfx  uint8
	left uint32
}

// frame follows the gRPC messages in p, the next bytes of the body.
func (b *upstreamBody) frame(p []byte) {
	for len(p) > 0 {
		if b.pfx < 5 {
			if b.pfx > 0 {
				b.left = b.left<<8 | uint32(p[0]) // the length, big-endian, after the flag
			}
			b.pfx++
			p = p[1:]
			if b.pfx == 5 && b.left == 0 {
				b.pfx = 0
			}
			continue
		}
		n := uint32(min(uint64(b.left), uint64(len(p))))
		b.left -= n
		p = p[n:]
		if b.left == 0 {
			b.pfx = 0
		}
	}
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	b.sendArrived() // what was written of a body still arriving (fastproxy.go)
	n, err := b.ReadCloser.Read(p)
	if b.grpc != nil && n > 0 {
		b.frame(p[:n])
	}
	if err == io.EOF {
		dropTrailerID(b.res.Trailer)
	}
	if err == nil || b.ended {
		return n, err
	}
	if err == io.EOF {
		if b.grpc != nil {
			// What its client reads (docs/grpc.md, "Status mapping"): a
			// message cut short is INTERNAL whatever follows (grpc-go's
			// recvMsg, io.ErrUnexpectedEOF); else the trailers' last
			// grpc-status (grpcStatusIn), also after headers that had one
			// (content-length: 0 is no END_STREAM); else a trailers-only
			// answer's status, and INTERNAL for a stream that ended
			// without trailers.
			g := b.st.grpcStatus
			if b.pfx != 0 {
				g = grpcInternal
			} else if grpcTrailed(b.grpc.Trailer) {
				g = grpcStatusIn(b.grpc.Trailer["Grpc-Status"])
			} else if g < 0 {
				g = grpcInternal
			}
			b.st.grpcStatus = g
			if b.span != nil {
				endGRPCSpan(b.span, g)
			}
			b.verdict = nil
			if b.failOn.Status(grpcEquivalent(g)) || b.failOn.GRPCStatus(g) {
				b.verdict = breaker.ErrFailed
				if b.st.clientsDeadline(0, g) {
					b.verdict = breaker.ErrIgnored
				}
			}
		}
		b.end(b.verdict)
		b.endSpan("", false)
		if in := &b.st.in; in.ReadCloser != nil && !in.ended.Load() {
			// The exchange is over while the app still sends (a stream's
			// client that waits for the status): its body's pending read
			// must end, or the transport waits for it before the
			// trailers can go to the app.
			b.st.out.abandonUpload(in)
		}
		return n, err
	}
	if cerr := refusal(err, b.st, b.req); cerr != nil {
		// The app's own request failed after the upstream's headers (its
		// body over the limit, shorter or longer than its content-length):
		// Go's transport ended the upstream's stream for it, which reads
		// here as a reset. As before the headers (try), it is the app's
		// fault, not the upstream's.
		return b.appFault(n, err, cerr)
	}
	class, gone := classify(err, b.try, b.req)
	if class == policy.ClassReset && b.st.grpc && b.st.atCallDeadline(b.req) {
		class = policy.ClassTimeout
	}
	if gone {
		b.st.gone = true
		b.appGone()
		return n, err
	}
	b.st.lateErr = err // for answerLate's message
	b.fail(class)
	if b.st.out.Withhold() {
		// Nothing reached the app: the handler answers with the failure
		// (answerLate), and no flush of a stream's headers, on the
		// ReverseProxy's timer, can send the upstream's status now.
		return 0, io.EOF
	}
	if b.grpc != nil && b.pfx == 0 {
		// A gRPC call cut between two messages: it ends with trailers
		// that say why, not a reset its client reads as INTERNAL
		// (docs/grpc.md, "The sidecar's own answers").
		b.st.endGRPC(class, err)
		return n, io.EOF
	}
	if b.grpc != nil && class == policy.ClassTimeout {
		b.st.holdCut(b.req) // in the middle of a message: a reset, not before the client's own timer
	}
	return n, err
}

// appFault ends a response whose request failed through the app's fault
// (cerr, refusal's) after the upstream's headers, err being what the
// response's read failed with: the app gets the sidecar's 400, 408, 413
// or 431 `bad-request` when nothing of the answer reached it yet, else
// trailers that say so between two gRPC messages, else the cut; the
// metric, span and log record that, and the breaker and the endpoint
// count the try neither way, unless its status was a failure already
// (appGone's rule).
func (b *upstreamBody) appFault(n int, err, cerr error) (int, error) {
	if cerr == errClientGone {
		b.st.gone = true
		b.appGone()
		return n, err
	}
	b.st.late, b.st.lateErr = classAppFault, cerr
	outcome := breaker.ErrIgnored
	if b.verdict == breaker.ErrFailed {
		outcome = breaker.ErrFailed
	}
	b.end(outcome)
	b.endSpan(wellknown.ErrorBadRequest, false)
	if b.st.out.Withhold() {
		return 0, io.EOF // answerLate answers
	}
	if b.grpc != nil && b.pfx == 0 {
		b.st.endGRPC(classAppFault, cerr)
		return n, io.EOF
	}
	return n, err
}

// fail records a body that failed after its headers (class): the
// request's late failure, the try's span, and its outcome for the
// breaker and the endpoint, as failOn says.
func (b *upstreamBody) fail(class policy.Class) {
	b.st.late = class
	b.endSpan(classErrorType(class), false)
	if b.st.clientsDeadline(class, -1) {
		b.end(breaker.ErrIgnored)
	} else if b.failOn.Has(class) {
		b.end(breaker.ErrFailed)
	} else {
		b.end(b.verdict)
	}
}

func (b *upstreamBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.ended {
		// Abandoned before its end: by the request's timeout, which cut
		// a write to an app that read nothing (cutStalledWrites), or by a
		// client that went away (the retry loop's drain is ended already:
		// replaced).
		if b.st.cutByTimeout(b.req) {
			b.fail(policy.ClassTimeout)
		} else if b.st.out.refused {
			b.fail(policy.ClassReset) // the app's server refused what it carried (refusedWrite)
		} else if b.req.Err() != nil {
			b.appGone()
		} else {
			b.end(b.verdict)
			b.endSpan("", false)
		}
	} else if b.cancel != nil {
		b.cancel(nil) // judged by the retry loop (replaced), which left the context to here
	}
	return err
}

// appGone ends a try whose app went away before its body ended. A status
// that failOn names failed at its headers, as Envoy counts consecutive
// 5xx: the app's leaving does not undo that for the breaker and the
// endpoint (an app that dropped a large 503 body unread kept a failing
// upstream's breaker closed, and its endpoint in). Any other status
// counts neither way. The request is still recorded as the app's leaving,
// 499 (docs/operations.md, "Logs").
func (b *upstreamBody) appGone() {
	outcome := breaker.ErrIgnored
	if b.verdict == breaker.ErrFailed {
		outcome = breaker.ErrFailed
	}
	b.end(outcome)
	b.endSpan("", true)
}

// endSpan ends the try's span, if recorded, as its body ends: kind is
// the error.type of a body that failed ("" for one read whole, or
// abandoned by the retry loop, which judged the status), gone that the
// app went away.
func (b *upstreamBody) endSpan(kind string, gone bool) {
	s := b.span
	if s == nil {
		return
	}
	b.span = nil
	if gone {
		endSpan(s, statusClientClosed, "", "")
		return
	}
	endSpan(s, b.code, kind, "")
}

// settle tells the breaker and the endpoint, for retryable, of a status
// that is a failure before its body ends, so that the try can open the
// breaker against its own retry: they hear of it once, and a cut of the
// body that follows is still the request's failure (fail) but not theirs
// again. Any other status (a 429 in retryOn but not in failOn) opens
// nothing, and they hear of it when the try ends: as its status when the
// retry goes (replaced), or, the retry refused, as its body ends, a cut
// being the failure it is anywhere else. Meanwhile a half-open breaker's
// probe keeps its place, so its retry is refused unless halfOpenRequests
// leaves another, and the app gets the probe's answer, watched.
func (b *upstreamBody) settle() {
	if b.verdict != breaker.ErrFailed {
		return
	}
	endTry(b.done, b.ep, b.epTry, b.verdict)
	b.done, b.ep = nil, nil
}

func (b *upstreamBody) end(outcome error) {
	b.ended = true
	endTry(b.done, b.ep, b.epTry, outcome)
	if b.cancel != nil {
		b.cancel(nil)
	}
}

// pickEndpoint points a try at the endpoint the destination's balancer
// picks for it (pick), and the request's URL at its address. Without
// endpoints the try dials what the app named (through DNS and
// kube-proxy), or the original destination of a redirected connection: a
// redirected request named a Service with endpoints (by its ClusterIP, or
// by Host where no ClusterIP says otherwise: vipTable.authority) is
// balanced over them too (docs/interception.md, "HTTP/1.x"), unless the
// app connected to one of them: then every try goes to that one (pinned).
// The Host header stays the app's either way.
func pickEndpoint(req *http.Request, st *reqState) (*balancer.Endpoint, balancer.Try) {
	prev := st.ep
	ep, t := st.pick()
	switch {
	case ep != nil:
		// The outbound request's URL is the sidecar's own (ReverseProxy
		// cloned the request; fastProxy gave it st.url), and a try's
		// transport is done with it before the next try.
		req.URL.Host = ep.Addr()
	case prev != nil: // the endpoints went away between two tries
		st.point(req.URL)
	}
	return ep, t
}

// pick is the endpoint of the destination's balancer for the request's
// next try, nil without endpoints (or without a balancer), and the try,
// counted in flight there: an HTTP try's (pickEndpoint) or an
// opaque connection's (dialTunnel). A retry goes to an endpoint the
// request has not tried where there is one, as Envoy's previous_hosts
// predicate makes it (balancer.Pick); each try's endpoint joins
// st.tried. The first try avoids nothing and allocates nothing. A
// request pinned to the endpoint the app connected to (st.pin) tries it
// alone, ejected or not; one pinned to an address no endpoint stands for
// (st.pinDial) dials it, as without endpoints.
func (st *reqState) pick() (*balancer.Endpoint, balancer.Try) {
	lb := st.dest.lb
	if lb == nil || st.pinDial {
		return nil, balancer.Try{}
	}
	ep := st.pin
	if ep == nil {
		ep = lb.Pick(st.tried.Endpoints()...)
	}
	st.ep = ep
	if ep == nil {
		return nil, balancer.Try{}
	}
	st.tried.Add(ep)
	if st.pin != nil {
		return ep, ep.StartPinned()
	}
	return ep, ep.Start()
}

// A Tried remembers an endpoint for each retry the policy allows and the
// two free tries (unsent, elsewhere): a compile error if
// policy.MaxAttempts outgrows it.
var _ [balancer.MaxTried - policy.MaxAttempts - 2]struct{}

// unsent reports whether err is an HTTP/2 try that no connection took
// (h2Unsent): Go's transport placed it on a connection that closed, or
// had a GOAWAY (a server stopping gracefully), before the request's
// stream was made, and held no other. It goes once more, free, whatever
// the policy, to whichever endpoint the balancer picks (another if there
// is one; the same one's new connection else), as Envoy keeps a request
// not yet on a stream pending for the next connection. Before
// 2026-12-07 it failed UNAVAILABLE connect-failure unless retryOn named
// connect-failure: 7 to 15 calls in every run of
// TestGRPCGracefulStopRefused (16 clients across a server's graceful
// stops).
func unsent(err error) bool {
	var u *unprocessedError
	return errors.As(err, &u) && u.unsent
}

// elsewhere reports whether a try that failed with err (class) goes
// once more to another endpoint, whatever the policy says: its endpoint
// refused it (refusedBy), and another endpoint the request has not tried
// is eligible. A pod that closes its listener before the control plane
// drops it (a rolling update's, for a few hundred milliseconds) refused
// every try picked for it, each a 502 connect-failure to the app under
// the default policy (before 2026-12-07); Linkerd's balancer sends only
// to endpoints it holds a connection to, and never fails a call so. The
// request's time and the breaker still decide (retryable). Not a pinned
// request's (its one endpoint), and not without endpoints (a name or a
// ClusterIP: kube-proxy's pick), nor on a dial timeout. Pick runs only on
// such a refusal, off the hot path. req is nil for an opaque connection
// (dialTunnel), which nothing resends.
func (st *reqState) elsewhere(req *http.Request, err error, class policy.Class) bool {
	if _, movable := st.refusedBy(req, err, class); !movable || st.pin != nil {
		return false
	}
	tried := st.tried.Endpoints()
	next := st.dest.lb.Pick(tried...)
	return next != nil && !slices.Contains(tried, next)
}

// refusedBy reports whether the endpoint the balancer picked for the try
// that failed with err (class) refused a dial of it (refused: the
// endpoint's failure whatever failOn says, endEndpoint), and whether the
// try may go once to another endpoint for it (movable, elsewhere): a
// refused first dial (refusedDial), whatever the method, since nothing
// was sent; or, for a request safe to repeat (idempotent), the refused
// dial of the resend of one written on a kept connection that the
// endpoint closed unanswered (resentRefused): a pod stopping as the
// request reached it, which its listener's refusal says is gone. That
// one was a 502 reset for the app under the default policy (0 to 5 per
// pod stopped in a rolling update on the fast transport, before
// 2026-12-07). A request not safe to repeat stays that reset: the pod
// may have run it (an upstream that crashed on it, say), and another must
// not run it again unasked.
func (st *reqState) refusedBy(req *http.Request, err error, class policy.Class) (refused, movable bool) {
	if st.ep == nil {
		return false, false
	}
	switch class {
	case policy.ClassConnectFailure:
		refused = refusedDial(err)
		return refused, refused
	case policy.ClassReset:
		refused = resentRefused(err)
		return refused, refused && req != nil && idempotent(req)
	}
	return false, false
}

// endTry tells the try's endpoint and the breaker how the try went.
func endTry(done breaker.Done, ep *balancer.Endpoint, t balancer.Try, outcome error) {
	report(done, endEndpoint(ep, t, outcome, false))
}

// endFailed ends a try that failed before an answer, outcome being
// failOn's verdict and refused that its endpoint refused a dial of it
// (refusedBy): the endpoint hears at once (endEndpoint), and the breaker
// too unless hold, when the try was refused before the upstream took
// anything or its endpoint is gone under a request safe to repeat: then
// the verdict comes back held for the caller, who knows whether another
// try follows (heldVerdict). An HTTP try's (try) and an opaque
// connection's (dialTunnel).
func endFailed(done breaker.Done, ep *balancer.Endpoint, t balancer.Try, outcome error, refused, hold bool) *heldVerdict {
	outcome = endEndpoint(ep, t, outcome, refused)
	if hold {
		return &heldVerdict{done: done, outcome: outcome}
	}
	report(done, outcome)
	return nil
}

// endEndpoint tells the try's endpoint how the try went and returns the
// outcome for the destination's breaker, which failOn decides (outcome):
// a failure that is the endpoint's own (balancer.Endpoint.Done) is
// breaker.ErrOneEndpoint. The endpoint's can differ: a dial it refused
// (refused) is its failure whatever failOn says. With connect-failure
// left out of failOn, a pod that refused every connection was a success
// each time, in 0.05 ms, never ejected and the fastest of its peers, and
// since its calls go elsewhere (reqState.elsewhere) nobody saw it: it
// drew about half the picks, each dialled twice (docs/policy.md,
// "Retries").
func endEndpoint(ep *balancer.Endpoint, t balancer.Try, outcome error, refused bool) error {
	switch {
	case ep == nil:
	case outcome == breaker.ErrIgnored:
		// Neither way for the endpoint either, as for the breaker: a
		// client gone is no success that ends the endpoint's run of
		// failures (docs/policy.md, "Per-endpoint ejection").
		ep.Abandon(t)
	default:
		if _, own := ep.Done(t, refused || outcome == breaker.ErrFailed); own && outcome == breaker.ErrFailed {
			return breaker.ErrOneEndpoint
		}
	}
	return outcome
}

func report(done breaker.Done, outcome error) {
	if done != nil {
		done(outcome)
	}
}

// retryable decides whether a failed try is tried again after waiting
// wait (its backoff). When it is, the failed try has ended (its outcome
// reported, but for a held one, of a try refused unprocessed or by its
// endpoint, which has only yielded a half-open probe's place) and the
// next one's breaker permission is held in st.admitted, and the retry
// budget is drawn. Either way a held verdict is the caller's to report
// or ignore: ignored once the retry is sent, reported if it is not (here,
// or when readmit refuses it). free: the try's endpoint refused it
// and it goes to another endpoint whatever r says (elsewhere), with no
// wait and nothing drawn from the budget.
func (f *forwarder) retryable(req *http.Request, st *reqState, r *policy.Retries, resp *http.Response, class policy.Class, wait time.Duration, held *heldVerdict, free bool) bool {
	// A request that was never sent (a connect failure, an HTTP/2 stream
	// the upstream refused unprocessed: classify) may go again whatever
	// its method; one that may have reached the upstream only if
	// repeating it is safe.
	safe := class == policy.ClassConnectFailure
	switch {
	case free:
	case resp != nil:
		code := countedStatus(resp, st)
		if st.grpc && r.RetryOn.GRPCStatus(st.grpcStatus) {
			// Naming a gRPC code in retryOn declares the calls that fail
			// with it safe to repeat, as Envoy's and Linkerd's gRPC retry
			// conditions do; the replay still sends only a whole unary
			// call again.
			safe = true
		} else if !r.RetryOn.Status(code) {
			return false
		}
	case !r.RetryOn.Has(class):
		return false
	}
	if !safe && !idempotent(req) {
		return false
	}
	if st.upgrade && class != policy.ClassConnectFailure {
		return false
	}
	if st.replay != nil && !st.replay.replayable() {
		return false
	}
	if st.replay == nil && hasBody(req) && !st.in.unread() {
		// Neither held nor kept as it goes (no retries: begin): it goes
		// again only if no read of it began.
		return false
	}
	if dl, ok := requestDeadline(req.Context(), st); ok && !time.Now().Add(wait).Before(dl) {
		// The request's time is up, or will be before the backoff ends
		// ("timeout has time left"): the app gets this try's answer now,
		// not a 504 once the wait has run into the timeout, and no retry
		// is counted or drawn from the budget that could not be sent.
		return false
	}
	if st.grpc {
		if dl, ok := st.grpcDeadline(req.Context()); ok && time.Until(dl)-wait < grpcDeadlineSlack {
			// A gRPC try with less than the slack left would end as the
			// deadline's, whoever ends it (docs/grpc.md, "Deadlines"): the
			// client's deadline (callDeadline, not the sidecar's timer
			// grpcDeadlineSlack after it), or the policy's timeout.
			return false
		}
	}
	// This try is over, judged by its status: a failing one's breaker
	// and endpoint hear so now (settle), and the drain of its body that
	// follows fails nothing of the request's. Then the next try's
	// permission is taken: a retry must not walk into the breaker this
	// try opened, nor find a half-open breaker's probes taken, after the
	// upstream's real answer was drained; the app gets that answer
	// instead of a 503.
	if resp != nil {
		if ub, ok := resp.Body.(*upstreamBody); ok && !ub.ended {
			// Its per-try context ends with the body (Close): the app may
			// yet get this answer if the retry is refused, its body still
			// watched (replaced marks it judged once the retry goes).
			ub.settle()
		}
	}
	// A free try is not drawn from the budget, which bounds the load
	// retries add to an upstream already failing: a refused dial reached
	// no app (a refused resend's, none that is still there), nor did a
	// request no connection took, and a request makes at most one try
	// more of each kind (unsent, elsewhere).
	b := st.dest.breaker
	if b == nil {
		return free || st.dest.budget.Withdraw()
	}
	// A refused try may be a half-open breaker's probe holding the place
	// its retry needs (halfOpenRequests: 1). A refusal tells nothing of
	// whether the upstream is well again: the place is the retry's, whose
	// outcome is the probe's, and the try counts neither way once the
	// retry is sent. Not retried (here, the place taken by another
	// request's probe first, or in readmit), the refusal is the answer and
	// counts as the failure it is answered as: before 2026-12-07 the place
	// was freed by letting the verdict go, and such a failure was heard by
	// no breaker (TestRefusedProbeRetryRefusedCounts).
	done, err := held.allow(b)
	if err != nil {
		return false
	}
	if !free && !st.dest.budget.Withdraw() {
		done(breaker.ErrIgnored)
		return false
	}
	st.admitted = done
	return true
}

// requestDeadline is when the request's time is up: the fast path's
// deadline, else its context's (the policy's timeout, a gRPC client's).
func requestDeadline(ctx context.Context, st *reqState) (time.Time, bool) {
	if !st.deadline.IsZero() {
		return st.deadline, true
	}
	return ctx.Deadline()
}

func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get(wellknown.HeaderIdempotencyKey) != ""
}

func reason(resp *http.Response, st *reqState, class policy.Class) string {
	if resp != nil {
		if st.grpc && st.grpcStatus > 0 && st.grpcStatus < len(policy.GRPCCodeNames) {
			return policy.GRPCCodeNames[st.grpcStatus]
		}
		return statusText(countedStatus(resp, st))
	}
	switch class {
	case policy.ClassConnectFailure:
		return "connect-failure"
	case policy.ClassTimeout:
		return "timeout"
	}
	return "reset"
}

// countedStatus is the HTTP status a response counts as for failOn and
// retryOn: its own, or for a gRPC call the HTTP equivalent of the gRPC
// status its client reads (grpc-go's operateHeaders), which it records:
// an answer whose content-type is not gRPC is read from its HTTP status
// (a 200's as UNKNOWN, the others' left to grpcFromHTTP); a gRPC one's
// HTTP status is not read, and its status is the last grpc-status of a
// trailers-only answer (ContentLength 0: Go's transport saw END_STREAM
// on the headers, as a server that fails at once answers), or of the
// trailers to come (upstreamBody), never of headers that a body follows.
func countedStatus(resp *http.Response, st *reqState) int {
	if !st.grpc {
		return resp.StatusCode
	}
	if st.grpcStatus < 0 {
		switch {
		case !grpcContentType(resp.Header):
			if resp.StatusCode != http.StatusOK {
				return resp.StatusCode
			}
			st.grpcStatus = grpcUnknown
		case resp.ContentLength == 0:
			st.grpcStatus = grpcStatusIn(resp.Header["Grpc-Status"])
		default:
			return http.StatusOK // judged at the body's end
		}
	}
	return grpcEquivalent(st.grpcStatus)
}

// sleep waits d unless ctx ends or the deadline (zero: none) comes first.
func sleep(ctx context.Context, d time.Duration, deadline time.Time) bool {
	ok := true
	if !deadline.IsZero() {
		if left := time.Until(deadline); left < d {
			d, ok = max(left, 0), false
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return ok
	case <-ctx.Done():
		return false
	}
}
