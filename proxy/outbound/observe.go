package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/heldstatus"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// countingBody is the app's request body on its way upstream. It counts
// the bytes sent and keeps the error of a read that failed, so that a body
// the app got wrong (bad chunked framing, too large, stalled) is the app's
// failure and never the upstream's.
//
// The upstream transport reads it from its own goroutine and may go on
// after the upstream has answered: the counter and the error are atomic.
type countingBody struct {
	io.ReadCloser
	n     atomic.Int64
	err   atomic.Pointer[error]
	ended atomic.Bool // read to its end, or failed
	// answered: the upstream's response headers arrived, and the app's
	// silence is the exchange's business (a bidirectional stream), not
	// a stalled upload's.
	answered atomic.Bool
	// woken: the request's time ran out and wake ended the read that
	// held the exchange up (the sidecar's doing, not the app's failure).
	woken atomic.Bool
	// perTry is the per-try timeout of the try that streams the body,
	// waiting for the read that finds the body's end to start it
	// (timeTry).
	perTry atomic.Pointer[tryTimer]
	// waiting is when the read under way began, as the time since base
	// plus 1 (0: no read under way), for the idle watch (which sets base
	// before the first read; zero: no watch).
	waiting atomic.Int64
	base    time.Time
	// activity, for an app-paced stream, notes its bytes (streamIdle).
	activity *streamActivity

	// closed: the transport closed the body (Close).
	closed atomic.Bool
	// begun: a read of the body began (Read): it is no longer whole for
	// another try.
	begun atomic.Bool

	mu        sync.Mutex // held through each read, so abandon can wait one out
	abandoned bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	if !b.begun.Load() { // a store once, not a locked exchange per read
		b.begun.Store(true)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.abandoned {
		return 0, errBodyAbandoned
	}
	watched := !b.base.IsZero()
	if watched {
		b.waiting.Store(int64(time.Since(b.base)) + 1)
	}
	n, err := b.ReadCloser.Read(p)
	if watched {
		b.waiting.Store(0)
	}
	b.n.Add(int64(n))
	if n > 0 && b.activity != nil {
		b.activity.mark()
	}
	if err != nil && err != io.EOF && (b.woken.Load() || b.closed.Load()) {
		// Ended by wake, or closed by the transport (Close): neither the
		// body's end nor the app's fault (refusal would blame the app for
		// the request's timeout); what is left of it is abandon's.
		return n, errBodyAbandoned
	}
	if err != nil {
		b.ended.Store(true)
		if err != io.EOF {
			b.err.CompareAndSwap(nil, &err)
		} else if p := b.perTry.Swap(nil); p != nil {
			p.start() // the try has the whole request now
		}
	}
	return n, err
}

// timeTry starts p, the per-try timeout of a try that http.Transport
// sends, now, or, when the try's body is this one still coming from the
// app (streamed), at the read that finds its end. Either way it runs
// from when the try has the whole request to send, as Envoy's
// per_try_timeout starts only once the downstream request is complete
// (docs/policy.md, perTryTimeout): the app's pace, a pause, a stall, is
// the app's, bounded by the request's timeout and
// --request-body-timeout. A try cut at its per-try timeout while the
// app still sends would blame the upstream for the app's pause, and
// could not even answer then: http.Transport answers a cancelled try
// only once its body writer, blocked reading the app, is done.
func (b *countingBody) timeTry(p *tryTimer, streamed bool) {
	if streamed && b.ReadCloser != nil {
		b.perTry.Store(p)
		// Unless the end was read already: then whichever of this and
		// Read takes p back starts it.
		if !b.ended.Load() || !b.perTry.CompareAndSwap(p, nil) {
			return
		}
	}
	p.start()
}

// untimeTry ends p, a try's per-try timeout, as the try's response
// headers arrive or the try fails, and reports whether it had fired.
func (b *countingBody) untimeTry(p *tryTimer) bool {
	b.perTry.CompareAndSwap(p, nil) // a body's end read later starts nothing
	return p.stop()
}

// tryTimer is the per-try timeout of a try that http.Transport sends,
// which may start after the try (countingBody.timeTry). The fast
// transport's tries have a deadline instead (deadlines), their bodies
// being held whole before they start.
type tryTimer struct {
	d      time.Duration
	cancel context.CancelCauseFunc // the try's context's

	mu    sync.Mutex // so that stop knows whether it fired, even as it fires
	t     *time.Timer
	state uint8
}

// A tryTimer's states.
const (
	tryWaiting uint8 = iota // for the app's body's end
	tryRunning
	tryFired
	tryOver // stopped: the try's headers came, or it failed
)

func (p *tryTimer) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == tryWaiting {
		p.state = tryRunning
		p.t = time.AfterFunc(p.d, p.fire)
	}
}

