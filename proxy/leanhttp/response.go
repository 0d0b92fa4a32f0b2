package leanhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/minimesh/minimesh/proxy/internal/field"
)

// response is the lean loop's http.ResponseWriter. It is net/http's
// HTTP/1.x response writer (server.go: response and chunkWriter) ported
// for the requests the loop serves, with the same buffering and the same
// decisions, so that the bytes on the wire are the same:
//
//  1. the body goes through a 2 KiB buffer (bufferBeforeChunkingSize):
//     a response that fits and ends without a Flush gets a
//     Content-Length, a longer one or a flushed one without a declared
//     length is chunked (HTTP/1.1) or ends with the connection (1.0);
//  2. the header is finalised (writeHeader) when that buffer first
//     empties: Content-Length, sniffed Content-Type, Date, Connection,
//     Transfer-Encoding, as net/http decides them;
//  3. everything goes into the connection's 4 KiB bufio.Writer, flushed
//     at the end of the response (one write(2) for a small one), on
//     Flush, and whenever it fills.
//
// A request's body the handler left unread is read and dropped before
// the response, or, in full duplex, after it (endBody), as net/http does. One difference is left: net/http's response has a
// ReadFrom, with which io.Copy(w, src) sends the first 512 bytes and then
// the rest unbuffered (chunked when the length is unknown); this one has
// none, so io.Copy buffers as Write does (a short body gets a
// Content-Length). Both are valid framing; the sidecar's handlers call
// Write. One addition: SetHeader, for a handler that has a header map
// of its own to answer with (a proxy's upstream response).
type response struct {
	c   *conn
	req *http.Request

	handlerHeader http.Header // made by Header, or given to SetHeader
	// header is a copy of handlerHeader as it was at WriteHeader, when the
	// handler had called Header (net/http's chunkWriter.header): what
	// the handler changes after WriteHeader is not sent. After SetHeader
	// it is handlerHeader itself.
	header       http.Header
	calledHeader bool
	setHeader    bool
	// raw is what SetRawHeader gave: lines sent before header's fields.
	raw rawHead

	wroteHeader bool // a final status was (logically) written
	headerSent  bool // the header went into the connection's buffer
	chunking    bool
	status      int

	written       int64
	contentLength int64 // declared, or -1

	closeAfterReply  bool
	fullDuplex       bool // EnableFullDuplex: the request's body is the handler's to the end
	wants10KeepAlive bool
	wantsClose       bool
	handlerDone      bool
	trailers         []string

	pre  *[bufferBeforeChunkingSize]byte // the body's buffer, from prePool while the response holds bytes
	n    int                             // bytes held in pre
	perr error                           // the held bytes' writer's sticky error

	clenBuf   [20]byte
	statusBuf [3]byte
}

// bufferBeforeChunkingSize is net/http's: a body this short, ended
// without a Flush, gets a Content-Length.
const bufferBeforeChunkingSize = 2048

var crlf = []byte("\r\n")

func (w *response) Header() http.Header {
	if w.handlerHeader == nil {
		w.handlerHeader = w.c.header()
	}
	if w.header == nil && w.wroteHeader && !w.headerSent {
		w.header = w.handlerHeader.Clone()
	}
	w.calledHeader = true
	return w.handlerHeader
}

// AfterCancel arranges to call f once the loop cancels the request's
// context (its client went away, the response could not be written, or
// the request is over), after the context's Err is set, as
// context.AfterFunc(r.Context(), f) does; stop unregisters f, reporting
// whether it did so before f was called. It saves AfterFunc's
// allocations (a context, the request context's children map and done
// channel) for the one function a request's handler registers at a time;
// another, or one after the context's end, gets context.AfterFunc. Two
// differences: f runs on the goroutine that cancels (it must not block),
// and stop must be called before the handler returns (it is the
// connection's, not the request's).
func (w *response) AfterCancel(f func()) (stop func() bool) {
	c := w.c
	c.amu.Lock()
	if c.after != nil || c.ended {
		c.amu.Unlock()
		return context.AfterFunc(w.req.Context(), f)
	}
	c.after = f
	c.amu.Unlock()
	return c.stopAfter
}

