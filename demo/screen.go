package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// screen writes the demo's output: one line per request, banners, the
// summary. Colours only when writing to a terminal (and NO_COLOR unset).
type screen struct {
	mu    sync.Mutex
	w     io.Writer
	color bool
}

func newScreen(w io.Writer) *screen {
	return &screen{w: w, color: isTerminal(w) && os.Getenv("NO_COLOR") == ""}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

const (
	bold    = "1"
	dim     = "2"
	red     = "31"
	green   = "32"
	yellow  = "33"
	blue    = "34"
	magenta = "35"
	cyan    = "36"
)

// paint wraps s in an ANSI colour when colours are on.
func (s *screen) paint(code, text string) string {
	if !s.color || code == "" {
		return text
	}
	return "\x1b[" + code + "m" + text + "\x1b[0m"
}

// pad pads text to width, then paints it (escapes do not count in width).
func (s *screen) pad(code, text string, width int) string {
	if n := len([]rune(text)); n < width {
		text += strings.Repeat(" ", width-n)
	}
	return s.paint(code, text)
}

func (s *screen) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format, args...)
}

// banner announces a change of the upstream's behaviour or of the breaker.
func (s *screen) banner(elapsed time.Duration, code, text string) {
	s.printf("%s %s\n", s.paint(dim, fmt.Sprintf("%6.2fs", elapsed.Seconds())),
		s.paint(code+";"+bold, "── "+text+" ──"))
}

const columns = "   time    #  request-id           status  x-minimesh-error  latency   breaker (GET /debug/breakers)"

// requestLine is one request of the tenant, as it ended.
func (s *screen) requestLine(r *outcome) {
	var b strings.Builder
	b.WriteString(s.paint(dim, fmt.Sprintf("%6.2fs", r.Done.Seconds())))
	fmt.Fprintf(&b, " %4d  ", r.N)

	id := r.RespID
	switch {
	case r.Err != nil:
		id = "-"
	case id == "":
		id = "(none!)"
	case r.SentID == "":
		id = shortID(id) + " (sidecar)"
	}
	b.WriteString(s.pad("", id, 21))

	status, code := "err", red
	switch {
	case r.Err != nil:
	case r.Status == 200:
		status, code = "200", green
	case r.MeshErr == "circuit-open":
		status, code = fmt.Sprint(r.Status), yellow
	case r.MeshErr != "":
		status, code = fmt.Sprint(r.Status), magenta
	default:
		status = fmt.Sprint(r.Status)
	}
	b.WriteString(s.pad(code, status, 8))
	meshErr := r.MeshErr
	if meshErr == "" {
		meshErr = "-"
	}
	b.WriteString(s.pad(code, meshErr, 18))
	b.WriteString(s.pad("", fmtLatency(r.Latency), 10))
	b.WriteString(s.breakerText(r.Breaker, r.BreakerErr))

	switch {
	case r.Err != nil:
		b.WriteString(s.paint(red, "  "+r.Err.Error()))
	case r.MeshErr == "circuit-open":
		b.WriteString(s.paint(dim, "  ← fast-fail, nominatim not called"))
	case r.MeshErr == "timeout":
		b.WriteString(s.paint(dim, "  ← nominatim did not answer in 2s"))
	case r.Status == 200 && len(r.Places) > 0:
		b.WriteString(s.paint(dim, fmt.Sprintf("  %s → %s,%s", r.Bakery, r.Places[0].Lat, r.Places[0].Lon)))
	case r.Status != 200 && r.MeshErr == "":
		b.WriteString(s.paint(dim, "  ← nominatim's own answer, passed through"))
	}
	s.printf("%s\n", b.String())
}

// breakerText shows a breaker's state after a request.
func (s *screen) breakerText(v *breakerView, err error) string {
	switch {
	case err != nil:
		return s.paint(red, "? "+err.Error())
	case v == nil:
		return s.paint(dim, "(no breaker yet)")
	}
	c := v.Counts
	switch v.State {
	case "closed":
		t := s.paint(green, "closed")
		if c.ConsecutiveFailures > 0 {
			t += s.paint(dim, fmt.Sprintf("  %d/5 failures in a row", c.ConsecutiveFailures))
		}
		return t
	case "open":
		t := s.paint(red+";"+bold, "OPEN")
		if u := v.openUntil(); !u.IsZero() {
			if d := time.Until(u); d > 0 {
				t += s.paint(dim, fmt.Sprintf("  half-open in %.1fs", d.Seconds()))
			}
		}
		return t
	case "half-open":
		return s.paint(yellow+";"+bold, "HALF-OPEN") +
			s.paint(dim, fmt.Sprintf("  %d/2 probes ok", c.ConsecutiveSuccesses))
	}
	return s.paint(red, v.State)
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func fmtLatency(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
