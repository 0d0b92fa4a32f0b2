package outbound

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"golang.org/x/net/http/httpguts"
)

// The fast transport's wire format: the request head it writes and the
// response head it reads for the common exchange, each equal to what
// net/http writes and reads (wire_test.go compares them on every input
// its fuzz targets make), without what net/http's generality costs per
// request: fmt, a sorter from a pool, a textproto.Reader, one string per
// header value, a LimitReader and a body wrapper. Anything outside the
// common case is left to net/http itself.

// defaultUserAgent is what net/http's Request.Write sends for a request
// with no User-Agent header (a nil or absent one; an empty one sends none).
const defaultUserAgent = "Go-http-client/1.1"

// reqWriteExclude are the headers Request.Write writes from the request's
// fields, not from its Header map.
func reqWriteExclude(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// headerField is a header's key and values, sorted by key for the wire
// as they came out of the map: no second look-up of each key.
type headerField struct {
	key    string
	values []string
}

// writeRequestHead writes the head of req as req.Write(b) would,
// sorting header fields in fields (scratch, returned for reuse): a
// bodiless request, or one whose body of req.ContentLength bytes the
// caller writes after the head. It reports false, having written nothing, for a request it
// leaves to req.Write: an opaque URL, a host to convert to Punycode, a
// header value to sanitize, a Close or TransferEncoding field.
//
// trace are the try's trace fields (telemetry.Fields), written as if
// telemetry.SetFields had put them in req's header map: in their sorted
// places, the app's fields they replace left out. Not in the map, they
// cost no map writes and deletes, sorting or checks (ours are valid).
func writeRequestHead(b *bytes.Buffer, req *http.Request, fields []headerField, trace []telemetry.Field) ([]headerField, bool) {
	// Appended to b's free room and written once: a WriteString per
	// piece cost twice the appends (about twenty pieces a head).
	w, ok := appendRequestLine(b.AvailableBuffer(), req)
	if !ok {
		return fields, false
	}
	ua, hasUA := defaultUserAgent, false
	if v, ok := req.Header["User-Agent"]; ok {
		ua, hasUA = "", true
		if len(v) > 0 {
			ua = v[0]
		}
	}
	fields = fields[:0]
	for k, vv := range req.Header {
		if reqWriteExclude(k) || trace != nil && telemetry.Replaces(trace, k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			continue // Request.Write drops it
		}
		for _, v := range vv {
			if field.HasLineBreak(v) {
				clear(fields)
				return fields, false
			}
		}
		fields = append(fields, headerField{k, vv})
	}
	if hasUA && field.HasLineBreak(ua) {
		clear(fields)
		return fields, false
	}
	slices.SortFunc(fields, func(a, b headerField) int { return strings.Compare(a.key, b.key) })

	if ua != "" { // a value of spaces goes, trimmed to nothing
		w = append(w, "User-Agent: "...)
		w = append(w, textproto.TrimString(ua)...)
		w = append(w, "\r\n"...)
	}
	if sendsLength(req) {
		w = appendLength(w, req)
	}
	for _, f := range fields {
		for len(trace) > 0 && trace[0].Key < f.key {
			w = appendField(w, trace[0].Key, trace[0].Value)
			trace = trace[1:]
		}
		for _, v := range f.values {
			w = appendField(w, f.key, v)
		}
	}
	for _, f := range trace {
		w = appendField(w, f.Key, f.Value)
	}
	w = append(w, "\r\n"...)
	b.Write(w)
	clear(fields) // no request's values outlive it (here, and where it declines)
	return fields, true
}

// sendsLength reports whether Request.Write sends a Content-Length
// field for req, a request with a body of req.ContentLength bytes or
// none: for a body, and for none where the method's servers expect one
// (net/http's transferWriter.shouldSendContentLength).
func sendsLength(req *http.Request) bool {
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		return true
	}
	return req.ContentLength > 0
}

