package requestid

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"abc-123", true},
		{"0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"with space", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"", false},
		{"tab\there", false},
		{"new\nline", false},
		{"ünïcode", false},
		{"del\x7f", false},
	} {
		if got := Valid(tc.id); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewIsUniqueUUIDv4(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := New()
		if !uuidV4.MatchString(id) {
			t.Fatalf("%q is not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("duplicate %q", id)
		}
		seen[id] = true
	}
}

// TestNewDigitsRandom: every digit of an ID but the version's and the
// variant's takes all 16 values over many IDs (a digit written from the
// wrong bits, or not at all, would not), the version's is always 4 and
// the variant's takes each of 8, 9, a and b.
func TestNewDigitsRandom(t *testing.T) {
	var seen [36]map[byte]bool
	for i := range seen {
		seen[i] = map[byte]bool{}
	}
	for range 2000 {
		id := New()
		for i := range len(id) {
			seen[i][id[i]] = true
		}
	}
	for i, s := range seen {
		want := 16
		switch i {
		case 8, 13, 18, 23:
			want = 1 // '-'
		case 14:
			want = 1 // '4'
		case 19:
			want = 4 // 8, 9, a, b
		}
		if len(s) != want {
			t.Errorf("digit %d took %d values over 2,000 IDs, want %d", i, len(s), want)
		}
	}
}

// TestUUIDDigits holds uuid to fmt's hex of the same bits: every bit of
// the two words but the version's four and the variant's two lands in
// its place, once.
func TestUUIDDigits(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	words := [][2]uint64{{0, 0}, {^uint64(0), ^uint64(0)}, {0x0123456789abcdef, 0xfedcba9876543210}}
	for range 1000 {
		words = append(words, [2]uint64{r.Uint64(), r.Uint64()})
	}
	for _, w := range words {
		a, b := w[0], w[1]
		want := fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", a>>32, a>>16&0xffff, a&0x0fff|0x4000,
			b>>48&0x3fff|0x8000, b&0xffffffffffff)
		if got := uuid(a, b); got != want {
			t.Fatalf("uuid(%#x, %#x) = %s, want %s", a, b, got, want)
		}
	}
}

func BenchmarkNew(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = New()
	}
}