func (p *tryTimer) fire() {
	p.mu.Lock()
	fired := p.state == tryRunning
	if fired {
		p.state = tryFired
	}
	p.mu.Unlock()
	if fired {
		p.cancel(errPerTryTimeout)
	}
}

// stop ends the timer and reports whether it had fired.
func (p *tryTimer) stop() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.t != nil {
		p.t.Stop()
	}
	fired := p.state == tryFired
	p.state = tryOver
	return fired
}

// errBodyAbandoned is what the upstream transport reads from a request
// body after the exchange is over.
var errBodyAbandoned = errors.New("request body abandoned: the response is over")

// abandon ends every read of a body that the upstream transport has not
// finished, before the handler returns. The transport reads it on a
// goroutine of its own and would go on after an early answer (a 413, a
// response that did not wait for the upload), reading the app's
// connection under net/http's server while the server reads the next
// request from it. A read in progress is woken through the connection's
// read deadline (the server does not use it until the body's end, and the
// connection closes after this answer), then waited for.
func (b *countingBody) abandon(w http.ResponseWriter) {
	if b.ended.Load() {
		return
	}
	CutUpload(w)
	b.mu.Lock()
	b.abandoned = true
	b.mu.Unlock()
}

// CutUpload ends, for the handler of w (a server's own ResponseWriter),
// a request body the exchange is over before: what is left of it cannot
// be told from the next request, so the connection must not be used
// again. A MaxBytesReader over its limit is how a handler gets net/http's
// server to close after the answer ("Connection: close" in its head if
// not yet written), lingering so that the peer still reads it; and a read
// of the body under way, which may wait for a peer that paused, is woken
// through the connection's read deadline (the server does not use it
// until the body's end, and the connection closes after this answer).
// The inbound path cuts its callers' uploads so too.
func CutUpload(w http.ResponseWriter) {
	_, _ = http.MaxBytesReader(w, io.NopCloser(strings.NewReader("x")), 0).Read(make([]byte, 1))
	if d, ok := w.(interface{ SetReadDeadline(time.Time) error }); ok {
		_ = d.SetReadDeadline(time.Unix(1, 0))
	}
}

// wake ends a read of the body that holds the exchange up after the
// request's timeout: http.Transport answers a cancelled request only
// once its goroutine that writes the body is done, and that one may be
// blocked reading a stalled app for as long as the app likes. The read
// is woken through the connection's read deadline (as abandon's), and
// fails without blaming the app; the connection closes after the
// answer (serveError), since the rest of the body is unread. It may run
// on any goroutine: it touches the server's connection, not its
// response.
func (b *countingBody) wake(w http.ResponseWriter) {
	if b.ended.Load() {
		return
	}
	b.woken.Store(true)
	if d, ok := w.(interface{ SetReadDeadline(time.Time) error }); ok {
		_ = d.SetReadDeadline(time.Unix(1, 0))
	}
}

// gone reports whether a read of the app's body failed because the app
// went away.
func (b *countingBody) gone() bool {
	err := b.failed()
	return err != nil && SenderGone(err)
}

// Close marks the body closed before it closes it: a read failing after
// is the transport's own doing, not the app's fault. Go's HTTP/2
// transport closes a cancelled request's body on a goroutine of its own
// while its writer may still read it (which then fails with "body closed
// by handler": an app that reset its stream, recorded as its bad body,
// 400, not its leaving).
func (b *countingBody) Close() error {
	b.closed.Store(true)
	return b.ReadCloser.Close()
}

// unread reports whether no read of the body has begun, through any
// wrapper of it: all of it is still the app's to send, to any try (a
// refused dial's next: forward.go, elsewhere).
func (b *countingBody) unread() bool { return !b.begun.Load() }

// failed returns the error of a read of the app's body that failed, or nil.
func (b *countingBody) failed() error {
	if e := b.err.Load(); e != nil {
		return *e
	}
	return nil
}