// SetHeader makes h the response's header, in place of what Header
// returned so far (empty: it reports false, doing nothing, for a header
// with fields in it, and after WriteHeader), and spares WriteHeader its
// copy of it. In exchange, the caller changes h after WriteHeader only
// once the header is out (Flush, or the handler's end), as for trailers.
// A proxy answering with its upstream's header map saves a copy of
// every field into Header's map and a second at WriteHeader.
func (w *response) SetHeader(h http.Header) bool {
	if w.wroteHeader || len(w.handlerHeader) > 0 {
		return false
	}
	w.handlerHeader, w.calledHeader, w.setHeader = h, true, true
	return true
}

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		caller := relevantCaller()
		w.c.s.logf("http: superfluous response.WriteHeader call from %s (%s:%d)", caller.Function, path.Base(caller.File), caller.Line)
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	// Informational answers (103 Early Hints) go at once; 101 takes the
	// final path, as in net/http.
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		if w.handlerDone {
			return
		}
		bw := w.c.bw
		writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code, w.statusBuf[:])
		w.raw.write(bw, w.handlerHeader, field.ContentLength)
		_ = w.handlerHeader.WriteSubset(bw, excludedHeadersNoBody)
		_, _ = bw.Write(crlf)
		_ = bw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if w.calledHeader && w.header == nil {
		if w.setHeader {
			w.header = w.handlerHeader // the caller's promise: SetHeader
		} else {
			w.header = w.handlerHeader.Clone()
		}
	}
	if cl := field.Get(w.handlerHeader, "Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.c.s.logf("http: invalid Content-Length of %q", cl)
			if !w.setHeader {
				// net/http deletes it from the handler's map, not from
				// the copy it sends; without a copy (SetHeader,
				// SetRawHeader) the field stays, as there.
				w.handlerHeader.Del("Content-Length")
			}
		}
	} else if w.raw.hasField(w.handlerHeader, field.ContentLength, "Content-Length") {
		w.contentLength = w.raw.cl
	}
}

func (w *response) Write(p []byte) (int, error) {
	if w.handlerDone {
		return 0, errAfterHandler
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	return w.bufWrite(p)
}

func (w *response) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

// errAfterHandler is what a write or flush gets once its handler has
// returned (a goroutine the handler left behind): the connection's
// writer is by then back in its pool, or the next response's. Using a
// ResponseWriter after its handler returns is not allowed (net/http's
// rule too); this keeps it from crashing the process or another answer.
var errAfterHandler = errors.New("leanhttp: write after the handler returned")

var prePool = sync.Pool{New: func() any { return new([bufferBeforeChunkingSize]byte) }}

// bufWrite is bufio.Writer.Write over the 2 KiB buffer pre, in front of
// chunkWrite.
func (w *response) bufWrite(p []byte) (nn int, err error) {
	if w.pre == nil {
		w.pre = prePool.Get().(*[bufferBeforeChunkingSize]byte)
	}
	buf := w.pre[:]
	for len(p) > len(buf)-w.n && w.perr == nil {
		var n int
		if w.n == 0 {
			// A large write into an empty buffer goes straight through.
			n, w.perr = w.chunkWrite(p)
		} else {
			n = copy(buf[w.n:], p)
			w.n += n
			w.flushPre()
		}
		nn += n
		p = p[n:]
	}
	if w.perr != nil {
		return nn, w.perr
	}
	n := copy(buf[w.n:], p)
	w.n += n
	return nn + n, nil
}

// flushPre passes the held bytes on to chunkWrite.
func (w *response) flushPre() error {
	if w.perr != nil {
		return w.perr
	}
	if w.n == 0 {
		return nil
	}
	n, err := w.chunkWrite(w.pre[:w.n])
	if n < w.n && err == nil {
		err = errShortWrite
	}
	if err != nil {
		if n > 0 && n < w.n {
			copy(w.pre[0:w.n-n], w.pre[n:w.n])
		}
		w.n -= n
		w.perr = err
		return err
	}
	w.n = 0
	return nil
}

var errShortWrite = fmt.Errorf("short write")

// chunkWrite is net/http's chunkWriter.Write: the header on the first
// bytes, then the bytes, framed as a chunk when chunking.
func (w *response) chunkWrite(p []byte) (n int, err error) {
	if !w.headerSent {
		w.writeHeader(p)
	}
	if w.req.Method == http.MethodHead {
		return len(p), nil // eaten
	}
	bw := w.c.bw
	if w.chunking {
		_, err = bw.Write(strconv.AppendInt(w.clenBuf[:0], int64(len(p)), 16))
		if err == nil {
			_, err = bw.Write(crlf)
		}
		if err != nil {
			w.c.rwc.Close()
			return 0, err
		}
	}
	n, err = bw.Write(p)
	if w.chunking && err == nil {
		_, err = bw.Write(crlf)
	}
	if err != nil {
		w.c.rwc.Close()
	}
	return n, err
}

// Flush sends what is held: the header, and the body so far.
func (w *response) Flush() { _ = w.FlushError() }

func (w *response) FlushError() error {
	if w.handlerDone {
		return errAfterHandler
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.flushPre()
	if !w.headerSent {
		w.writeHeader(nil)
	}
	if e2 := w.c.bw.Flush(); err == nil {
		err = e2
	}
	return err
}

// EnableFullDuplex: the loop never drains a request's body before its
// handler returns (endBody).
func (w *response) EnableFullDuplex() error {
	w.fullDuplex = true
	return nil
}

// SetReadDeadline and SetWriteDeadline are the connection's, as
// http.ResponseController expects.
func (w *response) SetReadDeadline(t time.Time) error {
	w.c.rdl = aLongTimeAgo // the loop sets its own again before its next read
	return w.c.rwc.SetReadDeadline(t)
}

func (w *response) SetWriteDeadline(t time.Time) error {
	w.c.wdl = true // cleared after the request, as net/http does
	return w.c.rwc.SetWriteDeadline(t)
}

// finish ends the response after the handler returned: net/http's
// finishRequest.
func (w *response) finish() {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.flushPre()
	if w.pre != nil {
		prePool.Put(w.pre)
		w.pre = nil
	}
	if !w.headerSent {
		w.writeHeader(nil)
	}
	bw := w.c.bw
	if w.chunking {
		_, _ = bw.WriteString("0\r\n")
		if trailers := w.finalTrailers(); trailers != nil {
			_ = trailers.Write(bw)
		}
		_, _ = bw.WriteString("\r\n")
	}
	_ = bw.Flush()
}

// shouldReuseConnection is net/http's; the loop also closes a connection
// whose request's body it could not read to its end (endBody).
func (w *response) shouldReuseConnection() bool {
	if w.closeAfterReply {
		return false
	}
	if w.req.Method != http.MethodHead && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written {
		return false // did not write what it declared: out of sync
	}
	return w.c.werr == nil
}

func (w *response) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

func (w *response) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) {
		return
	}
	w.trailers = append(w.trailers, k)
}

