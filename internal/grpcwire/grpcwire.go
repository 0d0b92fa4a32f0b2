// Package grpcwire is the little of gRPC the sidecar speaks as a client:
// a bidirectional stream (xDS's ADS) and a unary call (OTLP's Export),
// over cleartext HTTP/2 with prior knowledge, on net/http's own HTTP/2
// client, with messages the caller encodes (protowire).
//
// It exists for the sidecar's memory (issue 16): google.golang.org/grpc
// and the generated service stubs that import it (go-control-plane's
// discovery service, OTLP's collector) were about 6 MB of the sidecar's
// binary and 4 MB of its idle RSS (docs/benchmarks.md, "Memory at idle
// and under load"), for two calls that net/http, which the sidecar links
// anyway, can make. No compression, no name resolution beyond the dialer's,
// keepalive pings only on a client made to send them (NewKeepaliveClient:
// the ADS stream, which is quiet for as long as nothing changes): what the
// sidecar used of grpc-go.
package grpcwire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultMaxMessage is the largest message accepted from the server,
// grpc-go's default receive limit.
const DefaultMaxMessage = 4 << 20

// NewClient is an HTTP client that speaks HTTP/2 without TLS (h2c with
// prior knowledge) to every address, one connection per address. It sends
// no keepalive pings: a connection between unary calls (OTLP's) has no
// stream, and a grpc-go server ends a connection pinged without one, by
// default, with GOAWAY "too_many_pings" (keepalive.EnforcementPolicy).
func NewClient(connectTimeout time.Duration) *http.Client {
	return NewKeepaliveClient(connectTimeout, Keepalive{})
}

// Keepalive is how a client finds out that its server is gone when
// nothing says so (a node lost without a TCP reset, a network that drops
// packets): TCP's own keepalive takes minutes to give up on a dead peer,
// and a stream that waits for the server's next message waits forever.
type Keepalive struct {
	// Time: a connection from which no frame came for this long is sent
	// an HTTP/2 PING (0: never). Any frame resets it, the PING's answer
	// too, so a quiet connection is pinged once per Time (plus a round
	// trip): a grpc-go server must permit it (its EnforcementPolicy's
	// MinTime below Time, and PermitWithoutStream if the connection may
	// have no stream open).
	Time time.Duration
	// Timeout: a PING unanswered for this long closes the connection,
	// and with it every stream on it (0: net/http's 15 s).
	Timeout time.Duration
}

// NewKeepaliveClient is NewClient pinging its connections as k says: a
// dead server ends the stream within k.Time+k.Timeout of its last frame.
func NewKeepaliveClient(connectTimeout time.Duration, k Keepalive) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Protocols:          p,
		DialContext:        d.DialContext,
		DisableCompression: true,
		Proxy:              nil, // never through HTTP_PROXY: that is the sidecar itself
		MaxIdleConns:       1,
		IdleConnTimeout:    90 * time.Second,
	}
	if k.Time > 0 {
		t.HTTP2 = &http.HTTP2Config{SendPingTimeout: k.Time, PingTimeout: k.Timeout}
	}
	return &http.Client{Transport: t}
}

// Error is a gRPC status other than OK.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", codeName(e.Code), e.Message)
}

func codeName(c int) string {
	names := [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
		"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
		"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}
	if c >= 0 && c < len(names) {
		return names[c]
	}
	return "Code(" + strconv.Itoa(c) + ")"
}

// frame appends msg to b as one gRPC length-prefixed message.
func frame(b, msg []byte) []byte {
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg)))
	return append(b, msg...)
}

func newRequest(ctx context.Context, addr, method string, body io.Reader) (*http.Request, error) {
	u := &url.URL{Scheme: "http", Host: addr, Path: method}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.Header["Content-Type"] = []string{"application/grpc"}
	req.Header["Te"] = []string{"trailers"}
	req.Header["User-Agent"] = []string{"minimesh-grpcwire"}
	if dl, ok := ctx.Deadline(); ok {
		// grpc-timeout: at most 8 digits; milliseconds cover every
		// timeout the sidecar sets.
		ms := max(time.Until(dl).Milliseconds(), 1)
		req.Header["Grpc-Timeout"] = []string{strconv.FormatInt(min(ms, 99999999), 10) + "m"}
	}
	return req, nil
}

// status is the call's status from a header set (the trailers, or the
// headers of a trailers-only answer); ok says whether one was there.
func status(h http.Header) (err error, ok bool) {
	v := h.Get("Grpc-Status")
	if v == "" {
		return nil, false
	}
	code, perr := strconv.ParseInt(v, 10, 32) // as grpc-go reads it
	if perr != nil {
		return &Error{Code: 2, Message: "malformed grpc-status " + strconv.Quote(v)}, true
	}
	if code == 0 {
		return nil, true
	}
	return &Error{Code: int(code), Message: decodeMessage(h.Get("Grpc-Message"))}, true
}

