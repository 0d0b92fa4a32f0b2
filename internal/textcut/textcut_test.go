package textcut

import (
	"testing"
	"unicode/utf8"
)

func TestPrefix(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly", 7, "exactly"},
		{"longer one", 6, "longer"},
		{"ééé", 3, "é"}, // not in the middle of é's two bytes
		{"ééé", 4, "éé"},
		{"€", 2, ""}, // a three-byte character that does not fit at all
		{"abc", 0, ""},
	} {
		got := Prefix(tt.s, tt.n)
		if got != tt.want {
			t.Errorf("Prefix(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("Prefix(%q, %d) = %q: not valid UTF-8", tt.s, tt.n, got)
		}
	}
}
