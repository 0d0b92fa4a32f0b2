package hexpair

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func FuzzEncode(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0x0f, 0xf0, 0xff, 0x9a})
	f.Fuzz(func(t *testing.T, src []byte) {
		dst := make([]byte, 2*len(src))
		Encode(dst, src)
		if want := hex.EncodeToString(src); string(dst) != want {
			t.Fatalf("Encode(%x) = %q, want %q", src, dst, want)
		}
		got := AppendEncode([]byte("x"), src)
		if want := hex.AppendEncode([]byte("x"), src); !bytes.Equal(got, want) {
			t.Fatalf("AppendEncode(%x) = %q, want %q", src, got, want)
		}
		for _, b := range src {
			if p := Of(b); string(p[:]) != hex.EncodeToString([]byte{b}) {
				t.Fatalf("Of(%#x) = %q", b, p[:])
			}
		}
	})
}

var (
	traceID = [16]byte{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	spanID  = [8]byte{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}
	sink    [48]byte
)

// BenchmarkEncode: a trace and a span ID, as the trace fields write
// them; BenchmarkEncodeStd the same by encoding/hex.
func BenchmarkEncode(b *testing.B) {
	for b.Loop() {
		Encode(sink[:32], traceID[:])
		Encode(sink[32:], spanID[:])
	}
}

func BenchmarkEncodeStd(b *testing.B) {
	for b.Loop() {
		hex.Encode(sink[:32], traceID[:])
		hex.Encode(sink[32:], spanID[:])
	}
}
