package outbound

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"golang.org/x/net/http/httpguts"
)

// fastProxy forwards the requests the fast transport sends (HTTP/1,
// without a body or with a small one, no upgrade) as h.rp, the ReverseProxy,
// would: the same headers reach the upstream and the app, the same
// errors end in serveError, the same one try loop (the forwarder) sends
// them. What it leaves out is what the ReverseProxy pays for requests in
// general: two copies of the request and a third of its URL, a deep
// copy of its header, a ProxyRequest, a ClientTrace in a new context for
// 1xx responses, and a media type parse of every response
// (fastproxy_test.go compares the bytes both send and answer).
func (h *Handler) fastProxy(w http.ResponseWriter, r *http.Request, ctx context.Context, st *reqState) {
	// The request goes out as itself when it carries ctx already (the
	// lean loop's, RequestContext): its server reads nothing of what
	// changes below (method and protocol only).
	out := r
	if r.Context() != ctx {
		out = r.WithContext(ctx)
	}
	st.url = *r.URL
	out.URL = &st.url
	out.Header = r.Header
	if st.wire.appOK {
		// The app's lines are sent on as they came, with toOutbound's
		// changes made as they are written (writeRequestLines): the map
		// is left as the server made it.
		st.wire.line(r.Header, &h.hop, st.idValue())
	} else {
		toOutbound(out.Header, &h.hop)
	}
	out.Close = false
	st.point(out.URL)
	rs, _ := st.out.ResponseWriter.(rawHeaderSetter)
	st.rawOK = rs != nil
	if st.in.ReadCloser == nil {
		out.Body = nil
	} else if err := h.readBody(out, st); err != nil {
		h.serveError(w, out, err)
		return
	}

	res, err := h.rp.Transport.RoundTrip(out)
	if err != nil {
		h.serveError(w, out, err)
		return
	}
	var dst http.Header
	var stream bool
	if st.raw != nil {
		// The upstream's fields as lines (wire.go), without a hop-by-hop
		// one: they go to the app as they are, but the request ID, which
		// the map's field replaces.
		st.answered(res.StatusCode)
		dst = w.Header()
		st.raw = withRequestID(st.raw, st.wire.hasID, st.id)
		st.wire.lines = st.raw // its room, grown or not
		// The upstream's lines were checked and noted as they were read
		// (wire.go); the request ID's is checked here.
		if !((st.ownID || idLine(st.id)) && rs.SetCheckedRawHeader(st.raw, st.wire.facts)) && !rs.SetRawHeader(st.raw) {
			addLines(dst, st.raw) // not of its form: never, from wire.go
		}
		if st.wire.facts.Has&field.ContentType == 0 {
			NoSniff(nil, dst) // the lines hold none
		}
		stream = res.ContentLength == -1 || st.wire.eventStream
	} else {
		removeHopByHop(res.Header, nil)
		if err := modifyResponse(res); err != nil {
			res.Body.Close()
			h.serveError(w, out, err)
			return
		}
		NoSniff(res.Header, res.Header) // answerHeader passes a nil value on
		dst = answerHeader(w, res, st)
		stream = res.ContentLength == -1 || eventStream(field.Get(res.Header, "Content-Type"))
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)
	if err := h.copyBody(w, res, stream, stalledDeadline(st.deadline)); err != nil {
		defer res.Body.Close()
		// The response is cut short: all the server can do is abort it,
		// as the ReverseProxy does.
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // now: it fills res.Trailer
	if len(res.Trailer) > 0 {
		http.NewResponseController(w).Flush() // chunked, for the trailers
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			for _, v := range vv {
				dst.Add(k, v)
			}
		}
		return
	}
	for k, vv := range res.Trailer {
		for _, v := range vv {
			dst.Add(http.TrailerPrefix+k, v)
		}
	}
}