// extraHeader is net/http's: the headers writeHeader adds.
type extraHeader struct {
	contentType      string
	connection       string
	transferEncoding string
	date             []byte
	contentLength    []byte
}

func (h extraHeader) write(w *bufio.Writer) {
	if h.date != nil {
		_, _ = w.WriteString("Date: ")
		_, _ = w.Write(h.date)
		_, _ = w.Write(crlf)
	}
	if h.contentLength != nil {
		_, _ = w.WriteString("Content-Length: ")
		_, _ = w.Write(h.contentLength)
		_, _ = w.Write(crlf)
	}
	for i, v := range [...]string{h.contentType, h.connection, h.transferEncoding} {
		if v != "" {
			_, _ = w.WriteString(extraHeaderKeys[i])
			_, _ = w.WriteString(": ")
			_, _ = w.WriteString(v)
			_, _ = w.Write(crlf)
		}
	}
}

var extraHeaderKeys = [...]string{"Content-Type", "Connection", "Transfer-Encoding"}

// writeHeader finalises the header and writes it into the connection's
// buffer: net/http's chunkWriter.writeHeader, line for line, less what
// only concerns request bodies the loop does not serve (Expect, chunked,
// larger than MaxBody). p is the first chunk of the body.
func (w *response) writeHeader(p []byte) {
	if w.headerSent {
		return
	}
	w.headerSent = true
	keepAlivesEnabled := !w.c.s.shuttingDown()
	isHEAD := w.req.Method == http.MethodHead

	header := w.header
	owned := header != nil
	if !owned {
		header = w.handlerHeader
	}
	var excludeHeader map[string]bool
	delHeader := func(key string) { // key: a canonical constant
		w.raw.drop |= keyField(key)
		if owned {
			delete(header, key) // Header.Del would canonicalize it again
			return
		}
		if _, ok := header[key]; !ok {
			return
		}
		if excludeHeader == nil {
			excludeHeader = make(map[string]bool)
		}
		excludeHeader[key] = true
	}
	var setHeader extraHeader

	// The fake "Trailer:foo" keys are not headers.
	trailers := false
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if excludeHeader == nil {
				excludeHeader = make(map[string]bool)
			}
			excludeHeader[k] = true
			trailers = true
		}
	}
	for _, v := range w.header["Trailer"] {
		trailers = true
		foreachHeaderElement(v, w.declareTrailer)
	}

	te := field.Get(header, "Transfer-Encoding")
	hasTE := te != ""

	// A handler done with a body that fit the buffer: its length.
	rawCL := w.raw.hasField(header, field.ContentLength, "Content-Length")
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !hhas(header, "Content-Length") && !rawCL && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		setHeader.contentLength = strconv.AppendInt(w.clenBuf[:0], int64(len(p)), 10)
	}

	// HTTP/1.0 with keep-alive and a length: keep-alive.
	if w.wants10KeepAlive && keepAlivesEnabled {
		sentLength := field.Get(header, "Content-Length") != "" || rawCL
		if sentLength && field.Get(header, "Connection") == "keep-alive" {
			w.closeAfterReply = false
		}
	}

	hasCL := w.contentLength != -1

	if w.wants10KeepAlive && (isHEAD || hasCL || !bodyAllowedForStatus(w.status)) {
		if _, connectionHeaderSet := header["Connection"]; !connectionHeaderSet {
			setHeader.connection = "keep-alive"
		}
	} else if !w.req.ProtoAtLeast(1, 1) || w.wantsClose {
		w.closeAfterReply = true
	}

	if field.Get(header, "Connection") == "close" || !keepAlivesEnabled {
		w.closeAfterReply = true
	}

	// What the handler left of the request's body, unless it asked for
	// full duplex, is read and dropped before the response, as net/http
	// does: a client may send its whole request before it reads the
	// answer. A body that does not come (within ReadHeaderTimeout: where
	// net/http would wait without a ReadTimeout) closes the connection
	// after it.
	if b := w.c.body; b != nil && !w.closeAfterReply && !w.fullDuplex && !b.dropBeforeAnswer() {
		w.closeAfterReply = true
	}

	code := w.status
	if bodyAllowedForStatus(code) {
		_, haveType := header["Content-Type"]
		haveType = haveType || w.raw.hasField(header, field.ContentType, "Content-Type")
		hasCE := field.Get(header, "Content-Encoding") != "" || w.raw.hasField(header, field.ContentEncoding, "Content-Encoding")
		// As net/http: a nil Content-Type in the map suppresses it,
		// which the sidecar's proxies put there (outbound.NoSniff).
		if !hasCE && !haveType && !hasTE && len(p) > 0 {
			setHeader.contentType = http.DetectContentType(p)
		}
	} else {
		for _, k := range suppressedHeaders(code) {
			delHeader(k)
		}
	}

	if !hhas(header, "Date") && !w.raw.hasField(header, field.Date, "Date") {
		setHeader.date = w.c.date()
	}

	if hasCL && hasTE && te != "identity" {
		w.c.s.logf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, w.contentLength)
		delHeader("Content-Length")
		hasCL = false
	}

	if isHEAD || !bodyAllowedForStatus(code) || code == http.StatusNoContent {
		delHeader("Transfer-Encoding")
	} else if hasCL {
		delHeader("Transfer-Encoding")
	} else if w.req.ProtoAtLeast(1, 1) {
		if hasTE && te == "identity" {
			// No length, no chunking: the end of the connection ends it.
			w.chunking = false
			w.closeAfterReply = true
			delHeader("Transfer-Encoding")
		} else {
			w.chunking = true
			setHeader.transferEncoding = "chunked"
			if hasTE && te == "chunked" {
				delHeader("Transfer-Encoding") // written below
			}
		}
	} else {
		// HTTP/1.0 without a length: the end of the connection ends it.
		w.closeAfterReply = true
		delHeader("Transfer-Encoding")
	}

	if w.chunking {
		delHeader("Content-Length")
	}

	delConnectionHeader := w.closeAfterReply &&
		(!keepAlivesEnabled || !hasToken(field.Get(w.header, "Connection"), "close")) &&
		!isProtocolSwitchResponse(w.status, header)
	if delConnectionHeader {
		delHeader("Connection")
		if w.req.ProtoAtLeast(1, 1) {
			setHeader.connection = "close"
		}
	}

	bw := w.c.bw
	writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code, w.statusBuf[:])
	w.raw.write(bw, header, 0)
	writeFields(bw, w.header, excludeHeader)
	setHeader.write(bw)
	_, _ = bw.Write(crlf)
}

