package heldstatus

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// server is a server's ResponseWriter that logs what reached it, as the
// reader would see it: "103", "200 close" (a status with Connection:
// close), "body:x", "flush".
type server struct {
	h   http.Header
	log []string
}

func (s *server) Header() http.Header { return s.h }

func (s *server) WriteHeader(code int) {
	e := fmt.Sprint(code)
	if s.h.Get("Connection") == "close" {
		e += " close"
	}
	s.log = append(s.log, e)
}

func (s *server) Write(p []byte) (int, error) {
	s.log = append(s.log, "body:"+string(p))
	return len(p), nil
}

func (s *server) FlushError() error {
	s.log = append(s.log, "flush")
	return nil
}

// TestWriter plays each case's steps on a Writer and checks what reached
// the server and where the status ended.
func TestWriter(t *testing.T) {
	draining := new(atomic.Bool)
	cases := []struct {
		name  string
		setup func(w *Writer)
		steps string // space-separated: a status code, "body", "withhold", "flush", "drain", "rehold", "commit"
		want  string // the server's log
		state uint32
		// writeErr is what the case's body writes fail with.
		writeErr error
	}{
		{name: "held then first byte", steps: "201 body body", want: "201 body:x body:x", state: sent},
		{name: "no status: 200 with the first byte", steps: "body", want: "200 body:x", state: sent},
		{name: "the first status holds", steps: "404 500 body", want: "404 body:x", state: sent},
		{name: "held then flushed: a stream's head", steps: "200 flush body", want: "200 flush body:x", state: sent},
		{name: "held then withheld", steps: "200 withhold body", want: "", state: withheld, writeErr: ErrWithheld},
		{name: "withheld then a late flush", steps: "200 withhold flush commit", want: "", state: withheld},
		{name: "sent then withhold fails", steps: "200 body withhold body", want: "200 body:x body:x", state: sent},
		{name: "withheld then the handler's answer", steps: "200 withhold rehold 502 body", want: "502 body:x", state: sent},
		{name: "1xx to HTTP/1.1 goes at once", steps: "103 200 body", want: "103 200 body:x", state: sent},
		{name: "1xx to HTTP/1.0: none but a 101", setup: func(w *Writer) { w.HTTP10 = true }, steps: "100 103 101 200 body", want: "101 200 body:x", state: sent},
		{name: "close said as the status goes", setup: func(w *Writer) { w.CloseConn = true }, steps: "103 204 commit", want: "103 204 close", state: sent},
		{name: "a drain begun on the way closes", setup: func(w *Writer) { w.Draining = draining }, steps: "200 drain body", want: "200 close body:x", state: sent},
		{name: "no drain, no close", setup: func(w *Writer) { w.Draining = new(atomic.Bool) }, steps: "200 body", want: "200 body:x", state: sent},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			draining.Store(false)
			s := &server{h: http.Header{}}
			w := &Writer{ResponseWriter: s}
			if c.setup != nil {
				c.setup(w)
			}
			for _, step := range strings.Fields(c.steps) {
				switch step {
				case "body":
					n, err := w.Write([]byte("x"))
					if !errors.Is(err, c.writeErr) || (err == nil) != (n == 1) {
						t.Fatalf("Write = %d, %v; want the error %v", n, err, c.writeErr)
					}
				case "withhold":
					w.Withhold()
				case "flush":
					if err := w.FlushError(); err != nil {
						t.Fatalf("FlushError: %v", err)
					}
				case "commit":
					w.Commit()
				case "drain":
					draining.Store(true)
				case "rehold":
					clear(s.h)
					w.Rehold()
				default:
					var code int
					fmt.Sscan(step, &code)
					w.WriteHeader(code)
				}
			}
			if got := strings.Join(s.log, " "); got != c.want {
				t.Errorf("the server got %q, want %q", got, c.want)
			}
			if got := w.state.Load(); got != c.state {
				t.Errorf("state %d, want %d", got, c.state)
			}
		})
	}
}

// TestWithholdOrFlush: the ReverseProxy's flush timer and the body's
// reader, on two goroutines, move the held status at once; whichever is
// first decides, and the server gets a status and its flush, or nothing.
// The interleaving is the scheduler's, the assertion holds for each;
// -race checks that the held code is read only by the winner.
func TestWithholdOrFlush(t *testing.T) {
	for range 200 {
		s := &server{h: http.Header{}}
		w := &Writer{ResponseWriter: s}
		w.WriteHeader(http.StatusOK)
		var wg sync.WaitGroup
		var withheldIt bool
		wg.Go(func() { withheldIt = w.Withhold() })
		wg.Go(func() { _ = w.FlushError() })
		wg.Wait()
		got := strings.Join(s.log, " ")
		switch {
		case withheldIt && (got != "" || !w.Withheld()):
			t.Fatalf("withheld, and the server got %q", got)
		case !withheldIt && (got != "200 flush" || !w.Sent()):
			t.Fatalf("flushed first, and the server got %q", got)
		}
	}
}