// readBody reads the body of a request fastProxy forwards, whole, before
// its first try (fastProxied: of a known length up to fastBodyMax), for
// the forwarder to send with the head. --request-body-timeout bounds the
// whole read (of a body the server does not hold yet: with retries), by
// one read deadline on the app's connection: a streamed
// body's watch of its progress (serve) costs a timer and a context per
// request, and the context one the lean loop can no longer lend again.
func (h *Handler) readBody(r *http.Request, st *reqState) error {
	var rc *http.ResponseController
	var dl time.Time
	if d := h.cfg.RequestBodyTimeout; d > 0 && !st.arrived { // (arrived: no read waits)
		dl = time.Now().Add(d)
	}
	// The request's timeout (st.deadline) cuts the wait too, when it
	// comes first: its 504 goes out at the timeout whatever the body
	// does, as the other requests' (countingBody.wake).
	whole := !st.arrived && !st.deadline.IsZero() && (dl.IsZero() || st.deadline.Before(dl))
	if whole {
		dl = st.deadline
	}
	if !dl.IsZero() {
		rc = http.NewResponseController(st.out.ResponseWriter)
		if rc.SetReadDeadline(dl) != nil {
			rc = nil // never: both servers set it
		}
	}
	rp, err := newReplay(r.Body, r.ContentLength)
	if rc != nil && err == nil {
		// (After a failed read the deadline stays: what is left of the
		// body cannot be told from a next request, and the server, which
		// reads and drops it, gives up at once and closes.)
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		if rc != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if whole {
				// The rest of the body is unread: the connection closes
				// after the 504.
				st.out.CloseConn = true
				return errTimeout
			}
			// (net/http's server has ended the request's context too.)
			return &clientError{&bodyTimeoutError{}}
		}
		return unreadBody(r.Context(), err)
	}
	st.replay = rp
	return nil
}

// answerHeader makes the upstream's header the app's: the header map
// itself where the ResponseWriter takes it (leanhttp), a copy of its
// fields otherwise. It returns the map the answer's fields are in.
func answerHeader(w http.ResponseWriter, res *http.Response, st *reqState) http.Header {
	if hs, ok := st.out.ResponseWriter.(headerSetter); ok && hs.SetHeader(res.Header) {
		// The upstream's header is the app's: every change below comes
		// before WriteHeader, the trailers' after the Flush that sends
		// it, and answerLate's before a status went out.
		return res.Header
	}
	dst := w.Header()
	for k, vv := range res.Header {
		if have, ok := dst[k]; ok {
			dst[k] = append(have, vv...)
		} else {
			dst[k] = vv // the response's own slices, read by nothing else now
		}
	}
	return dst
}

// headerSetter is a ResponseWriter that can take a header map to answer
// with (leanhttp's response).
type headerSetter interface{ SetHeader(http.Header) bool }

// requestLiner is a ResponseWriter that gives the field lines of the
// request it answers as its client sent them (leanhttp's response).
type requestLiner interface {
	RequestLines() (field.RequestLines, bool)
}

// rawHeaderSetter is a ResponseWriter that can take header fields as
// lines (leanhttp's response).
type rawHeaderSetter interface {
	SetRawHeader([]byte) bool
	SetCheckedRawHeader([]byte, field.Facts) bool
}

// idLine reports whether id makes a line of SetRawHeader's form
// ("X-Request-Id: id"): a valid field value with no white space at
// either end. The sidecar's IDs and those it keeps (requestid.Valid,
// trimmed as read) all do.
func idLine(id string) bool {
	return id != "" && field.Bare(id)
}

// addLines adds header fields given as lines ("Name: value\r\n") to h.
func addLines(h http.Header, lines []byte) {
	for rest := lines; len(rest) > 0; {
		line, after, _ := bytes.Cut(rest, crlf)
		rest = after
		if k, v, ok := bytes.Cut(line, colon); ok {
			h.Add(string(k), string(field.TrimOWS(v)))
		}
	}
}

// requestIDName is requestIDKey as a line's name starts, spelled as the
// fast transport's lines are (canonical: wire.go takes no other as lines).
var requestIDName = []byte(requestIDKey + ":")

// withRequestID is the upstream's lines with its X-Request-Id fields
// dropped and the request's own appended: the answer's ID goes out as a
// line, so that the answer's header map stays empty, where setting the ID
// in it cost an assignment, an iteration and a lookup per line in
// leanhttp's writeHeader (~2.5 % of the sidecar's user time at 1,000
// req/s). has says the lines hold one (readResponseHead noted it as it
// read their names: no search of them). The lines are edited in place;
// their room is the request's.
func withRequestID(lines []byte, has bool, id string) []byte {
	if has { // mostly not
		kept := lines[:0]
		for rest := lines; len(rest) > 0; {
			nl := bytes.IndexByte(rest, '\n') + 1 // every line ends "\r\n" ...
			if nl == 0 {
				nl = len(rest) // ... else the rest is one line
			}
			if !bytes.HasPrefix(rest, requestIDName) {
				kept = append(kept, rest[:nl]...) // leftwards, over itself
			}
			rest = rest[nl:]
		}
		lines = kept
	}
	lines = append(lines, requestIDName...)
	lines = append(lines, ' ')
	lines = append(lines, id...)
	return append(lines, '\r', '\n')
}

