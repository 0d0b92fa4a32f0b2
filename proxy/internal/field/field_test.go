package field

import (
	"net/textproto"
	"strconv"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	for _, name := range []string{"Content-Type", "X-Request-Id", "A", "-", "X-1", "1a", "A_b", "Www-Authenticate",
		"x-a", "X-a", "XA", "X-ID", "X A", "", "X:", "Ä",
		// Longer names.
		"Content-Length", "content-Length", "Content-length", "X-Forwarded-For-", "Abcdefgh", "Abcdefgh-", "Abcdefg-h",
		"Abcdefg-H", "Abc_defgh-Ijk", "Abc_defgh-ijk", "Access-Control-Allow-Origin", "ABCDEFGHIJ", "Abcdefgh\x80",
		"Abcdefghijklmnop", "Abcdefghijklmnop-", "Abcdefghijklmno-p", "Abcdefghijklmno-P", "Abcdefgh-Ijklmnop", "Abcdefgh-ijklmnop"} {
		want := name != "" && textproto.CanonicalMIMEHeaderKey(name) == name && validToken(name)
		if got := Canonical([]byte(name)); got != want {
			t.Errorf("Canonical(%q) = %v, want %v", name, got, want)
		}
		if got := Canonical(name); got != want {
			t.Errorf("Canonical(string %q) = %v, want %v", name, got, want)
		}
	}
}

func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == ':' || c == '"' || c == '(' || c == ')' || c == ',' || c == '/' ||
			c == ';' || c == '<' || c == '=' || c == '>' || c == '?' || c == '@' || c == '[' || c == '\\' ||
			c == ']' || c == '{' || c == '}' {
			return false
		}
	}
	return true
}

func TestLength(t *testing.T) {
	for _, c := range []struct {
		in string
		n  int64
		ok bool
	}{
		{"0", 0, true}, {"256", 256, true}, {"123456789012345678", 123456789012345678, true},
		{"", 0, false}, {"1234567890123456789", 0, false}, {"-1", 0, false}, {"+1", 0, false},
		{" 1", 0, false}, {"1 ", 0, false}, {"1x", 0, false}, {"0x10", 0, false},
	} {
		n, ok := Length([]byte(c.in))
		if ok != c.ok || ok && n != c.n {
			t.Errorf("Length(%q) = %d, %v; want %d, %v", c.in, n, ok, c.n, c.ok)
		}
		if ok {
			if v, err := strconv.ParseInt(c.in, 10, 64); err != nil || v != n {
				t.Errorf("Length(%q) = %d; strconv: %d, %v", c.in, n, v, err)
			}
		}
	}
}

func TestEqualFold(t *testing.T) {
	for _, c := range []struct {
		b, s string
		want bool
	}{
		{"Content-Length", "content-length", true}, {"HOST", "Host", true}, {"host", "host", true},
		{"hosts", "host", false}, {"hast", "host", false}, {"", "", true}, {"[", "{", false}, {"@", "`", false},
	} {
		if got := EqualFold([]byte(c.b), c.s); got != c.want {
			t.Errorf("EqualFold(%q, %q) = %v, want %v", c.b, c.s, got, c.want)
		}
	}
}

func TestHasLineBreak(t *testing.T) {
	for _, v := range []string{"", "a", "\r", "\n", "a\rb", "a\nb", "abc\r\n", "\x00\t\x0b\x0c", "fortio.org/fortio-1.69.0"} {
		if got, want := HasLineBreak(v), strings.ContainsAny(v, "\r\n"); got != want {
			t.Errorf("HasLineBreak(%q) = %v, want %v", v, got, want)
		}
	}
}

func FuzzHasLineBreak(f *testing.F) {
	f.Add("a\rb")
	f.Fuzz(func(t *testing.T, v string) {
		if got, want := HasLineBreak(v), strings.ContainsAny(v, "\r\n"); got != want {
			t.Errorf("HasLineBreak(%q) = %v, want %v", v, got, want)
		}
	})
}