// watch calls expire when a read of the body has waited idle for the
// app: an app that stops sending its body must not hold an upstream
// connection for ever. Only a read under way counts, as on the inbound
// path: time the upstream takes before it reads (flow control, a busy
// server, an answer to a body-less HTTP/2 request it never reads) is not
// the app's silence. It is a timer, not a read deadline on the app's
// connection, because net/http's server uses that deadline itself once
// the body is read. expire comes idle after the start of the read that
// waits, the timer's own lateness aside, never later (docs/operations.md,
// "Limits and failure behaviour"). The returned func stops the watch.
func (b *countingBody) watch(idle time.Duration, expire func()) (stop func() bool) {
	b.base = time.Now() // before the transport's first read
	return startIdleWatch(idle, b, expire)
}

// quiet is how long the read under way has waited for the app (0: none
// waits), and done once the body ended or the upstream answered.
func (b *countingBody) quiet() (time.Duration, bool) {
	if b.ended.Load() || b.answered.Load() {
		return 0, true
	}
	s := b.waiting.Load()
	if s == 0 {
		return 0, false
	}
	return time.Since(b.base) - time.Duration(s-1), false
}

// idleWatch calls expire once quiet reports idle or more: one timer,
// re-armed when it fires for what is left, so that the bytes that move
// cost a clock read at most, never a timer reset.
type idleWatch struct {
	idle   time.Duration
	q      quieter
	expire func()
	// mu is held through expire: once stop has returned, expire is
	// neither running nor to run. expire touches the server's stream,
	// which an HTTP/2 server reuses once its handler has returned.
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

// quieter reports how long what an idleWatch watches has been quiet, and
// done when there is nothing more to watch. An interface, not a func: a
// method value would be an allocation more per request.
type quieter interface {
	quiet() (d time.Duration, done bool)
}

func startIdleWatch(idle time.Duration, q quieter, expire func()) (stop func() bool) {
	w := &idleWatch{idle: idle, q: q, expire: expire}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t = time.AfterFunc(idle, w.fire)
	return w.stop
}

func (w *idleWatch) stop() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	return w.t.Stop()
}

func (w *idleWatch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	d, done := w.q.quiet()
	if done {
		return
	}
	if left := w.idle - d; left > 0 {
		w.t.Reset(left)
		return
	}
	w.expire()
}

// streamActivity is when an app-paced stream (appPaced) last moved a
// byte either way: its request body read from the app, its response
// body written to it. Both sides mark it with one clock read; the
// stream's idle watch reads it only when its timer fires.
type streamActivity struct {
	base time.Time
	last atomic.Int64 // since base
}

func (a *streamActivity) mark() { a.last.Store(int64(time.Since(a.base))) }

func (a *streamActivity) quiet() (time.Duration, bool) {
	return time.Since(a.base) - time.Duration(a.last.Load()), false
}

// errBodyTimeout ends a request whose app stopped sending its body.
var errBodyTimeout = errors.New("request body timeout")

// bodyTimeoutError is an app that stopped sending its request body.
type bodyTimeoutError struct{}

func (*bodyTimeoutError) Error() string {
	return "the app sent no request body bytes within --request-body-timeout"
}

// countingWriter counts the response body bytes the app was sent, over
// a heldstatus.Writer: the response's status is held back until the first
// byte of its body, so that an upstream that sends headers and then fails
// has not yet reached the app, which then gets the sidecar's 502 or 504
// instead of a 200 with nothing after it. The body's reader withholds the
// status on such a failure (upstreamBody.Read), the handler answering
// instead (answerLate). Unwrap lets ReverseProxy reach the server's
// Hijacker through it.
type countingWriter struct {
	heldstatus.Writer
	n int64
	// activity, for an app-paced stream, notes its bytes (streamIdle).
	activity *streamActivity
	// broken is a write to the app that failed: the app went away, or
	// its connection broke, before its response ended.
	broken bool
	// refused is a write the app's server refused for what the
	// upstream's response said (refusedWrite): the response was cut
	// there, the upstream's failure, not the app's leaving
	// (upstreamBody.Close records it).
	refused bool
	// mu serializes the two ways the server's ResponseWriter is reached
	// from another goroutine than the one writing the body: the
	// ReverseProxy's flush timer (FlushError) and the end of an upload
	// the upstream did not wait for (abandonUpload), which both change
	// net/http's response (its header map, whether it wrote its header).
	mu sync.Mutex
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.Writer.Write(p)
	w.n += int64(n)
	if n > 0 && w.activity != nil {
		w.activity.mark()
	}
	if err != nil && ReaderGone(err) {
		w.broken = true
	} else if err != nil && refusedWrite(err) {
		w.refused = true
	}
	return n, err
}