// writeFields writes the fields of h not in exclude as h.WriteSubset
// does (keys sorted, an invalid name dropped, a value's CR and LF made
// spaces and its ends trimmed), without the pooled sorter and the sort
// through an interface that cost a tenth of the loop's own CPU: a proxy's
// answer has few fields in its map, most often one (its other fields
// come as lines, SetRawHeader). TestWriteFields and FuzzWriteFields hold
// it to WriteSubset.
func writeFields(bw *bufio.Writer, h http.Header, exclude map[string]bool) {
	var room [8]string
	keys := room[:0]
	for k := range h {
		if exclude[k] {
			continue
		}
		if len(keys) == len(room) {
			_ = h.WriteSubset(bw, exclude)
			return
		}
		keys = append(keys, k)
	}
	if len(keys) > 1 {
		slices.Sort(keys)
	}
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range h[k] {
			if needsCleaning(v) {
				v = textproto.TrimString(newlineToSpace.Replace(v))
			}
			_, _ = bw.WriteString(k)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(v)
			_, _ = bw.WriteString("\r\n")
		}
	}
}

// newlineToSpace is net/http's replacer of a header value's line breaks.
var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// needsCleaning reports whether WriteSubset would change v: a line break
// in it, or a space or tab at an end.
func needsCleaning(v string) bool {
	if v == "" {
		return false
	}
	return isSpace(v[0]) || isSpace(v[len(v)-1]) || field.HasLineBreak(v)
}

