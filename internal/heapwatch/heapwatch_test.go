package heapwatch

import "testing"

var sink []byte

// Holding 64 MiB shows as at least that; holding nothing as far less.
func TestPeak(t *testing.T) {
	if got := Peak(func() { sink = make([]byte, 64<<20); sink[0] = 1 }); got < 64<<20 {
		t.Errorf("Peak of a 64 MiB allocation = %d", got)
	}
	sink = nil
	if got := Peak(func() {}); got > 8<<20 {
		t.Errorf("Peak of nothing = %d", got)
	}
}