// appendRequestLine appends the request line of req and its Host line,
// as req.Write writes them; ok is false for a request it leaves to
// req.Write (writeRequestHead): one of unknown length among them.
func appendRequestLine(w []byte, req *http.Request) (_ []byte, ok bool) {
	if req.URL == nil || req.URL.Opaque != "" || req.Close || len(req.TransferEncoding) > 0 || req.Trailer != nil ||
		req.ContentLength < 0 {
		return w, false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !isASCII(host) {
		return w, false
	}
	if !httpguts.ValidHostHeader(host) {
		host = "" // as Request.Write does: an invalid Host is not sent
	}
	if strings.HasPrefix(host, "[") && strings.Contains(host, "%") {
		return w, false // a zone to remove
	}
	path := req.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if ctlByte(path) || ctlByte(req.URL.RawQuery) {
		return w, false // Request.Write's error
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	w = append(w, method...)
	w = append(w, ' ')
	w = append(w, path...)
	if req.URL.ForceQuery || req.URL.RawQuery != "" {
		w = append(w, '?')
		w = append(w, req.URL.RawQuery...)
	}
	w = append(w, " HTTP/1.1\r\nHost: "...)
	w = append(w, host...)
	return append(w, "\r\n"...), true
}

// writeRequestLines writes the head of req, a bodiless request, as
// writeRequestHead writes it once toOutbound has made the app's header
// map the upstream's, from the app's lines (sc.app) instead of the map:
// each line as it came, in the app's order, but those toOutbound drops
// (the hop-by-hop fields and those Connection lists), the request ID's
// and the trace fields the try's replace (telemetry.Replaces), and the
// fields the sidecar adds (Via, the request ID, the trace fields, Te)
// in their sorted places among them (where writeRequestHead puts them
// when the app's lines are sorted, as Go's client sends them). Fields
// of one name keep their order. It reports false, having written
// nothing, where writeRequestHead leaves the head to req.Write.
//
// The lines are the ones the app's header map was made of
// (leanhttp.response.RequestLines): the scan checked every byte, and each
// is "Name: value" as the map writes back, so no line is checked, split
// into strings, sorted or canonicalized again.
func writeRequestLines(b *bytes.Buffer, req *http.Request, sc *respScratch) bool {
	w, ok := appendRequestLine(b.AvailableBuffer(), req)
	if !ok {
		return false
	}
	text := sc.app.Text
	// The request's Content-Length, when Request.Write sends one: in the
	// app's line's place (Go's client writes it after User-Agent, where
	// writeRequestHead does), else after the app's User-Agent, else
	// first. Its value is req's, which the server read from that line.
	length := sendsLength(req)
	var appLength, appUA bool
	if length {
		appLength, appUA = hasLine(text, "Content-Length"), hasLine(text, "User-Agent")
		if !appLength && !appUA {
			w = appendLength(w, req)
			length = false
		}
	}
	// The sidecar's Via entry goes after the app's last one, or in its
	// sorted place among the additions if the app sent none on.
	via := sc.app.ViaEnd
	if via > 0 && sc.listedHas("Via") {
		via = 0
	}
	var room [9]telemetry.Field
	adds := sc.additions(&room, via == 0)
	ua := false
	for rest := text; rest != ""; {
		nl := strings.IndexByte(rest, '\n')
		line := rest[:nl+1]
		rest = rest[nl+1:]
		name := line[:strings.IndexByte(line, ':')]
		switch name {
		case "Host":
			continue // req's
		case "Content-Length":
			if length {
				w = appendLength(w, req)
				length = false
			}
			continue
		case "User-Agent":
			// Request.Write sends the first value, if not empty, and
			// none of the others.
			if !ua && len(line) > len("User-Agent: \r\n") && !sc.listedHas(name) {
				w = append(w, line...)
			}
			ua = true
			if length && !appLength {
				w = appendLength(w, req)
				length = false
			}
			continue
		}
		for len(adds) > 0 && adds[0].Key < name {
			w = appendField(w, adds[0].Key, adds[0].Value)
			adds = adds[1:]
		}
		if hopHeader(name) || name == requestIDKey || sc.trace != nil && telemetry.Replaces(sc.trace, name) || sc.listedHas(name) {
			continue
		}
		w = append(w, line...)
		if via > 0 && len(text)-len(rest) == via { // the app's last Via line
			w = appendField(w, "Via", sc.hop.value[0])
		}
	}
	for _, f := range adds {
		w = appendField(w, f.Key, f.Value)
	}
	w = append(w, "\r\n"...)
	b.Write(w)
	return true
}

// appendLength appends req's Content-Length line.
func appendLength(w []byte, req *http.Request) []byte {
	w = append(w, "Content-Length: "...)
	w = strconv.AppendInt(w, req.ContentLength, 10)
	return append(w, "\r\n"...)
}

// hasLine reports whether the lines text (each "Name: value\r\n") hold
// one named name.
func hasLine(text, name string) bool {
	for rest := text; len(rest) > len(name); {
		if rest[len(name)] == ':' && rest[:len(name)] == name {
			return true
		}
		nl := strings.IndexByte(rest, '\n')
		if nl < 0 {
			return false
		}
		rest = rest[nl+1:]
	}
	return false
}

// hopHeader reports whether name is one of hopHeaders.
func hopHeader(name string) bool {
	switch name {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

func appendField(w []byte, k, v string) []byte {
	w = append(w, k...)
	w = append(w, ": "...)
	w = append(w, textproto.TrimString(v)...)
	return append(w, "\r\n"...)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func ctlByte(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}

// respScratch is a request's room for its response on the fast path:
// the response and its head's lines. It is the request's state's
// (reqState.wire), which the lean loop lends request after request, the
// lines' room kept: two allocations fewer per request. A try's response
// is done with (closed) before the next try reads its own into it
// (forwarder.RoundTrip).
type respScratch struct {
	fr    fastResponse
	lines []byte
	// facts are the lines' facts, noted as they were checked, for
	// leanhttp's SetCheckedRawHeader.
	facts field.Facts
	// hasID says the head has an X-Request-Id line, spelled so (the only
	// spelling lines take), for withRequestID to drop.
	hasID bool
	// eventStream says its first Content-Type line, spelled so, is
	// server-sent events': the answer is then streamed.
	eventStream bool
	// trace are the try's trace fields, written with its head, not put
	// in its header map (writeRequestHead), unless the head is left to
	// Request.Write, which gets them in the map; nil: none, or put in the
	// map by Inject.
	trace     []telemetry.Field
	traceRoom [5]telemetry.Field
	// body is the try's request body, whole, written right after its
	// head (sendable); nil: none.
	body []byte

	// lined says the try's head is written from the app's lines, app
	// (writeRequestLines), with toOutbound's changes: its header map was
	// left as the server made it. unline makes them in the map for a
	// try that writes the map after all.
	lined bool
	// app are the app's request lines, if appOK: the lean loop gave
	// them (serve).
	app   field.RequestLines
	appOK bool
	// listed are the names the app's Connection lists that toOutbound
	// drops (not the Forwarded ones); te says its Te asks for trailers.
	listed     []string
	listedRoom [4]string
	te         bool
	hop        *hop     // this sidecar's Via entry
	id         []string // the request ID, as a map holds it (reqState.idValue)
}

// line readies sc to write the request's heads from the app's lines
// (app), whose header map is hdr: what toOutbound reads of the map.
func (sc *respScratch) line(hdr http.Header, p *hop, id []string) {
	sc.lined, sc.hop, sc.id = true, p, id
	lines := sc.app
	sc.listed = nil
	if lines.Connection {
		// More than four: a new array.
		sc.listed = slices.DeleteFunc(connectionListed(hdr["Connection"], sc.listedRoom[:0]), isForwardedHeader)
	}
	sc.te = lines.Te && httpguts.HeaderValuesContainsToken(hdr["Te"], "trailers")
}

// unline makes toOutbound's changes in the request's header map hdr if
// its heads were to be written from the app's lines: from now on they
// are the map's. The request ID goes in after toOutbound, as try puts it
// in a map not lined, even one the app's Connection lists.
func (sc *respScratch) unline(hdr http.Header) {
	if sc.lined {
		sc.lined = false
		toOutbound(hdr, sc.hop)
		hdr[requestIDKey] = sc.id
	}
}

func (sc *respScratch) listedHas(name string) bool {
	return len(sc.listed) > 0 && slices.Contains(sc.listed, name)
}

// additions are the fields writeRequestLines adds in their sorted
// places, sorted by name, in room: the try's trace fields (sorted
// already), Te, Via (if via) and the request ID, merged by appends in
// the order of those three names (an insert per field was a tenth of
// the lines' writing).
func (sc *respScratch) additions(room *[9]telemetry.Field, via bool) []telemetry.Field {
	fs, tr := room[:0], sc.trace
	below := func(key string) {
		for len(tr) > 0 && tr[0].Key < key {
			fs = append(fs, tr[0])
			tr = tr[1:]
		}
	}
	below("Te")
	if sc.te {
		fs = append(fs, telemetry.Field{Key: "Te", Value: "trailers"})
	}
	below("Via")
	if via {
		fs = append(fs, telemetry.Field{Key: "Via", Value: sc.hop.value[0]})
	}
	below(requestIDKey)
	fs = append(fs, telemetry.Field{Key: requestIDKey, Value: sc.id[0]})
	return append(fs, tr...)
}

// fastResponse is a response read by readResponseHead, with its body.
type fastResponse struct {
	http.Response
	body fastBody
	lb   lengthBody
}

// readResponseHead reads the head of the final response to req, a
// bodiless request, from br as http.ReadResponse would, when the whole
// head is in br's buffer and is of the common kind: HTTP/1.1, a final
// status, a Content-Length (or a response with no body), no Connection,
// Transfer-Encoding, Trailer or Pragma header, and no header line that
// net/http would reject or rewrite. For any other head it reads nothing
// and reports nil: the caller reads it with http.ReadResponse. The body's
// length is left in the returned response's ContentLength; its Body is
// unset.
//
// With raw, a head whose fields can go on to the app as they are (names
// as net/http spells them, no hop-by-hop field) is not made a header
// map: its fields come back as lines, "Name: value\r\n" each, in lines,
// and Header is nil. That saves the map, a string per value and, on the
// way out, the sort (leanhttp's SetRawHeader).
//
// The response and the lines are sc's, made over.
func readResponseHead(br *bufio.Reader, req *http.Request, raw bool, sc *respScratch) (fr *fastResponse, lines []byte) {
	buf, _ := br.Peek(br.Buffered())
	// The status line: "HTTP/1.1 200 OK".
	nl := bytes.IndexByte(buf, '\n')
	if nl < 1 || buf[nl-1] != '\r' {
		return nil, nil
	}
	line := buf[:nl-1]
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return nil, nil
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return nil, nil
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 {
		return nil, nil // informational: http.ReadResponse, then the next head
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil // a bare CR: net/http's reading of it is its own
	}
	// Every line checked first, as net/http would read it, in one pass
	// that finds the head's end: a line at a time, each ending in CRLF
	// (a bare LF, or a head not all in the buffer, is net/http's).
	start := nl + 1
	rest := buf[start:]
	n := 0
	cl := int64(-1)
	spelled := true // every line "Name: value" already, as lines would be
	sc.facts, sc.hasID, sc.eventStream = field.Facts{}, false, false
	sawType := false
	for {
		e := bytes.IndexByte(rest, '\n')
		if e < 1 || rest[e-1] != '\r' {
			return nil, nil
		}
		if e == 1 {
			break // the blank line
		}
		l := rest[:e-1]
		rest = rest[e+1:]
		n++
		colon, canonical := field.Name(l)
		if colon < 0 {
			return nil, nil // no name, or not a token
		}
		key, sent := l[:colon], l[colon+1:]
		v := field.TrimOWS(sent)
		if spelled && (len(sent) != len(v)+1 || sent[0] != ' ') {
			spelled = false
		}
		if !field.ValidValue(v) { // a bare CR too
			return nil, nil
		}
		switch nameOf(key) {
		case declined:
			return nil, nil
		case contentLength:
			length, ok := field.Length(v)
			if cl >= 0 || !ok {
				return nil, nil
			}
			cl = length
		case hopField:
			raw = false
		case requestIDLine:
			sc.hasID = true
		case contentTypeLine:
			if !sawType {
				sawType, sc.eventStream = true, eventStreamValue(v)
			}
		}
		if !canonical || raw && !sc.facts.Note(key, v) {
			raw = false
		}
	}
	end := len(buf) - len(rest) + 2 // past the blank line
	fields := buf[start : end-2]
	fr = &sc.fr
	*fr = fastResponse{}
	resp := &fr.Response
	resp.StatusCode = code
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	resp.Request = req
	switch {
	case req.Method == http.MethodHead:
		resp.ContentLength = cl
		resp.Body = http.NoBody
	case code == http.StatusNoContent || code == http.StatusNotModified:
		resp.ContentLength = 0
		resp.Body = http.NoBody
	case cl < 0:
		return nil, nil // a body to the connection's end: http.ReadResponse
	default:
		resp.ContentLength = cl
		if cl == 0 {
			resp.Body = http.NoBody
		}
	}
	if raw {
		resp.Status = statusOf(code, line[9:])
		lines = spellLines(sc.lines[:0], fields, n, spelled)
		if lines == nil {
			// No fields, and no room yet: lines still, not the header
			// map's nil (fastProxy tells them apart so).
			lines = []byte{}
		}
		sc.lines = lines
	} else {
		s := string(buf[:end-2]) // one string: the values are slices of it
		resp.Status = s[9:len(line)]
		h := make(http.Header, n)
		vals := make([]string, n)
		off := nl + 1
		for i := 0; i < n; i++ {
			e := off + strings.Index(s[off:], "\r\n")
			key, v, _ := strings.Cut(s[off:e], ":")
			off = e + 2
			key = textproto.CanonicalMIMEHeaderKey(key)
			vals[i] = strings.Trim(v, " \t")
			if vv, ok := h[key]; ok {
				h[key] = append(vv, vals[i])
			} else {
				h[key] = vals[i : i+1 : i+1]
			}
		}
		resp.Header = h
	}
	_, _ = br.Discard(end)
	return fr, lines
}

// spellLines appends to lines the n fields as lines "Name: value\r\n",
// each value trimmed; spelled says they are so already, and are copied
// whole.
func spellLines(lines, fields []byte, n int, spelled bool) []byte {
	if spelled {
		return append(lines, fields...) // the common case: one copy
	}
	lines = slices.Grow(lines, len(fields)+n) // room for a space after each colon
	for rest := fields; len(rest) > 0; {
		e := bytes.Index(rest, crlf)
		key, v, _ := bytes.Cut(rest[:e], colon)
		rest = rest[e+2:]
		lines = append(lines, key...)
		lines = append(lines, ": "...)
		lines = append(lines, field.TrimOWS(v)...)
		lines = append(lines, "\r\n"...)
	}
	return lines
}

// statusOf is resp.Status for a status line's code and what follows it:
// a constant for the status lines net/http itself writes.
func statusOf(code int, status []byte) string {
	if code < len(statusLines) {
		if s := statusLines[code]; s != "" && string(status) == s {
			return s
		}
	}
	return string(status)
}

// statusLines are "200 OK" and the like, by code.
var statusLines = func() (lines [600]string) {
	for code := range lines {
		if text := http.StatusText(code); text != "" {
			lines[code] = strconv.Itoa(code) + " " + text
		}
	}
	return lines
}()

// respName is what readResponseHead makes of a field's name.
type respName uint8

const (
	plainName       respName = iota
	declined                 // Connection, Transfer-Encoding, Trailer, Pragma, in any case: http.ReadResponse's
	contentLength            // in any case
	hopField                 // another hop-by-hop name (hopHeaders), spelled canonically: kept out of lines
	requestIDLine            // X-Request-Id, spelled so: the one lines may hold, which the answer's replaces
	contentTypeLine          // Content-Type, spelled so: whether the answer is an event stream
)

// nameOf is key's respName: by its length first, then one or two
// comparisons, where a look at every name it knows cost a fifth of the
// head's parse.
func nameOf(key []byte) respName {
	switch len(key) {
	case 2:
		if string(key) == "Te" {
			return hopField
		}
	case 6:
		if field.EqualFold(key, "Pragma") {
			return declined
		}
	case 7:
		if field.EqualFold(key, "Trailer") {
			return declined
		}
		if string(key) == "Upgrade" {
			return hopField
		}
	case 10:
		if field.EqualFold(key, "Connection") {
			return declined
		}
		if string(key) == "Keep-Alive" {
			return hopField
		}
	case 12:
		// requestIDKey is a variable: a switch on it made a string of key.
		if string(key) == "Content-Type" {
			return contentTypeLine
		}
		if string(key) == requestIDKey {
			return requestIDLine
		}
	case 14:
		if field.EqualFold(key, "Content-Length") {
			return contentLength
		}
	case 16:
		if string(key) == "Proxy-Connection" {
			return hopField
		}
	case 17:
		if field.EqualFold(key, "Transfer-Encoding") {
			return declined
		}
	case 18:
		if string(key) == "Proxy-Authenticate" {
			return hopField
		}
	case 19:
		if string(key) == "Proxy-Authorization" {
			return hopField
		}
	}
	return plainName
}

var (
	crlf  = []byte("\r\n")
	colon = []byte(":")
)

// lengthBody reads a response body of a known length from br: io.EOF
// with the last byte, io.ErrUnexpectedEOF if the connection ends first,
// as net/http's body does.
type lengthBody struct {
	br   *bufio.Reader
	left int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

var _ io.ReadCloser = (*lengthBody)(nil)