// ReaderGone tells a failed write of a response from one the server
// refused for what was written (a body a HEAD, 204 or 304 may not have,
// past its Content-Length: refusedWrite; on a hijacked connection): only
// the first is its reader gone (the app here, the caller on the inbound
// path), or its connection broken.
func ReaderGone(err error) bool {
	return !refusedWrite(err) && !errors.Is(err, http.ErrHijacked) && !errors.Is(err, heldstatus.ErrWithheld)
}

// refusedWrite reports whether a failed write of a response's body is
// one its server refused for what the response's head said: a body the
// status may not have (http.ErrBodyNotAllowed), bytes past its
// Content-Length (http.ErrContentLength; net/http's HTTP/2 server says so
// only in text, h2WroteMore). The ReverseProxy aborts the response
// there: the app reads a reset, a failure of the upstream's answer. No
// upstream's answer is known to reach it: a body past its length is
// cut first by the transports (oneLength for an HTTP/2 upstream's
// repeated field), and a 204's, 304's or HEAD's is dropped (dropBody). It
// stays as a guard; TestRefusedWriteRealServers pins the servers' errors.
func refusedWrite(err error) bool {
	return errors.Is(err, http.ErrBodyNotAllowed) || errors.Is(err, http.ErrContentLength) || err.Error() == h2WroteMore
}

// h2WroteMore is net/http's HTTP/2 server's refusal of a body past the
// Content-Length its headers sent (h2_bundle.go, Go 1.26).
const h2WroteMore = "http2: handler wrote more than declared Content-Length"

// lateAnswer is the sidecar's answer to a request whose upstream's
// response failed after its headers but before any of its body reached
// the app (answerLate): the status and kind it was (lateFailure), and a
// message that says so, with the cause of a reset. errorResponse's
// "failed before a response" would say the upstream never answered.
func lateAnswer(st *reqState) (int, string, errorBody) {
	if st.late == classAppFault {
		return errorResponse(st.lateErr, st.dest.name) // the app's own fault, as before the headers
	}
	code, kind := lateFailure(st.late, st.lateErr)
	msg := "upstream " + st.dest.name + "'s response failed after its headers, before any of its body reached the app"
	if st.late == policy.ClassTimeout {
		msg = "upstream " + st.dest.name + "'s response timed out after its headers, before any of its body reached the app"
	} else if st.lateErr != nil {
		msg += ": " + st.lateErr.Error()
	}
	return code, kind, errorBody{Destination: st.dest.name, Message: msg}
}

// dropBody takes the body off a response that may carry none: a 204 or
// 304, or the answer to a HEAD (RFC 9110 §6.4.1). A 1xx is never a final
// answer here but a 101, whose body is its switched connection. Go's
// HTTP/1 transport and the fast one never read such a body (the bytes
// after the head are not this response's); Go's HTTP/2 transport hands
// DATA after a 204 or 304 on as a body, and reads a 304's content-length
// with no DATA as a body cut short. Passed on, the first byte was
// refused by the app's server (ErrBodyNotAllowed), the ReverseProxy
// aborted, and the app read a reset where the status's success was
// recorded; a 304 with a content-length was the sidecar's 502. Closed
// here, the body ends the try with its status's verdict (and its stream,
// if still open, with RST_STREAM CANCEL). A 204's or 304's
// Content-Length goes too, as Go's HTTP/1 server drops it for an HTTP/1
// app: its HTTP/2 server would pass it on, and a Go client reads a 204 or
// 304 saying content-length: 5 with no DATA as a body cut short (RFC 9110
// §8.6 forbids it on a 204). A HEAD's stays: it is the length of what a
// GET would get. Every other answer costs a comparison or two.
func dropBody(resp *http.Response) {
	if resp.Body == nil || nobody.Is(resp.Body) {
		return
	}
	switch {
	case resp.StatusCode == http.StatusNoContent, resp.StatusCode == http.StatusNotModified:
		delete(resp.Header, "Content-Length")
	case resp.Request.Method == http.MethodHead:
	default:
		return
	}
	resp.Body.Close()
	resp.Body, resp.Trailer = http.NoBody, nil
}