// decodeMessage is a percent-encoded grpc-message. A malformed escape
// stays as it is: the protocol asks that the message never be thrown
// away for one ("100%" was an empty message with url.PathUnescape), and
// this is how grpc-go decodes it.
func decodeMessage(msg string) string {
	if !strings.Contains(msg, "%") {
		return msg
	}
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		if msg[i] == '%' && i+2 < len(msg) {
			if c, err := strconv.ParseUint(msg[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(msg[i])
	}
	return b.String()
}

// isGRPC says whether a content type is gRPC's: application/grpc, alone
// or followed by + (a subtype) or ; (parameters), as grpc-go checks it
// ("application/grpcx" is not).
func isGRPC(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

func checkResponse(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return &Error{Code: 14, Message: "HTTP status " + resp.Status}
	}
	if err, ok := status(resp.Header); ok && err != nil {
		return err // trailers-only
	}
	if ct := resp.Header.Get("Content-Type"); !isGRPC(ct) {
		return &Error{Code: 2, Message: "content-type " + strconv.Quote(ct)}
	}
	return nil
}

// reader reads length-prefixed messages from a response body.
type reader struct {
	r   *bufio.Reader
	max int
	hdr [5]byte
}

// next returns the next message, io.EOF at the end of the body.
func (r *reader) next() ([]byte, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &Error{Code: 13, Message: "truncated message header"}
		}
		return nil, err
	}
	if r.hdr[0] != 0 {
		return nil, &Error{Code: 12, Message: "compressed message: no compression was asked for"}
	}
	n := binary.BigEndian.Uint32(r.hdr[1:])
	if int64(n) > int64(r.max) {
		return nil, &Error{Code: 8, Message: fmt.Sprintf("received message larger than max (%d vs. %d)", n, r.max)}
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.r, b); err != nil {
		return nil, &Error{Code: 13, Message: "truncated message: " + err.Error()}
	}
	return b, nil
}

// Invoke makes a unary call: it sends req (an encoded message) to method
// (/package.Service/Method) at addr and returns the answer's encoding.
func Invoke(ctx context.Context, c *http.Client, addr, method string, msg []byte) ([]byte, error) {
	req, err := newRequest(ctx, addr, method, nil)
	if err != nil {
		return nil, err
	}
	body := frame(make([]byte, 0, 5+len(msg)), msg)
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	resp, err := c.Do(req)
	if err != nil {
		return nil, &Error{Code: 14, Message: err.Error()}
	}
	defer resp.Body.Close()
	if err := checkResponse(resp); err != nil {
		return nil, err
	}
	r := &reader{r: bufio.NewReader(resp.Body), max: DefaultMaxMessage}
	out, err := r.next()
	if err != nil && err != io.EOF {
		return nil, err
	}
	if err == nil {
		if _, err := r.next(); err != io.EOF {
			if err == nil {
				return nil, &Error{Code: 13, Message: "more than one message in a unary answer"}
			}
			return nil, err
		}
	}
	if err, ok := status(resp.Trailer); ok {
		if err != nil {
			return nil, err
		}
		if out == nil {
			return nil, &Error{Code: 13, Message: "no message in a unary answer"}
		}
		return out, nil
	}
	return nil, &Error{Code: 13, Message: "server closed the stream without a status"}
}

// Stream is a bidirectional stream: Send from one goroutine, Recv from
// another. It ends when its context ends, or at CloseSend and the
// server's status.
type Stream struct {
	pw      *io.PipeWriter
	sendMu  sync.Mutex
	done    chan struct{} // closed when the response (or its error) is in
	resp    *http.Response
	err     error
	r       *reader
	cancel  context.CancelFunc
	sendBuf []byte
}

// NewStream opens a stream to method at addr. The request goes out at
// once; its answer's headers are awaited by the first Recv (a server may
// hold them until it has something to send).
func NewStream(ctx context.Context, c *http.Client, addr, method string) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	req, err := newRequest(ctx, addr, method, pr)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Stream{pw: pw, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		resp, err := c.Do(req)
		if err != nil {
			s.err = &Error{Code: 14, Message: err.Error()}
			pr.CloseWithError(s.err) // a Send blocked on the pipe returns
			return
		}
		if err := checkResponse(resp); err != nil {
			resp.Body.Close()
			s.err = err
			pr.CloseWithError(err)
			return
		}
		s.resp = resp
		s.r = &reader{r: bufio.NewReader(resp.Body), max: DefaultMaxMessage}
	}()
	return s, nil
}

// Send sends one encoded message.
func (s *Stream) Send(msg []byte) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.sendBuf = frame(s.sendBuf[:0], msg)
	if _, err := s.pw.Write(s.sendBuf); err != nil {
		if e := s.ready(); e != nil {
			return e
		}
		return &Error{Code: 14, Message: "send: " + err.Error()}
	}
	return nil
}

// ready waits for the answer's headers without blocking a Send forever:
// it returns at once when they are not in.
func (s *Stream) ready() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Recv returns the next message from the server; at the end of the
// stream, the server's status as an *Error, or io.EOF when it was OK.
func (s *Stream) Recv() ([]byte, error) {
	<-s.done
	if s.err != nil {
		return nil, s.err
	}
	b, err := s.r.next()
	if err == nil {
		return b, nil
	}
	if err != io.EOF {
		var e *Error
		if errors.As(err, &e) {
			return nil, err
		}
		return nil, &Error{Code: 14, Message: err.Error()}
	}
	if serr, ok := status(s.resp.Trailer); ok {
		if serr != nil {
			return nil, serr
		}
		return nil, io.EOF
	}
	return nil, &Error{Code: 13, Message: "server closed the stream without a status"}
}

// CloseSend ends the client's side of the stream: no more Sends. A
// server-streaming method's server waits for it.
func (s *Stream) CloseSend() error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.pw.Close()
}

// Close ends the stream and releases it.
func (s *Stream) Close() {
	s.cancel()
	s.pw.CloseWithError(context.Canceled)
	<-s.done
	if s.resp != nil {
		s.resp.Body.Close()
	}
}