// toOutbound makes the app's request header, in place, the header of the
// request forwarded for it: without the hop-by-hop fields, with this
// sidecar (p) in Via and an empty User-Agent if the app sent none (so that
// none is sent), as the ReverseProxy and rewrite make it. In place, not a
// copy: nothing reads the app's hop-by-hop fields after this (the
// servers, net/http's and leanhttp's, took what they need from them
// before the handler ran), and a map per request was a tenth of the fast
// path's allocations. Every change replaces a slice, none writes into
// one: the values are the server's.
func toOutbound(hdr http.Header, p *hop) {
	// Read first: Connection may list Te, as RFC 9110 §10.1.4 asks.
	trailers := httpguts.HeaderValuesContainsToken(hdr["Te"], "trailers")
	// (rewrite puts the app's Forwarded headers back even when its
	// Connection header names them.)
	removeHopByHop(hdr, isForwardedHeader)
	if trailers {
		hdr["Te"] = teTrailers
	}
	p.add(hdr)
	if _, ok := hdr["User-Agent"]; !ok {
		hdr["User-Agent"] = noUserAgent
	}
}

func isForwardedHeader(k string) bool { return slices.Contains(forwardedHeaders[:], k) }

var (
	teTrailers  = []string{"trailers"}
	noUserAgent = []string{""}
)

// hopHeaders are the hop-by-hop headers the ReverseProxy removes whatever
// the Connection header says.
var hopHeaders = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// connectionListed appends to drop the header names that the
// Connection header values conn list, as the ReverseProxy deletes them.
func connectionListed(conn []string, drop []string) []string {
	for _, f := range conn {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				drop = append(drop, http.CanonicalHeaderKey(sf))
			}
		}
	}
	return drop
}

