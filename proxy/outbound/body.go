package outbound

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/nobody"
)

// MaxReplayBody is the largest request body kept for replay. Larger
// bodies stream through and are retried only if not a byte was sent.
const MaxReplayBody = 64 << 10

// replay is a request body that can be sent more than once.
type replay struct {
	buf    *[]byte   // whole body, when it fit in MaxReplayBody
	stream io.Reader // the rest, when it did not
	// started: some of stream was read, so it cannot be resent. Set by the
	// transport's goroutine that writes the body, which may still run
	// after RoundTrip returned (an early answer to a large upload).
	started atomic.Bool
	length  int64 // the request's ContentLength, sent with the stream
	closer  io.Closer
	// rec, for an app-paced stream (a gRPC call, an HTTP/2 body without
	// a content-length), is the body kept as the first try sent it: sent
	// again only when it was one whole message (gRPC), or whole (plain).
	rec *recording
}

// newReplay reads up to MaxReplayBody of body. The original is closed by
// the server when the handler returns, which is after the last try.
func newReplay(body io.ReadCloser, length int64) (*replay, error) {
	// Not pooled: the transport may read a try's body after the request
	// is over, so the buffer must never be handed to another request.
	bp := new([]byte)
	// Room for a body of a known length and the read that finds its end
	// (the common small one, in one allocation of its size); 4 KiB,
	// grown as it comes, for the others.
	size := 4 << 10
	if 0 < length && length < int64(size) {
		size = int(length) + 1
	}
	buf := make([]byte, 0, size)
	for len(buf) <= MaxReplayBody {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		// No read past the first byte over the limit: what is read
		// beyond it is held too, as the start of the stream.
		n, err := body.Read(buf[len(buf):min(cap(buf), MaxReplayBody+1)])
		buf = buf[:len(buf)+n]
		if err == io.EOF && len(buf) <= MaxReplayBody {
			*bp = buf
			return &replay{buf: bp, closer: body}, nil
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
	}
	// Too large to keep: send what was read, then the rest, once.
	*bp = buf
	return &replay{buf: bp, stream: io.MultiReader(bytes.NewReader(buf), body), closer: body, length: length}, nil
}

// body returns a reader for one try, or false when the body cannot be
// sent again.
func (r *replay) body() (io.ReadCloser, int64, bool) {
	if r.rec != nil {
		if !r.rec.begun() {
			return r.rec, r.length, true
		}
		if b, ok := r.rec.oneMessage(); ok {
			return io.NopCloser(bytes.NewReader(b)), r.length, true
		}
		return nil, 0, false
	}
	if r.stream == nil {
		return io.NopCloser(bytes.NewReader(*r.buf)), int64(len(*r.buf)), true
	}
	if r.started.Load() {
		return nil, 0, false
	}
	return &onceBody{r}, r.length, true
}

// whole is the body when it is held whole (never nil: newReplay makes
// its room), else nil.
func (r *replay) whole() []byte {
	if r.rec != nil || r.stream != nil {
		return nil
	}
	return *r.buf
}

// replayable reports whether another try can carry the body.
func (r *replay) replayable() bool {
	if r.rec != nil {
		_, ok := r.rec.oneMessage()
		return ok || !r.rec.begun()
	}
	return r.stream == nil || !r.started.Load()
}

// recording is a gRPC call's request body on its first try: it passes
// through as the upstream transport reads it, never read ahead (a
// streaming call's next message may wait for the first answer), and is
// kept, up to MaxReplayBody, so that the call can be sent again if it
// turns out to have been one whole message. The transport reads it from
// its own goroutine.
type recording struct {
	body io.Reader
	// plain: not gRPC, so resent when read to its end, whatever it holds.
	plain bool

	mu      sync.Mutex
	buf     []byte
	over    bool // more than MaxReplayBody: not kept
	eof     bool
	started bool
	closed  bool // the transport is done with it
}

func (r *recording) Read(p []byte) (int, error) {
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	n, err := r.body.Read(p)
	r.mu.Lock()
	if !r.over {
		if len(r.buf)+n > MaxReplayBody {
			r.over, r.buf = true, nil
		} else {
			r.buf = append(r.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		r.eof = true
	}
	r.mu.Unlock()
	return n, err
}

// Close notes that the transport is done with the body; closing the
// app's body is left to the server, as onceBody's.
func (r *recording) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return nil
}

func (r *recording) begun() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

// oneMessage returns the body when it was read to its end and is exactly
// one gRPC message (a 5-byte prefix, flag and big-endian length, then
// that many bytes): a unary call, safe to send again whole. A stream of
// messages never is.
//
// An upstream that answers before the transport has read the body's end
// is the common case (a server answers once it has the message), so
// when what was read is one whole message but its end was not seen, the
// end is waited for, up to endWait: read by the transport if it still
// reads, else by oneMessage itself once the transport has closed the
// body. A stream that sends nothing more in that time is not replayed.
func (r *recording) oneMessage() ([]byte, bool) {
	if r.plain {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.buf, r.eof && !r.over
	}
	deadline := time.Now().Add(endWait)
	for {
		r.mu.Lock()
		whole, eof, closed := r.whole(), r.eof, r.closed
		r.mu.Unlock()
		switch {
		case !whole:
			return nil, false
		case eof:
			return r.buf, true
		case closed:
			return r.probeEnd(time.Until(deadline))
		case time.Now().After(deadline):
			return nil, false
		}
		time.Sleep(time.Millisecond)
	}
}

// endWait bounds the wait for the end of a one-message gRPC body before
// a retry.
const endWait = 50 * time.Millisecond

// whole reports whether buf is one whole gRPC message; mu is held.
func (r *recording) whole() bool {
	if r.over || len(r.buf) < 5 {
		return false
	}
	n := uint64(r.buf[1])<<24 | uint64(r.buf[2])<<16 | uint64(r.buf[3])<<8 | uint64(r.buf[4])
	return 5+n == uint64(len(r.buf))
}

// probeEnd reads the app's body once more, within d, for its end. A read
// still blocked at d is left to end with the request (the server closes
// the body); it writes only to its own channel.
func (r *recording) probeEnd(d time.Duration) ([]byte, bool) {
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var b [1]byte
		n, err := r.body.Read(b[:])
		ch <- result{n, err}
	}()
	t := time.NewTimer(max(d, time.Millisecond))
	defer t.Stop()
	select {
	case res := <-ch:
		if res.n == 0 && res.err == io.EOF {
			r.mu.Lock()
			r.eof = true
			r.mu.Unlock()
			return r.buf, true
		}
	case <-t.C:
	}
	return nil, false
}

// onceBody streams a body too large to keep and remembers whether any of
// it was read, which makes it unsendable. Close is left to the server, so
// that a try that failed to connect does not close the body that the next
// try needs.
type onceBody struct{ r *replay }

func (b *onceBody) Read(p []byte) (int, error) {
	b.r.started.Store(true)
	return b.r.stream.Read(p)
}

func (b *onceBody) Close() error { return nil }

// hasBody reports whether a request carries a body.
func hasBody(r *http.Request) bool {
	return r.Body != nil && !nobody.Is(r.Body) && r.ContentLength != 0
}

// stalledWriteGrace is how long after the request's timeout a write of
// its answer to the app may still wait on the app: at the timeout the
// upstream's body fails at once, and the handler ends the answer itself
// (a gRPC call between two messages with trailers that say
// DEADLINE_EXCEEDED, docs/grpc.md), within a moment. A write still
// blocked then waits on an app that does not read (its HTTP/2
// flow-control window, its TCP receive buffer full): it fails, and its
// server resets the stream (RST_STREAM INTERNAL_ERROR) or closes the
// HTTP/1.x connection. Without it the answer, the upstream's stream, the
// sidecar's goroutines and the breaker's outcome waited for the app for
// as long as it liked (docs/policy.md, timeout).
const stalledWriteGrace = 250 * time.Millisecond

// cutStalledWrites arms, at the request's timeout (ctx ending with
// errTimeout), a write deadline stalledWriteGrace later on w, the
// server's ResponseWriter (net/http's HTTP/1 and HTTP/2 servers and the
// lean loop each honour it, per stream on HTTP/2). The returned stop must
// be called before the handler returns, and returns only once the timer's
// function is over: it touches the server's response, which is not the
// handler's to touch after that. The fast path's requests have a deadline
// instead (stalledDeadline). At the same moment it wakes body, when not
// nil, from a read of the app's body that holds the exchange up
// (countingBody.wake): one callback on the context, not two.
func cutStalledWrites(ctx context.Context, w http.ResponseWriter, body *countingBody) (stop func()) {
	done := make(chan struct{})
	after := context.AfterFunc(ctx, func() {
		defer close(done)
		if context.Cause(ctx) == errTimeout {
			if body != nil {
				body.wake(w)
			}
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(stalledWriteGrace))
		}
	})
	return func() {
		if !after() {
			<-done
		}
	}
}

// stalledDeadline is the write deadline of a fast-path answer whose
// request has a timeout (the request's deadline; zero: none): as
// cutStalledWrites's, stalledWriteGrace after it.
func stalledDeadline(deadline time.Time) time.Time {
	if deadline.IsZero() {
		return deadline
	}
	return deadline.Add(stalledWriteGrace)
}

// cutByTimeout reports whether a write of the answer to the app that
// failed now was cut by the request's timeout: the write deadline it
// armed (cutStalledWrites, stalledDeadline: stalledWriteGrace after the
// request's deadline, req's or the fast path's) has passed. A write that
// failed before it was the app's leaving, also after the timeout (an app
// whose own, later deadline reset its stream: docs/grpc.md).
func (st *reqState) cutByTimeout(req context.Context) bool {
	dl := st.deadline
	if dl.IsZero() {
		if context.Cause(req) != errTimeout {
			return false
		}
		dl, _ = req.Deadline()
	}
	return !since(st.start).Before(dl.Add(stalledWriteGrace))
}
