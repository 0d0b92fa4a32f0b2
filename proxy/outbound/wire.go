package outbound

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

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

// writeRequestHead writes the head of req, a bodiless request, as
// req.Write(bw) would, sorting header keys in keys (scratch, returned for
// reuse). It reports false, having written nothing, for a request it
// leaves to req.Write: an opaque URL, a host to convert to Punycode, a
// header value to sanitize, a Close or TransferEncoding field.
func writeRequestHead(bw *bufio.Writer, req *http.Request, keys []string) ([]string, bool) {
	if req.URL == nil || req.URL.Opaque != "" || req.Close || len(req.TransferEncoding) > 0 || req.Trailer != nil ||
		req.ContentLength != 0 {
		return keys, false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !isASCII(host) {
		return keys, false
	}
	if !httpguts.ValidHostHeader(host) {
		host = "" // as Request.Write does: an invalid Host is not sent
	}
	if strings.HasPrefix(host, "[") && strings.Contains(host, "%") {
		return keys, false // a zone to remove
	}
	path := req.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	query := req.URL.ForceQuery || req.URL.RawQuery != ""
	if ctlByte(path) || ctlByte(req.URL.RawQuery) {
		return keys, false // Request.Write's error
	}
	ua, hasUA := defaultUserAgent, false
	if v, ok := req.Header["User-Agent"]; ok {
		ua, hasUA = "", true
		if len(v) > 0 {
			ua = v[0]
		}
	}
	keys = keys[:0]
	for k, vv := range req.Header {
		if reqWriteExclude(k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			continue // Request.Write drops it
		}
		for _, v := range vv {
			if strings.ContainsAny(v, "\r\n") {
				return keys, false
			}
		}
		keys = append(keys, k)
	}
	if hasUA && strings.ContainsAny(ua, "\r\n") {
		return keys, false
	}
	slices.Sort(keys)

	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(path)
	if query {
		bw.WriteByte('?')
		bw.WriteString(req.URL.RawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if ua != "" { // a value of spaces goes, trimmed to nothing
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(ua))
		bw.WriteString("\r\n")
	}
	for _, k := range keys {
		for _, v := range req.Header[k] {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
	return keys, true
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

// fastResponse is a response read by readResponseHead and its body, in
// one allocation.
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
func readResponseHead(br *bufio.Reader, req *http.Request) *fastResponse {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return nil
	}
	head := buf[:end+2] // each line ends in CRLF
	// The status line: "HTTP/1.1 200 OK".
	nl := bytes.IndexByte(head, '\n')
	if nl < 1 || head[nl-1] != '\r' {
		return nil
	}
	line := head[:nl-1]
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return nil
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return nil
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 {
		return nil // informational: http.ReadResponse, then the next head
	}
	// Header lines: count them first, for one slice of values.
	rest := head[nl+1:]
	n := bytes.Count(rest, crlf)
	if bytes.Count(rest, lf) != n || bytes.IndexByte(line, '\r') >= 0 {
		return nil // a bare LF or CR: net/http's reading of it is its own
	}
	s := string(head) // one string: the values are slices of it
	fr := &fastResponse{}
	resp := &fr.Response
	resp.Status = s[9:len(line)]
	resp.StatusCode = code
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	resp.Request = req
	h := make(http.Header, n)
	vals := make([]string, n)
	cl := int64(-1)
	off := nl + 1
	for i := 0; i < n; i++ {
		e := off + strings.Index(s[off:], "\r\n")
		key, v, ok := strings.Cut(s[off:e], ":")
		off = e + 2
		if !ok || !token(key) || key == "" {
			return nil
		}
		v = strings.Trim(v, " \t")
		for j := 0; j < len(v); j++ {
			if c := v[j]; c < ' ' && c != '\t' || c == 0x7f {
				return nil
			}
		}
		key = textproto.CanonicalMIMEHeaderKey(key)
		switch key {
		case "Connection", "Transfer-Encoding", "Trailer", "Pragma":
			return nil
		case "Content-Length":
			if cl >= 0 || !digits(v) {
				return nil
			}
			cl = parseDigits(v)
		}
		vals[i] = v
		if vv, ok := h[key]; ok {
			h[key] = append(vv, v)
		} else {
			h[key] = vals[i : i+1 : i+1]
		}
	}
	resp.Header = h
	switch {
	case req.Method == http.MethodHead:
		resp.ContentLength = cl
		resp.Body = http.NoBody
	case code == http.StatusNoContent || code == http.StatusNotModified:
		resp.ContentLength = 0
		resp.Body = http.NoBody
	case cl < 0:
		return nil // a body to the connection's end: http.ReadResponse
	default:
		resp.ContentLength = cl
		if cl == 0 {
			resp.Body = http.NoBody
		}
	}
	_, _ = br.Discard(end + 4)
	return fr
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	crlf     = []byte("\r\n")
	lf       = []byte("\n")
)

// token reports whether s is an RFC 9110 token, the bytes of a header
// field name.
func token(s string) bool {
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// digits reports whether s is a Content-Length net/http parses as is:
// 1 to 18 decimal digits.
func digits(s string) bool {
	if len(s) == 0 || len(s) > 18 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func parseDigits(s string) int64 {
	var n int64
	for i := 0; i < len(s); i++ {
		n = n*10 + int64(s[i]-'0')
	}
	return n
}

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
