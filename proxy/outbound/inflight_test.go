package outbound

import "testing"

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestInflight: idle is closed at once with none in flight, else when the
// count falls to zero, also after one started while the drain waited
// (which a sync.WaitGroup forbids).
func TestInflight(t *testing.T) {
	var f inflight
	if !closed(f.idle()) {
		t.Fatal("idle with none in flight is not closed")
	}
	f.add()
	idle := f.idle()
	f.add() // accepted as the listener closed
	f.done()
	if closed(idle) {
		t.Fatal("idle closed with one still in flight")
	}
	f.done()
	if !closed(idle) {
		t.Fatal("idle not closed when the last ended")
	}
	f.add()
	f.done() // nobody waits: nothing to close twice
}
