// Package field holds the rules for header fields that the lean server
// loop (leanhttp) and the outbound fast transport share, so that a head
// the transport reads as lines is one the loop takes as lines.
package field

import (
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Canonical reports whether name is a field name spelled as
// textproto.CanonicalMIMEHeaderKey spells it: token bytes, a letter
// upper case first and after a hyphen, lower case elsewhere.
func Canonical(name []byte) bool {
	upper := true
	for _, c := range name {
		if !httpguts.IsTokenRune(rune(c)) || upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return len(name) > 0
}

// Length reads a Content-Length value as net/http takes one as it is:
// 1 to 18 decimal digits (no sign, no white space).
func Length(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// EqualFold reports whether b is s, ignoring ASCII case: a field name
// (or a scheme) read as bytes against a known one.
func EqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// Get is h.Get(key) for a key spelled canonically already (a constant):
// the first value, or "". Header.Get canonicalizes its key on every call:
// 1.4 % of the sidecar's user time at the maximum rate (docs/benchmarks.md,
// "A request's context, Request and response lent, not made").
func Get(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// HasLineBreak reports whether v holds a CR or an LF: a value net/http
// sanitizes or refuses. It is strings.ContainsAny(v, "\r\n") in two
// IndexByte scans, about 2.4× faster on the sidecar's usual values
// (ContainsAny builds a set or calls IndexRune per byte).
func HasLineBreak(v string) bool {
	return strings.IndexByte(v, '\n') >= 0 || strings.IndexByte(v, '\r') >= 0
}
