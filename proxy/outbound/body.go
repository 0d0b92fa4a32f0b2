package outbound

import (
	"bytes"
	"io"
	"net/http"
)

// MaxReplayBody is the largest request body kept for replay. Larger
// bodies stream through and are retried only if not a byte was sent.
const MaxReplayBody = 64 << 10

// replay is a request body that can be sent more than once.
type replay struct {
	buf     *[]byte   // whole body, when it fit in MaxReplayBody
	stream  io.Reader // the rest, when it did not
	started bool      // some of stream was read: it cannot be resent
	length  int64     // the request's ContentLength, sent with the stream
	closer  io.Closer
}

// newReplay reads up to MaxReplayBody of body. The original is closed by
// the server when the handler returns, which is after the last try.
func newReplay(body io.ReadCloser, length int64) (*replay, error) {
	// Not pooled: the transport may read a try's body after the request
	// is over, so the buffer must never be handed to another request.
	bp := new([]byte)
	buf := make([]byte, 0, 4<<10)
	for len(buf) <= MaxReplayBody {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
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
	if r.stream == nil {
		return io.NopCloser(bytes.NewReader(*r.buf)), int64(len(*r.buf)), true
	}
	if r.started {
		return nil, 0, false
	}
	return &onceBody{r}, r.length, true
}

// replayable reports whether another try can carry the body.
func (r *replay) replayable() bool { return r.stream == nil || !r.started }

// onceBody streams a body too large to keep and remembers whether any of
// it was read, which makes it unsendable. Close is left to the server, so
// that a try that failed to connect does not close the body that the next
// try needs.
type onceBody struct{ r *replay }

func (b *onceBody) Read(p []byte) (int, error) {
	b.r.started = true
	return b.r.stream.Read(p)
}

func (b *onceBody) Close() error { return nil }

// hasBody reports whether a request carries a body.
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}