// oneLength holds an HTTP/2 upstream's response whose Content-Length Go's
// HTTP/2 transport did not read (ContentLength -1 with the field there:
// it came more than once, as a list, or not as a number) to one length,
// as Go's HTTP/1 transport does for an HTTP/1 upstream (RFC 9110 §8.6,
// RFC 9113 §8.1.1). Fields that disagree, or a value that is no length,
// make the response malformed: the error returned, which the try loop
// takes as a reset, the sidecar's 502 and a failure everywhere
// (docs/operations.md). Fields that agree count as one: a single field,
// resp.ContentLength set, and a body held to that length (heldLength),
// whose excess or shortfall fails as a single field's does in Go's
// transport, before the app has any of it (the sidecar's 502) or as a
// cut after. Before, such a body passed unchecked, a success: its excess
// was refused by the app's server mid-answer (refusedWrite), its
// shortfall went unseen. Called only on such an answer: most carry one
// field, which the transport read.
func oneLength(resp *http.Response) error {
	vals := resp.Header["Content-Length"]
	if len(vals) == 0 {
		return nil // a stream of unknown length
	}
	n, ok := agreedLength(vals)
	if !ok {
		return fmt.Errorf("malformed response from the upstream: Content-Length %q: fields that disagree, or not a length (RFC 9110 §8.6)", vals)
	}
	resp.Header["Content-Length"] = []string{strconv.FormatInt(n, 10)}
	resp.ContentLength = n
	if resp.Request.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		return nil // no body to hold: dropBody's
	}
	resp.Body = &heldLength{ReadCloser: resp.Body, left: n}
	return nil
}

// agreedLength is the one length that vals, the values of a response's
// Content-Length fields, each maybe a comma-separated list, all say; ok
// is false when one is no 1*DIGIT (empty, signed, over 63 bits) or two
// differ.
func agreedLength(vals []string) (n int64, ok bool) {
	n = -1
	for _, v := range vals {
		for e := range strings.SplitSeq(v, ",") {
			e = strings.Trim(e, " \t")
			if e == "" || len(e) > 18 { // 18 digits always fit in 63 bits
				return 0, false
			}
			var m int64
			for i := 0; i < len(e); i++ {
				if e[i] < '0' || e[i] > '9' {
					return 0, false
				}
				m = m*10 + int64(e[i]-'0')
			}
			if n >= 0 && m != n {
				return 0, false
			}
			n = m
		}
	}
	return n, n >= 0
}

// heldLength is a response body held to the length its Content-Length
// fields agreed on (oneLength), as Go's HTTP/2 transport holds one whose
// field came once: bytes past it are an error, and so is an end before
// it (io.ErrUnexpectedEOF). upstreamBody, over it, takes either as the
// reset it is.
type heldLength struct {
	io.ReadCloser
	left int64
	err  error
}

// errPastLength is an upstream's body longer than its Content-Length.
var errPastLength = errors.New("the upstream sent more than its Content-Length said")

func (b *heldLength) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.ReadCloser.Read(p)
	switch {
	case int64(n) > b.left:
		n, b.left, b.err = int(b.left), 0, errPastLength
		return n, b.err
	case err == io.EOF && b.left > int64(n):
		b.left, b.err = 0, io.ErrUnexpectedEOF
		return n, b.err
	}
	b.left -= int64(n)
	return n, err
}

// abandonUpload ends the app's request body, in, that the upstream
// answered without waiting for (countingBody.abandon), while the
// ReverseProxy's timer may be flushing the answer.
func (w *countingWriter) abandonUpload(in *countingBody) {
	w.mu.Lock()
	defer w.mu.Unlock()
	in.abandon(w.ResponseWriter)
}

// FlushError sends what is held, the status included (a stream's
// headers reach the app as soon as the upstream's do), under mu: the
// ReverseProxy's timer flushes while an upload may be abandoned.
func (w *countingWriter) FlushError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.Writer.FlushError()
}

