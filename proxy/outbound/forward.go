package outbound

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/retry"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// forwarder is the ReverseProxy's Transport: it sends one request as one
// or more tries, each through the destination's breaker, and returns the
// response to hand the client or an error for the ErrorHandler.
type forwarder struct {
	t       http.RoundTripper
	tracing *telemetry.Tracing
}

func (f *forwarder) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateOf(req.Context())
	dst := st.dest
	var r *policy.Retries
	if rr := dst.policy.Spec.Retries; rr != nil && rr.Attempts > 0 {
		r = rr
		dst.budget.Request()
	}
	if r != nil && hasBody(req) {
		rp, err := newReplay(req.Body, req.ContentLength)
		if err != nil {
			// The app's body could not be read: the app's fault, or gone.
			if req.Context().Err() != nil {
				return nil, errClientGone
			}
			return nil, &clientError{err}
		}
		st.replay = rp
	}
	for attempt := 0; ; attempt++ {
		st.attempts = attempt + 1
		resp, class, err := f.try(req, st)
		if err != nil && class == 0 {
			return nil, err // refused, the app's fault or the app gone: nothing to retry
		}
		if r == nil || attempt >= r.Attempts || req.Context().Err() != nil || !f.retryable(req, st, r, resp, class) {
			return resp, err
		}
		if resp != nil {
			// Read a little so the connection can be reused; a large
			// error body is not worth the wait.
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
		}
		dst.metrics.Retry(reason(resp, class))
		if ctx := req.Context(); !sleep(ctx, retry.Backoff(attempt+1, r.Backoff.Base, r.Backoff.Max)) {
			if _, gone := classify(ctx.Err(), ctx, ctx); gone {
				return nil, errClientGone
			}
			return nil, &upstreamError{class: policy.ClassTimeout, err: context.Cause(ctx)}
		}
	}
}

// errClientGone ends a request whose client disconnected.
var errClientGone = context.Canceled

// try sends one try. It returns the response, or the error with the
// class that failOn and retryOn name when the upstream failed before
// answering (class 0: the try was not sent, or the app is to blame).
func (f *forwarder) try(req *http.Request, st *reqState) (*http.Response, policy.Class, error) {
	dst := st.dest
	var done breaker.Done
	if dst.breaker != nil {
		d, err := dst.breaker.Allow()
		if err != nil {
			dst.metrics.Rejected()
			st.rejected = true
			return nil, 0, &circuitOpenError{destination: dst.name, retryAfter: dst.breaker.RetryAfter(time.Now())}
		}
		done = d
	}
	out := req
	if st.replay != nil {
		body, n, ok := st.replay.body()
		if !ok {
			panic("outbound: retrying an unsendable body") // retryable() checks first
		}
		c := *req
		c.Body, c.ContentLength = body, n
		out = &c
	}
	ctx := req.Context()
	var span trace.Span
	if tr := f.tracing; tr != nil {
		// With retries, each try is a span of its own under the request's,
		// and the upstream's server span hangs under the try it served.
		if r := dst.policy.Spec.Retries; r != nil && r.Attempts > 0 {
			ctx, span = tr.Start(ctx, req.Method)
			if span.IsRecording() && st.attempts > 1 {
				span.SetAttributes(attribute.Int("http.request.resend_count", st.attempts-1))
			}
		}
		tr.Inject(ctx, out.Header)
	}
	var timer *time.Timer
	var cancel context.CancelCauseFunc
	if r := dst.policy.Spec.Retries; r != nil && r.PerTryTimeout > 0 && !st.upgrade {
		var tctx context.Context
		tctx, cancel = context.WithCancelCause(ctx)
		timer = time.AfterFunc(r.PerTryTimeout, func() { cancel(errPerTryTimeout) })
		ctx = tctx
		out = out.WithContext(ctx)
	}
	resp, err := f.t.RoundTrip(out)
	if timer != nil && !timer.Stop() && err == nil {
		// The timer fired as the headers arrived: the body is already
		// cancelled, so this try timed out.
		resp.Body.Close()
		resp, err = nil, errPerTryTimeout
	}
	failOn := dst.policy.Spec.CircuitBreaker.FailOn
	if err != nil {
		if cancel != nil {
			cancel(nil)
		}
		if errors.As(err, new(*http.MaxBytesError)) {
			// The app's body was too large: nothing to hold against the
			// upstream, and nothing to retry.
			report(done, breaker.ErrIgnored)
			if span != nil {
				endSpan(span, http.StatusRequestEntityTooLarge, wellknown.ErrorBadRequest, "")
			}
			return nil, 0, &clientError{err}
		}
		class, gone := classify(err, ctx, req.Context())
		if gone {
			report(done, breaker.ErrIgnored)
			if span != nil {
				endSpan(span, statusClientClosed, "", "")
			}
			return nil, 0, errClientGone
		}
		if span != nil {
			endSpan(span, 0, classErrorType(class), "")
		}
		if failOn.Has(class) {
			report(done, breaker.ErrFailed)
		} else {
			report(done, nil)
		}
		return nil, class, &upstreamError{class: class, err: err}
	}
	if cancel != nil {
		// The body is read after this returns; the try's context must
		// live until then, and end with it.
		resp.Body = &cancelBody{resp.Body, cancel}
	}
	if span != nil {
		endSpan(span, resp.StatusCode, "", "")
	}
	if failOn.Status(resp.StatusCode) {
		report(done, breaker.ErrFailed)
	} else {
		report(done, nil)
	}
	return resp, 0, nil
}

func report(done breaker.Done, outcome error) {
	if done != nil {
		done(outcome)
	}
}

// retryable decides whether a failed try is tried again.
func (f *forwarder) retryable(req *http.Request, st *reqState, r *policy.Retries, resp *http.Response, class policy.Class) bool {
	if resp != nil {
		if !r.RetryOn.Status(resp.StatusCode) {
			return false
		}
	} else if !r.RetryOn.Has(class) {
		return false
	}
	// A request that was never sent may go again whatever its method;
	// one that may have reached the upstream only if repeating it is safe.
	if class != policy.ClassConnectFailure && !idempotent(req) {
		return false
	}
	if st.upgrade && class != policy.ClassConnectFailure {
		return false
	}
	if st.replay != nil && !st.replay.replayable() {
		return false
	}
	if st.dest.breaker != nil && st.dest.breaker.State() == breaker.Open {
		return false // hand the client the real answer, not a 503
	}
	return st.dest.budget.Withdraw()
}

func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get(wellknown.HeaderIdempotencyKey) != ""
}

func reason(resp *http.Response, class policy.Class) string {
	if resp != nil {
		return statusText(resp.StatusCode)
	}
	switch class {
	case policy.ClassConnectFailure:
		return "connect-failure"
	case policy.ClassTimeout:
		return "timeout"
	}
	return "reset"
}

// sleep waits d unless ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// cancelBody ends a try's context when its response body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}