func writeStatusLine(bw *bufio.Writer, is11 bool, code int, scratch []byte) {
	if is11 && code == http.StatusOK {
		_, _ = bw.WriteString("HTTP/1.1 200 OK\r\n") // most answers: one copy
		return
	}
	if is11 {
		_, _ = bw.WriteString("HTTP/1.1 ")
	} else {
		_, _ = bw.WriteString("HTTP/1.0 ")
	}
	if text := http.StatusText(code); text != "" {
		_, _ = bw.Write(strconv.AppendInt(scratch[:0], int64(code), 10))
		_ = bw.WriteByte(' ')
		_, _ = bw.WriteString(text)
		_, _ = bw.WriteString("\r\n")
	} else {
		fmt.Fprintf(bw, "%03d status code %d\r\n", code, code)
	}
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204:
		return false
	case status == 304:
		return false
	}
	return true
}

var (
	suppressedHeaders304    = []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
	suppressedHeadersNoBody = []string{"Content-Length", "Transfer-Encoding"}
	excludedHeadersNoBody   = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}
)

func suppressedHeaders(status int) []string {
	switch {
	case status == 304:
		return suppressedHeaders304
	case !bodyAllowedForStatus(status):
		return suppressedHeadersNoBody
	}
	return nil
}

func isProtocolSwitchResponse(code int, h http.Header) bool {
	return code == http.StatusSwitchingProtocols && field.Get(h, "Upgrade") != "" &&
		httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade")
}

// hhas is net/http's Header.has: the key as given, already canonical
// (field.Get is its Header.get).
func hhas(h http.Header, key string) bool {
	_, ok := h[key]
	return ok
}

// hasToken is net/http's: whether token is among v's comma-separated
// elements, ignoring ASCII case.
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if endPos := sp + len(token); endPos != len(v) && !isTokenBoundary(v[endPos]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

func foreachHeaderElement(v string, fn func(string)) {
	v = strings.Trim(v, " \t\r\n")
	if v == "" {
		return
	}
	if !strings.Contains(v, ",") {
		fn(v)
		return
	}
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.Trim(f, " \t\r\n"); f != "" {
			fn(f)
		}
	}
}

// relevantCaller is the first caller outside net/http and this package,
// for the log of a superfluous WriteHeader.
func relevantCaller() runtime.Frame {
	pc := make([]uintptr, 16)
	n := runtime.Callers(1, pc)
	frames := runtime.CallersFrames(pc[:n])
	var frame runtime.Frame
	for {
		f, more := frames.Next()
		frame = f
		if !strings.HasPrefix(f.Function, "net/http.") && !strings.Contains(f.Function, "/leanhttp.") {
			return f
		}
		if !more {
			break
		}
	}
	return frame
}
