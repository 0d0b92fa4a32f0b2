package leanhttp

import (
	"bytes"
	"net/http"
	"strings"
	"unsafe"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"golang.org/x/net/http/httpguts"
)

// verdict is what scan makes of the bytes buffered on a connection.
type verdict int

const (
	// needMore: no whole request head yet, and nothing seen so far that
	// the lean loop would not serve.
	needMore verdict = iota
	// serveLean: one whole request head of the common case.
	serveLean
	// handOff: anything else, for the standard server.
	handOff
)

// headFacts is what scan learns of a served head's field lines that
// newRequest needs: with them it reads each line once more only to cut
// it, where it used to check every name again (field.Name) and trim every
// value (docs/benchmarks.md, "Fewer instructions per request, measured").
// The zero value knows nothing: newRequest then checks each line itself.
type headFacts struct {
	// canonical: every name is spelled as the header map spells it
	// (field.Name), so that a line's first colon ends its name.
	canonical bool
	// bare: every value follows its colon after one space, with no
	// white space to trim (as RequestLines wants them).
	bare bool
}

// scan looks for one request head at the start of b that the lean
// loop serves itself, and returns its length through the blank line. It
// is conservative: whatever it is not sure of goes to net/http, whose
// answers (400s included) then stay exactly today's. The common case is
//
//   - a request line "METHOD SP target SP HTTP/1.1" (or HTTP/1.0) with
//     METHOD GET, HEAD, OPTIONS, DELETE, POST, PUT or PATCH and a target that is a path
//     (origin-form) or an http:// URL (absolute-form, HTTP_PROXY);
//   - header lines "Name: value", every line ending in CRLF, names
//     tokens, values free of control characters but HTAB, no obs-fold;
//   - no body, or one of a known length: no Transfer-Encoding, at most
//     one Content-Length, and that one at most MaxBody, in plain digits
//     (body returns it);
//   - no Upgrade (h2c, WebSocket) and no Expect;
//   - one valid Host header (HTTP/1.0: at most one).
//
// What it learns of the field lines on the way, newRequest would learn
// again reading them a second time: f says it for a head it serves
// (serveLean), and is left as it was otherwise.
func scan(b []byte, f *headFacts) (n, body int, v verdict) {
	line, rest, ok := cutLine(b)
	if !ok {
		if !methodPrefix(b) {
			return 0, 0, handOff // TLS, h2c, garbage: no need to wait for a line
		}
		return 0, 0, needMoreOr(b)
	}
	if !requestLine(line) {
		return 0, 0, handOff
	}
	http10 := bytes.HasSuffix(line, []byte(" HTTP/1.0"))
	hosts, lengths := 0, 0
	var host []byte
	canonical, bare := true, true
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return 0, 0, needMoreOr(rest)
		}
		if len(line) == 0 {
			break
		}
		name, value, named, trimmed, ok := headerLine(line)
		if !ok {
			return 0, 0, handOff
		}
		canonical, bare = canonical && named, bare && !trimmed
		switch len(name) { // a name of none of these lengths is none of them
		case 4:
			if field.EqualFold(name, "Host") {
				hosts++
				host = value
			}
		case 14:
			// A second one, even the same, is net/http's to judge.
			if field.EqualFold(name, "Content-Length") {
				if lengths++; lengths > 1 {
					return 0, 0, handOff
				}
				if body, ok = plainLength(value); !ok {
					return 0, 0, handOff
				}
			}
		case 17, 7, 6:
			if field.EqualFold(name, "Transfer-Encoding") || field.EqualFold(name, "Upgrade") || field.EqualFold(name, "Expect") {
				return 0, 0, handOff
			}
		}
	}
	if hosts > 1 || (hosts == 0 && !http10) {
		return 0, 0, handOff // net/http's 400s
	}
	if hosts == 1 && !httpguts.ValidHostHeader(string(host)) {
		return 0, 0, handOff
	}
	*f = headFacts{canonical: canonical, bare: bare}
	return len(b) - len(rest), body, serveLean
}

// MaxBody bounds the request bodies the lean loop serves: a longer one
// goes to the standard server, which streams it. The loop holds none of
// it (the handler reads it from the connection's reader), but reads and
// drops what the handler left of it before the next request, as
// net/http's server does up to 256 KiB.
const MaxBody = 16 << 10

// plainLength is a Content-Length value of at most MaxBody in digits
// alone, with no leading zero: others (a sign, white space inside,
// "007", larger) are net/http's to judge.
func plainLength(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 5 || len(v) > 1 && v[0] == '0' {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= MaxBody
}

// needMoreOr is needMore, unless what is buffered of an unfinished line
// already holds a bare LF: net/http's business.
func needMoreOr(partial []byte) verdict {
	if bytes.IndexByte(partial, '\n') >= 0 {
		return handOff
	}
	return needMore
}

// cutLine cuts the first CRLF-terminated line off b. A line ending in a
// bare LF is not one (ok false, line empty, with the LF still in rest:
// handOff). One IndexByte: strings.Cut with "\r\n" searches for two.
// ~40 instructions a call besides the search, where a type switch
// between strings.IndexByte and bytes.IndexByte made it ~60, eight calls
// a request (docs/benchmarks.md, "Fewer instructions per request,
// measured"); still too large to inline.
func cutLine[T string | []byte](b T) (line, rest T, ok bool) {
	// A string's header is a slice's without its capacity: either reads
	// as a string, with no copy.
	i := strings.IndexByte(*(*string)(unsafe.Pointer(&b)), '\n')
	if i > 0 && b[i-1] == '\r' {
		return b[:i-1], b[i+1:], true
	}
	return line, b, false
}

var leanMethods = [...]string{http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete,
	http.MethodPost, http.MethodPut, http.MethodPatch}

// methodPrefix reports whether b could begin a request line of the
// common case.
func methodPrefix(b []byte) bool {
	for _, m := range leanMethods {
		if n := min(len(b), len(m)+1); string(b[:n]) == (m + " ")[:n] {
			return true
		}
	}
	return false
}

// requestLine reports whether line is a request line of the common case.
func requestLine(line []byte) bool {
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	method := line[:sp]
	known := false
	for _, m := range leanMethods {
		if string(method) == m {
			known = true
			break
		}
	}
	if !known {
		return false
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp < 1 {
		return false
	}
	target, version := rest[:sp], rest[sp+1:]
	if string(version) != "HTTP/1.1" && string(version) != "HTTP/1.0" {
		return false
	}
	if target[0] != '/' && !(len(target) > len("http://") && field.EqualFold(target[:len("http://")], "http://")) {
		return false // "*", authority-form, other schemes
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// headerLine splits "Name: value" with the value's optional white space
// trimmed, for a line net/http would read the same way. canonical says
// whether the name is spelled as the header map spells it; trimmed,
// whether the value did not follow the colon after exactly one space, or
// had white space to trim.
func headerLine(line []byte) (name, value []byte, canonical, trimmed, ok bool) {
	colon, canonical := field.Name(line) // no name, or obs-fold (a leading space is not a token byte either): -1
	if colon < 0 {
		return nil, nil, false, false, false
	}
	name, raw := line[:colon], line[colon+1:]
	if !field.ValidValue(raw) {
		return nil, nil, false, false, false
	}
	value = field.TrimOWS(raw)
	return name, value, canonical, len(raw) != len(value)+1 || raw[0] != ' ', true
}
