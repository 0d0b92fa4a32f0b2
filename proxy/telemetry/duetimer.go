package telemetry

import "time"

// dueTimer is a batch's deadline that exists only while the batch does:
// armed by the first item into an empty batch, disarmed when the batch
// goes. Its channel is nil while disarmed, so a select on it waits on no
// timer at all (a ticker woke an idle sidecar, and the runtime's monitor
// thread with it: docs/benchmarks.md, "Timers only while there is work").
// It belongs to one goroutine, the batch's writer.
type dueTimer struct {
	t *time.Timer
	c <-chan time.Time // t.C while armed, nil while not
	d time.Duration
}

func newDueTimer(d time.Duration) *dueTimer {
	t := time.NewTimer(d)
	t.Stop()
	return &dueTimer{t: t, d: d}
}

// arm starts the timer unless it runs already: the first item's wait
// is not put off by later ones.
func (x *dueTimer) arm() {
	if x.c == nil {
		x.t.Reset(x.d)
		x.c = x.t.C
	}
}

// disarm stops the timer; since Go 1.23 no stale tick can follow.
func (x *dueTimer) disarm() {
	x.t.Stop()
	x.c = nil
}

// due fires d after arm, or never while disarmed.
func (x *dueTimer) due() <-chan time.Time { return x.c }
