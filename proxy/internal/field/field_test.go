package field

import (
	"net/textproto"
	"strconv"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	for _, name := range []string{"Content-Type", "X-Request-Id", "A", "-", "X-1", "1a", "A_b", "Www-Authenticate",
		"x-a", "X-a", "XA", "X-ID", "X A", "", "X:", "Ä"} {
		want := name != "" && textproto.CanonicalMIMEHeaderKey(name) == name && validToken(name)
		if got := Canonical([]byte(name)); got != want {
			t.Errorf("Canonical(%q) = %v, want %v", name, got, want)
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
