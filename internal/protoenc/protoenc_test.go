package protoenc

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// TestOpenClose: a message encoded in place is the bytes Message appends
// for it, whatever its length's size (one to three bytes here), nested
// too.
func TestOpenClose(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 300, 16383, 16384, 70000} {
		body := bytes.Repeat([]byte{'x'}, n)
		want := Message([]byte("head"), 7, Message(nil, 1, body))
		b, outer := Open([]byte("head"), 7)
		b, inner := Open(b, 1)
		b = append(b, body...)
		b = Close(b, inner)
		b = Close(b, outer)
		if !bytes.Equal(b, want) {
			t.Errorf("%d bytes: in place %x…, want %x…", n, b[:min(len(b), 16)], want[:min(len(want), 16)])
		}
		if _, _, m := protowire.ConsumeField(b[4:]); m != len(b)-4 {
			t.Errorf("%d bytes: the field takes %d bytes of %d", n, m, len(b)-4)
		}
	}
}

func TestOpenCloseAllocs(t *testing.T) {
	b := make([]byte, 0, 1<<20)
	body := bytes.Repeat([]byte{'x'}, 300)
	if a := testing.AllocsPerRun(100, func() {
		b2, at := Open(b[:0], 1)
		b2 = append(b2, body...)
		_ = Close(b2, at)
	}); a != 0 {
		t.Errorf("%v allocations with room in the buffer, want 0", a)
	}
}
