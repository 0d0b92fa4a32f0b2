package connlimit

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"
)

// okPart2 answers "ok " and the request's X-Part-2 field, the last part
// of the heads headDrainCase sends.
var okPart2 = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, "ok "+r.Header.Get("X-Part-2"))
})

// headDrainCase is a request head that arrives in parts while the drain
// sweeps.
type headDrainCase struct {
	name string
	// keptAlive: a request is answered before the drain, so the next
	// one arrives on a connection in StateIdle rather than StateNew.
	keptAlive bool
	// parts are sent one before each look after the first; stall
	// leaves looks with nothing sent after them, else the head's end
	// follows.
	parts []string
	stall bool
}

// sweepHead drives l's drain sweep with an injected clock while tc's
// head arrives on a new connection to l, which the caller serves with
// okPart2 and l.ConnState. Neither server reports a request before its
// head is in, and a read may leave bytes in the server's own buffer,
// where pending cannot see them: the connection looks new (or idle) all
// along. One that read bytes since the sweep's last look is not idle;
// one whose head stops arriving for grace is closed without a byte (the
// drain's bound, as for a silent one); a head that arrives in full is
// answered.
func sweepHead(t *testing.T, l *Listener, tc headDrainCase) {
	t.Helper()
	const grace = time.Second
	c := &httpClientConn{dial(t, l.Addr().String()), nil}
	c.r = bufio.NewReader(c)
	want := http.StateNew
	if tc.keptAlive {
		c.get(t, "/")
		c.read(t)
		want = http.StateIdle
	}
	sc := waitState(t, l, c, want, 0)
	before := sc.state.Load()

	// send writes s and waits until the server has read it: its read
	// recorded bytes for the drain (Read's, or ReadLazy's for the first
	// of a request on the lean loop). The flag is cleared first, for the
	// wait: a sweep sees it for this part only if the server's read set
	// it.
	send := func(s string) {
		t.Helper()
		sc.drainRead.Store(false)
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !sc.drainRead.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("no read of %q recorded for the drain", s)
			}
			time.Sleep(time.Millisecond)
		}
	}

	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.sweep(t0, grace) // the drain begins
	at := t0
	for _, part := range tc.parts {
		at = at.Add(grace)
		send(part)
		if left := l.sweep(at, grace); left != 1 || gone(t, l, c) {
			t.Fatalf("sweep %v into the drain closed a connection whose head was arriving", at.Sub(t0))
		}
	}
	if got := sc.state.Load(); got != before {
		t.Fatalf("state %v with the head part way, want %v unchanged: the premise (no request is reported before its head is in) no longer holds", http.ConnState(got&7), want)
	}
	if tc.stall {
		l.sweep(at.Add(grace-time.Millisecond), grace)
		if gone(t, l, c) {
			t.Fatal("sweep closed the connection before its head had stalled for grace")
		}
		if left := l.sweep(at.Add(grace), grace); left != 0 || !gone(t, l, c) || !refusedConn(c) {
			t.Fatalf("a head stalled for grace was not cut: %d left", left)
		}
		return
	}
	if _, err := io.WriteString(c, "\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatalf("no answer to the request whose head arrived during the drain: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok y" {
		t.Fatalf("answer %d %q, want 200 \"ok y\"", resp.StatusCode, body)
	}
}