// canonicalRef and validValueRef are Canonical and ValidValue as they
// were first written, one rule at a time: the tables must agree.
func canonicalRef(name []byte) bool {
	upper := true
	for _, c := range name {
		if !validToken(string([]byte{c})) || upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return len(name) > 0
}

func validValueRef(v []byte) bool {
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func TestValidValue(t *testing.T) {
	for _, v := range []string{"", "a", "text/plain; charset=utf-8", "Wed, 02 Dec 2026 08:00:00 GMT",
		"a\tb", "12345678\t", "\x7f", "1234567\x7f", "12345678\x7f", "\x1f2345678", "123456789\x00",
		"ü ä ö ß € 12345678", "\x80\xff\xfe\x7e\x20\x21\x7e\x7e", "\x7e\x7e\x7e\x7e\x7e\x7e\x7e\x7f",
		"a\rb", "abcdefgh\nijk", "abcdefghijklmnop\t\x01"} {
		if got, want := ValidValue([]byte(v)), validValueRef([]byte(v)); got != want {
			t.Errorf("ValidValue(%q) = %v, want %v", v, got, want)
		}
		if got, want := ValidValue(v), validValueRef([]byte(v)); got != want {
			t.Errorf("ValidValue(string %q) = %v, want %v", v, got, want)
		}
	}
}

func FuzzValidValue(f *testing.F) {
	f.Add([]byte("Wed, 02 Dec 2026 08:00:00 GMT"))
	f.Add([]byte("\x80\x7f\x81\x1f\x20\x7e\x00\xff\x09\x0a"))
	f.Fuzz(func(t *testing.T, v []byte) {
		if got, want := ValidValue(v), validValueRef(v); got != want {
			t.Errorf("ValidValue(%q) = %v, want %v", v, got, want)
		}
		if got, want := ValidValue(string(v)), validValueRef(v); got != want {
			t.Errorf("ValidValue(string %q) = %v, want %v", v, got, want)
		}
	})
}

func FuzzCanonical(f *testing.F) {
	f.Add([]byte("X-Request-Id"))
	f.Add([]byte("x-A_b-1~"))
	f.Add([]byte("Access-Control-Allow-Origin"))
	f.Add([]byte("Abcdefg-Hijklmn-o"))
	f.Fuzz(func(t *testing.T, name []byte) {
		want := canonicalRef(name)
		if got := Canonical(name); got != want {
			t.Errorf("Canonical(%q) = %v, want %v", name, got, want)
		}
		if got := Canonical(string(name)); got != want {
			t.Errorf("Canonical(string %q) = %v, want %v", name, got, want)
		}
		if got, want := Token(name), len(name) > 0 && validToken(string(name)); got != want {
			t.Errorf("Token(%q) = %v, want %v", name, got, want)
		}
	})
}

// FuzzName holds Name to the colon's search, Canonical and Token.
func FuzzName(f *testing.F) {
	for _, l := range []string{"Content-Type: a", "content-type: a", "X-A:", ":a", "X A: b", "X-A", "", "A:b:c", "Ab\x80: x", "X-Request-Id:1"} {
		f.Add([]byte(l))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		colon, canonical := -1, false
		if i := strings.IndexByte(string(line), ':'); i > 0 && Token(line[:i]) {
			colon, canonical = i, Canonical(line[:i])
		}
		if c, ok := Name(line); c != colon || ok != canonical {
			t.Errorf("Name(%q) = %d, %v; want %d, %v", line, c, ok, colon, canonical)
		}
		if c, ok := Name(string(line)); c != colon || ok != canonical {
			t.Errorf("Name(string %q) = %d, %v; want %d, %v", line, c, ok, colon, canonical)
		}
	})
}

func TestTrimOWS(t *testing.T) {
	for _, v := range []string{"", " ", "\t", "a", " a ", "\t a \t", "a b", " \ta\tb\t ", "\r a \n", "\v a"} {
		want := strings.Trim(v, " \t")
		if got := TrimOWS(v); got != want {
			t.Errorf("TrimOWS(%q) = %q, want %q", v, got, want)
		}
		if got := string(TrimOWS([]byte(v))); got != want {
			t.Errorf("TrimOWS([]byte %q) = %q, want %q", v, got, want)
		}
	}
}

func TestBare(t *testing.T) {
	for v, want := range map[string]bool{"": true, "a": true, "a b": true, "a\tb": true, "ü": true,
		" a": false, "a ": false, "\ta": false, "a\t": false, " ": false, "a\rb": false, "\x7f": false} {
		if got := Bare(v); got != want {
			t.Errorf("Bare(%q) = %v, want %v", v, got, want)
		}
	}
}
