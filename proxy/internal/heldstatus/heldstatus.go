// Package heldstatus holds a response's final status back until the first
// byte of its body or a flush, for the sidecar's two directions: outbound,
// the app's answer from an upstream, and inbound, a caller's answer from
// the app (docs/operations.md, "A response that fails after its headers").
//
// A peer that sends its head and then fails before any body byte has not
// yet reached the reader (the app outbound, the caller inbound), who then
// gets the sidecar's own 502 or 504 instead of a status with nothing
// after it: nobody reads a 200 ended cleanly for a body that failed. Only
// the status is held, and only until its own body starts or is flushed: a
// stream's head goes at its flush, and an early answer (written before
// the request's body has all arrived: a 401 to an upload) goes with its
// first byte, never waiting for the rest of the request.
package heldstatus

import (
	"errors"
	"net/http"
	"sync/atomic"
)

// Writer is the server's ResponseWriter with its final status held
// (WriteHeader) until the first body byte or a flush sends it (Commit),
// or until the reader of the body, finding it failed first, withholds it
// for good (Withhold) and the handler answers instead (Rehold).
//
// Each direction's writer embeds it and adds what it counts and how its
// own writes fail. Nothing here allocates, locks or calls the system
// beyond the ResponseWriter's own calls, and its fields fit 32 bytes: it
// lives in each request's state, whose size class the hot path counts.
type Writer struct {
	http.ResponseWriter
	code uint16 // the final status held; 0: none yet (WriteHeader's codes are at most 999)
	// HTTP10: the reader speaks HTTP/1.0, and may get no 1xx but a 101
	// (RFC 9110 §15.2): it would read one as the final answer.
	HTTP10 bool
	// CloseConn: the final answer says Connection: close. Set as the
	// status goes, not in the header map before: the ReverseProxy clears
	// the map after each 1xx it passes on, and a 103 would take it off.
	CloseConn bool
	// state is the held status's fate: held, sent, or withheld for good.
	// Atomic: the ReverseProxy flushes a stream's head from a timer's
	// goroutine (its copyResponse), committing the status there while the
	// handler's goroutine reads the body that may fail; whichever of the
	// two moves it first decides, so a status never goes once its body
	// failed first, and a body's failure after it went is a cut.
	state atomic.Uint32
	// Draining, when not nil and true as the status goes, closes the
	// connection too: a drain begun while the request was on its way.
	Draining *atomic.Bool
}

// The held status's states (Writer.state).
const (
	held uint32 = iota
	sent
	withheld
)

// ErrWithheld is a write after the status was withheld: it would send
// net/http's implicit 200.
var ErrWithheld = errors.New("write after the response's status was withheld")

// Sent reports whether the status went to the reader.
func (w *Writer) Sent() bool { return w.state.Load() == sent }

// Withheld reports whether the status was withheld for good.
func (w *Writer) Withheld() bool { return w.state.Load() == withheld }

// Withhold keeps the status from the reader for good, unless it went
// already: it reports whether it did. The body's reader calls it on a
// failure before the body's first byte.
func (w *Writer) Withhold() bool { return w.state.CompareAndSwap(held, withheld) }

// Code is the final status held, 0 if the handler wrote none yet.
func (w *Writer) Code() int { return int(w.code) }

// Rehold holds the status anew, with no code: the handler's own answer
// replaces one withheld, once nothing else can commit it (the
// ReverseProxy has returned).
func (w *Writer) Rehold() {
	w.code = 0
	w.state.Store(held)
}

// Bypassed records a status that went out past the Writer, a 101 written
// on the connection by a relay or a hijacker: nothing is left to send.
func (w *Writer) Bypassed() { w.state.Store(sent) }

// WriteHeader holds a final status, the first one, and passes a 1xx on at
// once (103 Early Hints, a 101 before a hijack), but to an HTTP/1.0
// reader only a 101.
func (w *Writer) WriteHeader(code int) {
	if code < 200 {
		if !w.HTTP10 || code == http.StatusSwitchingProtocols {
			w.ResponseWriter.WriteHeader(code)
		}
		return
	}
	if w.state.Load() == held && w.code == 0 {
		w.code = uint16(code)
	}
}

// Commit sends the held status, 200 if none was written, unless it is
// sent or withheld already. A load, not a compare-and-swap, for each
// write after the first: small enough to inline into Write.
func (w *Writer) Commit() {
	if w.state.Load() == held {
		w.send()
	}
}

func (w *Writer) send() {
	if !w.state.CompareAndSwap(held, sent) {
		return // withheld at that moment by the body's reader
	}
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if w.CloseConn || w.Draining != nil && w.Draining.Load() {
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(int(w.code))
}

// Write sends the status with the body's first byte; once the status is
// withheld it writes nothing and fails with ErrWithheld.
func (w *Writer) Write(p []byte) (int, error) {
	w.Commit()
	if w.Withheld() {
		return 0, ErrWithheld
	}
	return w.ResponseWriter.Write(p)
}

// FlushError sends what the server holds of the response, the status
// included: a stream's head reaches the reader as soon as it is flushed.
// A withheld status flushes nothing: net/http's flush would send a 200 of
// its own.
func (w *Writer) FlushError() error {
	w.Commit()
	if w.Withheld() {
		return nil
	}
	if f, ok := w.ResponseWriter.(interface{ FlushError() error }); ok {
		return f.FlushError()
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
		return nil
	}
	return http.ErrNotSupported
}

// Unwrap lets http.ResponseController, and the ReverseProxy through it,
// reach the server's own ResponseWriter (its Hijacker, its deadlines).
func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
