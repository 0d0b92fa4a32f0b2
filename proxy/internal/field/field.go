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
// upper case first and after a hyphen, lower case elsewhere. One table
// look per byte: the fast transport and the lean loop check every name
// of every response and request head with it (docs/benchmarks.md,
// "Fewer instructions per request").
func Canonical[T string | []byte](name T) bool {
	at := uint(256) // the first byte, or one after a hyphen: nameNext's upper half
	for i := range len(name) {
		at = uint(nameNext[(at|uint(name[i]))&511])
		if at == 0 {
			return false
		}
		at &= 256
	}
	return len(name) > 0
}

// Name finds the field name a line begins with, "Name:...": colon is
// the colon's index, -1 for a line that has none after a token of one
// byte or more, and canonical says whether the name is Canonical. One
// pass over the name, where a search for the colon and then Canonical
// (and Token, for a name not canonical) made two or three: every line
// of every head is read so.
func Name[T string | []byte](line T) (colon int, canonical bool) {
	at := uint(256) // as Canonical
	i := 0
	for ; i < len(line); i++ {
		next := uint(nameNext[(at|uint(line[i]))&511])
		if next == 0 {
			break
		}
		at = next & 256
	}
	canonical = true
	for ; i < len(line); i++ {
		c := line[i]
		if c == ':' {
			if i == 0 {
				return -1, false
			}
			return i, canonical
		}
		if !tokenByte[c] {
			return -1, false
		}
		canonical = false
	}
	return -1, false
}

// Token reports whether name is an RFC 9110 token, the bytes of a field
// name (not empty).
func Token(name []byte) bool {
	for _, c := range name {
		if !tokenByte[c] {
			return false
		}
	}
	return len(name) > 0
}

// tokenByte holds the bytes of a token. nameNext says, of a byte of a
// canonical name, where the next byte looks in it: 0 for a byte no
// canonical name has there, else 1, or 257 after a hyphen (the upper half,
// which the caller keeps with &256). From 256 on, the bytes a name may
// have first and after a hyphen (no lower case letter), below 256 those
// elsewhere (no upper case letter). One load a byte, its index masked so
// that it needs no bounds check: every name of every head is read so
// (docs/benchmarks.md, "Fewer instructions per request, measured").
var tokenByte, nameNext = func() (tok [256]bool, next [512]uint16) {
	for c := range 256 {
		tok[c] = httpguts.IsTokenRune(rune(c))
		step := uint16(1)
		if c == '-' {
			step = 257
		}
		if tok[c] && !('a' <= c && c <= 'z') {
			next[256+c] = step
		}
		if tok[c] && !('A' <= c && c <= 'Z') {
			next[c] = step
		}
	}
	return tok, next
}()

// lo and hi are a one and a high bit in each byte of a word.
const lo, hi = 0x0101010101010101, 0x8080808080808080

// ValidValue reports whether v has no byte net/http refuses in a field
// value: a control byte other than HTAB, or DEL. Eight bytes at a time:
// a value is most of a line's bytes.
func ValidValue[T string | []byte](v T) bool {
	for len(v) >= 8 {
		x := uint64(v[0]) | uint64(v[1])<<8 | uint64(v[2])<<16 | uint64(v[3])<<24 |
			uint64(v[4])<<32 | uint64(v[5])<<40 | uint64(v[6])<<48 | uint64(v[7])<<56
		// A byte under 0x20, or a zero byte where DEL was: exact tests
		// (no borrow crosses into a byte unless one below it matched).
		y := x ^ (lo * 0x7f)
		if (x-lo*0x20)&^x&hi != 0 || (y-lo)&^y&hi != 0 {
			break // a tab or a bad byte: the rest byte by byte
		}
		v = v[8:]
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
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
// (or a scheme) read as bytes against a known one. Callers spell s as
// most senders do (canonically): then one comparison of the two, where
// folding each byte cost ~10 instructions.
func EqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	if string(b) == s {
		return true // most names come spelled as the caller spells them
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

// TrimOWS trims a field value's optional white space, spaces and tabs,
// at either end: the lean loop's and the fast transport's one trim
// (bytes.Trim with a cutset builds a set from it on every call).
func TrimOWS[T string | []byte](v T) T {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// Bare reports whether v is a value as a line carries it: valid, with no
// optional white space at either end to trim (leanhttp's raw lines, and
// the request ID the fast path adds to them).
func Bare[T string | []byte](v T) bool {
	return len(TrimOWS(v)) == len(v) && ValidValue(v)
}