// spanAttrs are a request span's attributes known at its start, named by
// the stable HTTP semantic conventions.
func (h *Handler) spanAttrs(r *http.Request, st *reqState) []attribute.KeyValue {
	host, port, _ := net.SplitHostPort(st.authority)
	p, _ := strconv.Atoi(port)
	method, other := telemetry.SpanMethod(r.Method)
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", method),
		attribute.String("url.full", "http://"+st.authority+r.URL.EscapedPath()),
		attribute.String("server.address", host),
		attribute.Int("server.port", p),
		attribute.String("minimesh.request_id", st.id),
		attribute.String("minimesh.policy", policyName(st.dest.policy)),
		attribute.String("minimesh.destination", st.dest.name),
	}
	if other {
		attrs = append(attrs, attribute.String("http.request.method_original", r.Method))
	}
	return attrs
}

// tryAttrs are a try span's attributes known at its start, those the
// HTTP semantic conventions require or recommend on an HTTP client span
// (each try is one, "HTTP request retries and redirects"): the method,
// url.full, server.address and server.port as the request span has them
// (the app's authority, not the address dialled), the resend count from
// the second try, and the address the try goes to, network.peer.*: the
// endpoint the balancer picked, or a redirected connection's original
// destination. A name dialled through DNS has no peer address known
// here. Built only for a recorded span: the caller asks for it then.
func tryAttrs(req *http.Request, st *reqState, ep *balancer.Endpoint) []attribute.KeyValue {
	host, port, _ := net.SplitHostPort(st.authority)
	p, _ := strconv.Atoi(port)
	method, other := telemetry.SpanMethod(req.Method)
	attrs := make([]attribute.KeyValue, 0, 9)
	attrs = append(attrs,
		attribute.String("http.request.method", method),
		attribute.String("url.full", "http://"+st.authority+req.URL.EscapedPath()),
		attribute.String("server.address", host),
		attribute.Int("server.port", p),
	)
	if other {
		attrs = append(attrs, attribute.String("http.request.method_original", req.Method))
	}
	if st.attempts > 1 {
		attrs = append(attrs, attribute.Int("http.request.resend_count", st.attempts-1))
	}
	peer := st.dial
	if ep != nil {
		peer = ep.Addr()
	}
	return appendPeer(attrs, peer)
}

// appendPeer appends network.peer.address and network.peer.port, the
// address a try or a tunnel went to, to attrs: none for "" (a name
// dialled through DNS).
func appendPeer(attrs []attribute.KeyValue, peer string) []attribute.KeyValue {
	if h, pp, err := net.SplitHostPort(peer); err == nil && peer != "" {
		n, _ := strconv.Atoi(pp)
		attrs = append(attrs, attribute.String("network.peer.address", h), attribute.Int("network.peer.port", n))
	}
	return attrs
}

// endSpan ends a request or try span with its outcome: a 4xx or 5xx or
// the sidecar's own answer is an error; errKind names it. Both spans are
// CLIENT spans, for which the HTTP semantic conventions ("Status") say a
// 4xx SHOULD be an error (the request failed, for the app that sent it),
// with error.type the status code; only a SERVER span leaves a 4xx, the
// caller's mistake, unset (proxy/inbound's spans do).
func endSpan(s trace.Span, code int, errKind, breakerState string) {
	if !s.IsRecording() {
		s.End()
		return
	}
	attrs := make([]attribute.KeyValue, 0, 3)
	if code > 0 && code != statusClientClosed {
		attrs = append(attrs, attribute.Int("http.response.status_code", code))
	}
	if breakerState != "" {
		attrs = append(attrs, attribute.String("minimesh.circuit_breaker.state", breakerState))
	}
	switch {
	case errKind != "":
		attrs = append(attrs, attribute.String("error.type", errKind))
		s.SetStatus(codes.Error, errKind)
	case code == statusClientClosed:
		attrs = append(attrs, attribute.String("error.type", "client-closed"))
		s.SetStatus(codes.Error, "client closed the request")
	case code >= 400:
		attrs = append(attrs, attribute.String("error.type", statusText(code)))
		s.SetStatus(codes.Error, "")
	}
	s.SetAttributes(attrs...)
	s.End()
}

// classErrorType names a failed try for error.type.
func classErrorType(c policy.Class) string {
	switch c {
	case policy.ClassConnectFailure:
		return "connect-failure"
	case policy.ClassTimeout:
		return "timeout"
	case policy.ClassReset:
		return "reset"
	}
	return ""
}