// removeHopByHop removes the hop-by-hop fields from a header as the
// ReverseProxy does: hopHeaders, and what Connection lists unless keep
// (nil: none) says to keep it.
func removeHopByHop(h http.Header, keep func(string) bool) {
	var room [4]string
	for _, k := range connectionListed(h["Connection"], room[:0]) {
		if keep == nil || !keep(k) {
			delete(h, k)
		}
	}
	if len(h) < len(hopHeaders) {
		// Fewer fields than names: a look at each field costs less
		// than a delete (a hash) of each name.
		for k := range h {
			if hopHeader(k) {
				delete(h, k)
			}
		}
		return
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// copyBody copies the response body to the app as the ReverseProxy
// does, flushing each write of a stream (no length, or server-sent
// events; a body of known length still arriving is flushed by its reads,
// sendArrived); it returns a failure to write, or to read other than the
// upstream's end or the request's cancellation.
func (h *Handler) copyBody(w http.ResponseWriter, res *http.Response, stream bool, wdl time.Time) error {
	var rc *http.ResponseController
	if stream {
		rc = http.NewResponseController(w)
		if !bodyBuffered(res.Body) {
			// The headers now, as the ReverseProxy's timer sends a
			// stream's (its copyResponse starts it with no delay, on a
			// goroutine of its own). (A body already here goes with
			// them.)
			_ = rc.Flush()
		}
	}
	buf := bufferPool{}.Get()
	defer bufferPool{}.Put(buf)
	wrote := false
	for {
		nr, rerr := res.Body.Read(buf)
		if rerr != nil && rerr != io.EOF && rerr != context.Canceled {
			h.log.Debug("httputil: ReverseProxy read error during body copy: " + rerr.Error())
		}
		if nr > 0 {
			if wrote && !wdl.IsZero() {
				// A body longer than one write: the request's timeout
				// bounds the writes to an app that reads nothing too
				// (stalledDeadline). Not for the common body of one
				// write, which costs no deadline.
				_ = http.NewResponseController(w).SetWriteDeadline(wdl)
				wdl = time.Time{}
			}
			wrote = true
			nw, werr := w.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nw != nr {
				return io.ErrShortWrite
			}
			if rc != nil {
				_ = rc.Flush()
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// sendArrived sends the app what it has been given of a body of known
// length whose rest has not arrived yet, before the next read waits for
// that rest: held, the status and the first bytes sat in the server's
// 4 KiB buffer until it filled or the body ended, while the latency
// metric, ended at the headers, said the answer was quick. Data goes on
// when the upstream has nothing more ready, as Envoy forwards it: the
// fast transport's reader says whether it has (bodyBuffered);
// http.Transport's and the HTTP/2 transport's cannot, and are taken to
// have nothing. Called before each read of the body (upstreamBody.Read),
// so on both paths, fastProxy's and the ReverseProxy's, whose
// FlushInterval -1 would flush the headers alone first, on a timer's
// goroutine (5 allocations and a write(2) more per request, measured,
// and a status sent before the body's first byte, which the 502 of a
// body failing before it needs held: docs/operations.md). A body that
// came whole with its head, the common case, costs nothing: the first
// read finds nothing written yet, and a second (the HTTP/2 transport's
// EOF) finds the body done. A stream (no length) is flushed on every
// write already (copyBody, the ReverseProxy).
func (b *upstreamBody) sendArrived() {
	if w := &b.st.out; 0 < w.n && w.n < b.res.ContentLength && !bodyBuffered(b.ReadCloser) {
		_ = w.FlushError()
	}
}

// bodyBuffered reports whether the first bytes of a response body of a
// known length have arrived: a read will not wait. (Of a chunked body,
// bytes in the buffer may be only a chunk's size.)
func bodyBuffered(b io.ReadCloser) bool {
	if ub, ok := b.(*upstreamBody); ok {
		b = ub.ReadCloser
	}
	fb, ok := b.(*fastBody)
	if !ok {
		return false
	}
	lb, ok := fb.ReadCloser.(*lengthBody)
	return ok && lb.br.Buffered() > 0
}

// eventStream reports whether a response of Content-Type ct is
// server-sent events, by the ReverseProxy's test, parsing only what
// could be one.
func eventStream(ct string) bool {
	ct = strings.TrimSpace(ct)
	if len(ct) < len(sse) || !strings.EqualFold(ct[:len(sse)], sse) {
		return false
	}
	mt, _, _ := mime.ParseMediaType(ct)
	return mt == sse
}

// eventStreamValue is eventStream for a Content-Type value read as
// bytes (readResponseHead's): a string made only for one that could be
// an event stream.
func eventStreamValue(ct []byte) bool {
	ct = bytes.TrimSpace(ct) // Unicode's white space, as strings.TrimSpace
	return len(ct) >= len(sse) && field.EqualFold(ct[:len(sse)], sse) && eventStream(string(ct))
}

const sse = "text/event-stream"

// fastProxied reports whether fastProxy forwards r: what the fast
// transport sends, every try of it (a try the fast transport does not
// send would have no context to end it at the request's timeout). A
// body must be one the forwarder will hold whole (sendable): read, it is
// the request's Content-Length long, or its read failed and nothing is
// sent. It is held whole only if it has arrived (the lean loop holds
// it), or is to be sent again (retries): a body the app sends as
// answers come (a stream of a declared length, an upload the upstream
// answers early) streams through http.Transport.
func (h *Handler) fastProxied(r *http.Request, st *reqState) bool {
	if h.cfg.StdTransport || h.rpOnly.Load() || r.ProtoMajor != 1 || st.upgrade || st.grpc || r.Method == http.MethodConnect {
		return false
	}
	if st.in.ReadCloser == nil {
		return true
	}
	return 0 < r.ContentLength && (st.arrived || st.dest.retried()) && holdable(r)
}

// arrived reports whether a server holds all of body (leanhttp's
// Arrived).
func arrived(body io.Reader) bool {
	a, ok := body.(interface{ Arrived() bool })
	return ok && a.Arrived()
}

// informKey finds, in a fast-proxied request's context, what passes the
// upstream's 1xx responses on to the app: the ReverseProxy's ClientTrace
// does it for the others.
type informKey struct{}

// got1xx passes an informational response on to the app, as the
// ReverseProxy's ClientTrace does.
func (st *reqState) got1xx(code int, header textproto.MIMEHeader) error {
	w := &st.out
	h := w.Header()
	for k, vv := range header {
		for _, v := range vv {
			h.Add(k, v)
		}
	}
	w.WriteHeader(code)
	clear(h)
	return nil
}
