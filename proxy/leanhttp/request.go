package leanhttp

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"golang.org/x/net/http/httpguts"
)

// reqScratch is what a connection lends each of its requests, one at a
// time: the header map, the values' slice and the URL. A request's head
// made them new each time, three of the lean loop's allocations per
// request; reset empties them as the response ends (conn.serve), so that
// an idle connection keeps no value of its last request alive.
type reqScratch struct {
	hdr    http.Header
	values []string
	url    url.URL
	// lines are the head's field lines when lined says each is of the
	// form the header map writes back (response.RequestLines).
	lines field.RequestLines
	lined bool
	// facts are what the scan learned of the head's lines (readHead),
	// for newRequest.
	facts headFacts
}

func (sc *reqScratch) reset() {
	clear(sc.hdr)
	clear(sc.values)
	sc.url = url.URL{}
	sc.lines, sc.lined = field.RequestLines{}, false
	sc.facts = headFacts{}
}

// newRequest builds, from a head scan accepted (serveLean), the
// request http.ReadRequest would read from it, as net/http's server hands
// it to its handler (its checks passed, Host removed from the header
// map); ok is false for a head it would not serve (a target net/url
// refuses), which goes to the standard server as it is. Its header map,
// values and URL are sc's: the request is the connection's until its
// response ends.
//
// It exists because http.ReadRequest was a fifth of the lean loop's own
// CPU at 1,000 requests/s (docs/benchmarks.md, "The lean server loop"):
// a textproto.Reader, a string per line and per value, a header map grown
// as it is read, and the transfer rules of requests with bodies, none of
// which a head the scan accepted needs. Here the head is one string, the
// header map and the values' slice are the connection's, and a canonical
// name (most are) is a substring of the head. TestNewRequest and
// FuzzScanHead hold it to http.ReadRequest field by field.
//
// It fills in req, which the caller gives empty but for its context
// (conn.begin): RemoteAddr and the rest of the server's fields are the
// caller's. sc.facts are the scan's of head, or nothing known (the zero
// value): then each line's name and value are checked here.
func newRequest(head []byte, sc *reqScratch, req *http.Request) (ok bool) {
	s := string(head)
	line, rest, _ := cutLine(s)
	method, line, _ := strings.Cut(line, " ")
	target, proto, _ := strings.Cut(line, " ")
	u := &sc.url
	if !plainTarget(target, u) {
		pu, err := url.ParseRequestURI(target)
		if err != nil || (pu.Scheme != "" && pu.Scheme != "http") {
			return false
		}
		*u = *pu
	}
	minor := 1
	if proto == "HTTP/1.0" {
		minor = 0
	}

	// The scan accepted every line: "Name: value" CRLF, and the blank
	// line last.
	n := strings.Count(rest, "\n") - 1 // no bare LF: the scan's
	if sc.hdr == nil {
		sc.hdr = make(http.Header, n)
	}
	h := sc.hdr
	if cap(sc.values) < n {
		sc.values = make([]string, n)
	}
	values := sc.values[:n]
	var hostField string
	fields := rest
	var lined, pragma bool
	named, bare := sc.facts.canonical, sc.facts.bare
	for pass := 0; ; pass++ {
		// lined: every line so far is "Name: value" as the map writes
		// it back (its name is canonical, or the pass ended), one
		// space, no white space to trim.
		hostField, lined, pragma, rest = "", true, false, fields
		sc.lines = field.RequestLines{}
		again := false
		for i := 0; ; i++ {
			line, rest, _ = cutLine(rest)
			if line == "" {
				break
			}
			var colon int
			canonical := named
			if named {
				colon = strings.IndexByte(line, ':')
			} else if colon, canonical = field.Name(line); colon < 0 {
				return false // (never: the scan took only names and colons) net/http's
			}
			key, value := line[:colon], line[colon+1:]
			if !canonical { // most clients spell them so: one table look a byte
				if pass > 0 {
					return false // (never: canonicalNames spelled every name so) net/http's
				}
				again = true
				break
			}
			var v string
			if bare {
				v = value[1:]
			} else {
				v = field.TrimOWS(value)
				lined = lined && len(value) == len(v)+1 && value[0] == ' '
			}
			switch key {
			case "Host":
				// req.Host, not a header: never in the map (the scan
				// accepted one at most).
				hostField = v
				continue
			case "Connection":
				sc.lines.Connection = true
			case "Te":
				sc.lines.Te = true
			case "Upgrade":
				sc.lines.Upgrade = true
			case "X-Request-Id": // wellknown.HeaderRequestID, canonical
				sc.lines.RequestID = true
			case "Via":
				sc.lines.ViaEnd = len(fields) - len(rest)
			case "Pragma":
				pragma = true
			}
			values[i] = v
			if vv, seen := h[key]; seen {
				h[key] = append(vv, values[i])
			} else {
				// Capacity one: a handler's append copies, never writing
				// into the next value.
				h[key] = values[i : i+1 : i+1]
			}
		}
		if !again {
			break
		}
		// A client that spells names otherwise (Node's fetch: in lower
		// case) spells most so: its head is copied once more with every
		// name canonical, and read again, rather than a string made per
		// name; its lines then go on as lines (RequestLines), as the
		// map would have spelled them.
		clear(h)
		s = canonicalNames(s, len(s)-len(fields))
		fields = s[len(s)-len(fields):]
	}

	host := u.Host
	if host == "" {
		host = hostField
	}
	// The rules of http.ReadRequest and of the server that apply to a
	// bodiless request: a Pragma: no-cache without Cache-Control is
	// also Cache-Control: no-cache; HTTP/1.0 closes unless asked to
	// keep alive, HTTP/1.1 when asked to close.
	if pragma { // most heads have none: no look-up
		if pv := h["Pragma"]; len(pv) > 0 && pv[0] == "no-cache" {
			if _, ok := h["Cache-Control"]; !ok {
				h["Cache-Control"] = []string{"no-cache"}
				lined = false // a field the lines lack
			}
		}
	}
	// Through the last line's CRLF, before the blank line's.
	sc.lines.Text, sc.lined = fields[:len(fields)-len(rest)-2], lined
	var conn []string
	if sc.lines.Connection { // most heads have none: no look-up
		conn = h["Connection"]
	}
	closing := httpguts.HeaderValuesContainsToken(conn, "close")
	if minor == 0 {
		closing = closing || !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	}
	req.Method, req.URL, req.Proto = method, u, proto
	req.ProtoMajor, req.ProtoMinor = 1, minor
	req.Header, req.Body, req.Host = h, http.NoBody, host
	req.RequestURI, req.Close = target, closing
	return true
}

