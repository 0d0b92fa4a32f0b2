package leanhttp

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// newRequest builds, from a head scanHead accepted (serveLean), the
// request http.ReadRequest would read from it, as net/http's server hands
// it to its handler (its checks passed, Host removed from the header
// map); ok is false for a head it would not serve (a target net/url
// refuses), which goes to the standard server as it is.
//
// It exists because http.ReadRequest was a fifth of the lean loop's own
// CPU at 1,000 requests/s (docs/benchmarks.md, "The lean server loop"):
// a textproto.Reader, a string per line and per value, a header map grown
// as it is read, and the transfer rules of requests with bodies, none of
// which a head the scan accepted needs. Here the head is one string, the
// header map is sized once, its values share one slice, and a canonical
// name (most are) is a substring of the head. TestNewRequest and
// FuzzScanHead hold it to http.ReadRequest field by field.
//
// The context, RemoteAddr and the rest of the server's fields are the
// caller's: it returns the request by value, so that WithContext's copy
// is its only allocation of a Request.
func newRequest(head []byte) (req http.Request, ok bool) {
	s := string(head)
	line, rest, _ := strings.Cut(s, "\r\n")
	method, line, _ := strings.Cut(line, " ")
	target, proto, _ := strings.Cut(line, " ")
	u, err := url.ParseRequestURI(target)
	if err != nil || (u.Scheme != "" && u.Scheme != "http") {
		return http.Request{}, false
	}
	minor := 1
	if proto == "HTTP/1.0" {
		minor = 0
	}

	// The scan accepted every line: "Name: value" CRLF, and the blank
	// line last.
	n := strings.Count(rest, "\r\n") - 1
	h := make(http.Header, n)
	values := make([]string, n)
	for i := 0; ; i++ {
		line, rest, _ = strings.Cut(rest, "\r\n")
		if line == "" {
			break
		}
		name, value, _ := strings.Cut(line, ":")
		key := textproto.CanonicalMIMEHeaderKey(name)
		values[i] = strings.Trim(value, " \t")
		if vv, seen := h[key]; seen {
			h[key] = append(vv, values[i])
		} else {
			h[key] = values[i : i+1 : i+1]
		}
	}

	host := u.Host
	if host == "" {
		host = hget(h, "Host")
	}
	// The rules of http.ReadRequest and of the server that apply to a
	// bodiless request: a Pragma: no-cache without Cache-Control is
	// also Cache-Control: no-cache; HTTP/1.0 closes unless asked to
	// keep alive, HTTP/1.1 when asked to close; the Host field is
	// req.Host, not a header.
	if pv := h["Pragma"]; len(pv) > 0 && pv[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	conn := h["Connection"]
	closing := httpguts.HeaderValuesContainsToken(conn, "close")
	if minor == 0 {
		closing = closing || !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	}
	delete(h, "Host")
	return http.Request{
		Method:     method,
		URL:        u,
		Proto:      proto,
		ProtoMajor: 1,
		ProtoMinor: minor,
		Header:     h,
		Body:       http.NoBody,
		Host:       host,
		RequestURI: target,
		Close:      closing,
	}, true
}
