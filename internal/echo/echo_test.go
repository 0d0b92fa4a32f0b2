package echo

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuote(t *testing.T) {
	long := strings.Repeat("x", 1<<20)
	for _, tt := range []struct{ in, quote, clip string }{
		{"", `""`, ""},
		{"lots", `"lots"`, "lots"},
		{"a\nb", `"a\nb"`, "a… (3 bytes)"},
		{"a\r\nb", `"a\r\nb"`, "a… (4 bytes)"},
		{strings.Repeat("y", MaxBytes), strconv.Quote(strings.Repeat("y", MaxBytes)), strings.Repeat("y", MaxBytes)},
		{long, `"` + long[:MaxBytes] + `"… (1048576 bytes)`, long[:MaxBytes] + "… (1048576 bytes)"},
		// A rune that straddles the cut is left out whole, not split.
		{strings.Repeat("x", MaxBytes-1) + "é" + long, `"` + long[:MaxBytes-1] + `"… (1048677 bytes)`, long[:MaxBytes-1] + "… (1048677 bytes)"},
	} {
		if got := Quote(tt.in); got != tt.quote {
			t.Errorf("Quote(%d bytes) = %.200q, want %.200q", len(tt.in), got, tt.quote)
		}
		if got := Clip(tt.in); got != tt.clip {
			t.Errorf("Clip(%d bytes) = %.200q, want %.200q", len(tt.in), got, tt.clip)
		}
	}
}

// FuzzQuote: whatever the input, the result is short, valid UTF-8 when
// the input is, and starts with the input's own beginning.
func FuzzQuote(f *testing.F) {
	f.Add("lots")
	f.Add(strings.Repeat("é", 200))
	f.Fuzz(func(t *testing.T, s string) {
		c := Clip(s)
		if len(c) > MaxBytes+len("… (18446744073709551615 bytes)") {
			t.Fatalf("Clip gave %d bytes", len(c))
		}
		if strings.ContainsAny(c, "\r\n") {
			t.Fatalf("Clip(%q) = %q spans lines", s, c)
		}
		if utf8.ValidString(s) && !utf8.ValidString(c) {
			t.Fatalf("Clip(%q) = %q cuts a character", s, c)
		}
		if c != s && !strings.HasPrefix(s, c[:strings.LastIndex(c, "… (")]) {
			t.Fatalf("Clip(%q) = %q is not a prefix", s, c)
		}
		q := Quote(s)
		if len(s) <= MaxBytes && q != strconv.Quote(s) {
			t.Fatalf("Quote(%q) = %s", s, q)
		}
	})
}