// canonicalNames is head, a head the scan accepted, with every field
// name from its byte from on spelled as textproto.CanonicalMIMEHeaderKey
// spells it (upper case first and after a hyphen, lower case elsewhere;
// the names are tokens): one string, whose lines keep their lengths.
func canonicalNames(head string, from int) string {
	var b strings.Builder
	b.Grow(len(head))
	b.WriteString(head[:from])
	rest := head[from:]
	for {
		line, r, _ := cutLine(rest)
		if line == "" {
			break
		}
		rest = r
		colon := strings.IndexByte(line, ':')
		upper := true
		for i := 0; i < colon; i++ {
			c := line[i]
			if upper && 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			} else if !upper && 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b.WriteByte(c)
			upper = c == '-'
		}
		b.WriteString(line[colon:])
		b.WriteString("\r\n")
	}
	b.WriteString(rest) // the blank line
	return b.String()
}

// plainTarget sets *u to what url.ParseRequestURI makes of target when
// target is of the common kind, and reports whether it was: origin-form
// ("/", "/api/v1/x?id=3") or absolute-form with the scheme http in lower
// case and a host of letters, digits and "-._~" with an optional port
// ("http://svc:8080/x", a proxy's request), whose path and query are of
// bytes net/url keeps as they are (no escape, no second '?'). Such a
// target then costs no URL of its own.
func plainTarget(target string, u *url.URL) bool {
	var host string
	if rest, ok := strings.CutPrefix(target, "http://"); ok {
		end := strings.IndexByte(rest, '/')
		if end < 0 {
			end = len(rest)
		}
		host, target = rest[:end], rest[end:]
		if !plainHost(host) {
			return false
		}
		if target == "" {
			*u = url.URL{Scheme: "http", Host: host}
			return true
		}
	}
	if target == "" || target[0] != '/' {
		return false
	}
	path, query, hasQuery := strings.Cut(target, "?")
	for i := 0; i < len(path); i++ {
		if !plainPath[path[i]] {
			return false
		}
	}
	if hasQuery {
		if query == "" {
			return false // ForceQuery: net/url's
		}
		for i := 0; i < len(query); i++ {
			if !plainQuery[query[i]] {
				return false
			}
		}
	}
	*u = url.URL{Path: path, RawQuery: query}
	if host != "" {
		u.Scheme, u.Host = "http", host
	}
	return true
}

// plainHost reports whether host, not empty, is a name or an IPv4
// address with an optional port that net/url keeps as it is.
func plainHost(host string) bool {
	name, port, _ := strings.Cut(host, ":") // "name:" too, as net/url
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !plainName[name[i]] {
			return false
		}
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	return true
}

// plainName, plainPath and plainQuery are the bytes of a host name, a
// path and a query that net/url neither unescapes nor rejects nor splits
// on.
var plainName, plainPath, plainQuery = func() (n, p, q [256]bool) {
	for c := '0'; c <= '9'; c++ {
		n[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		n[c], n[c-'a'+'A'] = true, true
	}
	for _, c := range "-._~" {
		n[c] = true
	}
	p = n
	for _, c := range "/$&+,;=:@" { // not !'()*: net/url escapes them, keeping RawPath
		p[c] = true
	}
	q = p
	q['%'] = true // RawQuery is kept as sent
	return n, p, q
}()
