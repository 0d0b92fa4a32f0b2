package telemetry

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/minimesh/minimesh/proxy/internal/hexpair"
)

// AccessLog writes one JSON line per request. Lines are appended to a
// buffer under a short lock and written by a background flusher, so a
// request never waits for a write(2), nor for a slow reader of stdout:
// when the buffer is full, lines are dropped and counted.
type AccessLog struct {
	out io.Writer

	mu      sync.Mutex
	buf     []byte
	spare   []byte
	last    second // the time's second written last, under mu
	lines   int    // the lines in buf, under mu
	writing int    // the lines of the write under way, under mu
	// closed: nothing is written any more (the last flush took the
	// buffer, or Shutdown gave up waiting for a write that does not
	// return), and what is logged is dropped. Under mu.
	closed bool

	kick    chan struct{} // the buffer reached flushAt: write it now
	waiting chan struct{} // a line went into an empty buffer: write it within flushInterval
	dropped atomic.Int64
	flushes atomic.Int64 // flushes run, written or not: for tests

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

const (
	flushAt     = 32 << 10
	maxBuffered = 1 << 20
	// flushInterval is how long a line waits at most before it is
	// written (docs/operations.md). The flusher's timer runs only while a
	// line waits: a ticker woke an idle sidecar five times a second, and
	// each wake-up also woke the runtime's monitor thread, an extra
	// context switch per request at 100 requests/s (docs/benchmarks.md,
	// "Timers only while there is work").
	flushInterval = time.Second
)

// NewAccessLog starts a log writing to out.
func NewAccessLog(out io.Writer) *AccessLog {
	l := &AccessLog{
		out:     out,
		buf:     make([]byte, 0, 2*flushAt),
		spare:   make([]byte, 0, 2*flushAt),
		kick:    make(chan struct{}, 1),
		waiting: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go l.run()
	return l
}

// Entry is one request's line, or one opaque TCP connection's (Method
// empty: no request ID, method, path nor status).
type Entry struct {
	Time        time.Time
	RequestID   string
	TraceID     [16]byte
	SpanID      [8]byte
	Service     string
	Destination string
	Method      string
	Path        string
	Status      int
	Duration    time.Duration
	Attempts    int
	Breaker     string
	BytesIn     int64
	BytesOut    int64
	Error       string
	// Protocol is what detection found on a redirected connection
	// relayed as opaque TCP (docs/interception.md).
	Protocol string
	// OriginalDst is the address a redirected connection was made to.
	OriginalDst string
	// SNI is a TLS connection's server name.
	SNI string
	// Direction is "inbound" for a request or connection into the pod;
	// empty (not written) for outbound ones.
	Direction string
	// GRPCStatus is a gRPC call's status as the app got it, by name
	// (GRPCCodes); empty (not written) for other requests.
	GRPCStatus string
}

// Log appends e. It never blocks on output.
func (l *AccessLog) Log(e *Entry) {
	l.mu.Lock()
	if len(l.buf) >= maxBuffered || l.closed {
		l.mu.Unlock()
		l.dropped.Add(1)
		return
	}
	first := len(l.buf) == 0
	l.buf = e.appendJSON(l.buf, &l.last)
	l.lines++
	full := len(l.buf) >= flushAt
	l.mu.Unlock()
	switch {
	case full:
		signal(l.kick)
	case first:
		signal(l.waiting)
	}
}

// signal wakes the flusher if it is not already due to wake.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Dropped is how many lines were dropped because output could not keep
// up, or could not be written before Shutdown's end
// (minimesh_access_log_lines_dropped_total).
func (l *AccessLog) Dropped() int64 { return l.dropped.Load() }

// run writes the buffer when it reaches flushAt, and flushInterval after
// a line went into it empty; with nothing buffered it waits on no timer.
func (l *AccessLog) run() {
	defer close(l.done)
	t := newDueTimer(flushInterval)
	for {
		select {
		case <-l.waiting:
			t.arm()
			continue
		case <-t.due():
		case <-l.kick:
		case <-l.stop:
			t.disarm()
			l.flush(true)
			return
		}
		// A line logged after the flush's swap finds the buffer empty
		// and signals waiting, which arms the timer again.
		t.disarm()
		l.flush(false)
	}
}

// flush writes the buffer; the last one closes the log.
func (l *AccessLog) flush(last bool) {
	l.flushes.Add(1)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	b := l.buf
	l.buf, l.spare = l.spare[:0], nil
	l.writing, l.lines = l.lines, 0
	l.closed = last
	l.mu.Unlock()
	if len(b) > 0 {
		_, _ = l.out.Write(b)
	}
	l.mu.Lock()
	l.spare = b[:0]
	l.writing = 0
	l.mu.Unlock()
}

// Close writes what is buffered and stops the flusher, however long the
// output takes (Shutdown bounds it).
func (l *AccessLog) Close() { _ = l.Shutdown(context.Background()) }

// Shutdown writes what is buffered and stops the flusher, waiting for it
// until ctx ends. A stdout that nobody reads (a full pipe, a container
// runtime's blocking log driver) blocks the write for good, and the
// process's exit with it: then Shutdown returns at ctx's end, leaving the
// flusher in its write, and the lines of that write and those still
// buffered count as dropped (Dropped). So does a line logged after
// Shutdown, which nothing would write.
func (l *AccessLog) Shutdown(ctx context.Context) error {
	l.stopOnce.Do(func() { close(l.stop) })
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.done:
		return nil // the write ended as ctx did
	default:
	}
	// The write under way may yet end, or have ended a moment ago: its
	// lines count as dropped all the same, since a counter cannot take
	// them back.
	n := l.writing + l.lines
	l.dropped.Add(int64(n))
	l.buf, l.lines, l.writing, l.closed = l.buf[:0], 0, 0, true
	return fmt.Errorf("access log: %d lines not written, the output blocked: %w", n, context.Cause(ctx))
}

// timeLayout is the access log's time: UTC, to the microsecond.
const timeLayout = "2006-01-02T15:04:05.000000Z07:00"

// appendTime appends t as t.UTC().AppendFormat(b, timeLayout) does. The
// layout is parsed anew on every AppendFormat call, which was most of a
// line's cost (TestAppendTime, FuzzAppendTime). With last (the log's,
// under its lock), a time in the second written last costs only its
// microseconds: the date's arithmetic was a fifth of a line's cost
// (docs/benchmarks.md, "Fewer instructions per request").
func appendTime(b []byte, t time.Time, last *second) []byte {
	t = t.UTC()
	if unix := t.Unix(); last != nil && last.ok && unix == last.unix {
		b = append(b, last.text[:]...)
	} else {
		year, month, day := t.Date()
		if year < 0 || year > 9999 {
			return t.AppendFormat(b, timeLayout)
		}
		hour, minute, sec := t.Clock()
		n := len(b)
		b = appendDigits(b, year, 4)
		b = append(b, '-')
		b = appendDigits(b, int(month), 2)
		b = append(b, '-')
		b = appendDigits(b, day, 2)
		b = append(b, 'T')
		b = appendDigits(b, hour, 2)
		b = append(b, ':')
		b = appendDigits(b, minute, 2)
		b = append(b, ':')
		b = appendDigits(b, sec, 2)
		b = append(b, '.')
		if last != nil {
			last.ok, last.unix = true, unix
			copy(last.text[:], b[n:])
		}
	}
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
}

// second is the text appendTime wrote last for a time's second:
// "2006-01-02T15:04:05.".
type second struct {
	ok   bool
	unix int64
	text [20]byte
}

// appendDigits appends v, 0 <= v < 10^width, in width decimal digits.
// appendMillis appends d in milliseconds to the microsecond, as
// strconv.AppendFloat(b, float64(d.Microseconds())/1000, 'f', 3, 64) does,
// in integers: the float's formatting was a tenth of a line's cost
// (TestAppendMillis, FuzzAppendMillis).
func appendMillis(b []byte, d time.Duration) []byte {
	us := d.Microseconds()
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = appendInt(b, us/1000)
	b = append(b, '.')
	return appendDigits(b, int(us%1000), 3)
}

// appendInt is strconv.AppendInt(b, v, 10), a line's numbers (a status,
// attempts, byte counts, milliseconds) under 1,000 in a few instructions
// where AppendInt's general loop took ~60 a number.
func appendInt(b []byte, v int64) []byte {
	switch {
	case v < 0 || v >= 1000:
		return strconv.AppendInt(b, v, 10)
	case v < 10:
		return append(b, byte('0'+v))
	case v < 100:
		return append(b, byte('0'+v/10), byte('0'+v%10))
	}
	return append(b, byte('0'+v/100), byte('0'+v/10%10), byte('0'+v%10))
}

func appendDigits(b []byte, v, width int) []byte {
	n := len(b) + width
	b = append(b, "000000"[:width]...)
	for i := n - 1; v > 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}

func (e *Entry) appendJSON(b []byte, last *second) []byte {
	b = append(b, `{"time":"`...)
	b = appendTime(b, e.Time, last)
	b = append(b, '"')
	if e.Method != "" {
		b = append(b, `,"request_id":`...)
		b = appendStringMax(b, e.RequestID, maxLogField)
	}
	if e.TraceID != [16]byte{} {
		b = append(b, `,"trace_id":"`...)
		b = hexpair.AppendEncode(b, e.TraceID[:])
		b = append(b, `","span_id":"`...)
		b = hexpair.AppendEncode(b, e.SpanID[:])
		b = append(b, '"')
	}
	if e.Service != "" {
		b = append(b, `,"service":`...)
		b = appendString(b, e.Service)
	}
	if e.Direction != "" {
		b = append(b, `,"direction":`...)
		b = appendString(b, e.Direction)
	}
	b = append(b, `,"destination":`...)
	b = appendStringMax(b, e.Destination, maxLogField)
	if e.Protocol != "" {
		b = append(b, `,"protocol":`...)
		b = appendString(b, e.Protocol)
	}
	if e.OriginalDst != "" {
		b = append(b, `,"original_dst":`...)
		b = appendStringMax(b, e.OriginalDst, maxLogField)
	}
	if e.SNI != "" {
		b = append(b, `,"sni":`...)
		b = appendStringMax(b, e.SNI, maxLogField)
	}
	if e.Method != "" {
		b = append(b, `,"method":`...)
		b = appendStringMax(b, e.Method, maxLogField)
		b = append(b, `,"path":`...)
		b = appendStringMax(b, e.Path, maxLogPath)
		b = append(b, `,"status":`...)
		b = appendInt(b, int64(e.Status))
	}
	if e.GRPCStatus != "" {
		b = append(b, `,"grpc_status":`...)
		b = appendString(b, e.GRPCStatus)
	}
	b = append(b, `,"duration_ms":`...)
	b = appendMillis(b, e.Duration)
	b = append(b, `,"attempts":`...)
	b = appendInt(b, int64(e.Attempts))
	if e.Breaker != "" {
		b = append(b, `,"breaker":"`...)
		b = append(b, e.Breaker...)
		b = append(b, '"')
	}
	b = append(b, `,"bytes_in":`...)
	b = appendInt(b, e.BytesIn)
	b = append(b, `,"bytes_out":`...)
	b = appendInt(b, e.BytesOut)
	if e.Error != "" {
		b = append(b, `,"error":`...)
		b = appendStringMax(b, e.Error, maxLogField)
	}
	return append(b, "}\n"...)
}

// The longest a request's strings are written in a line, escaped, in
// bytes: a path, a method or a Host are as long as a request's head lets
// them be (64 KiB), and escaped (\u0001 for a byte) up to six times that.
// A line of 390 KB is split by the container runtime (containerd and
// Docker cut log lines at 16 KiB), and the pieces are no longer JSON to
// a log pipeline that does not join them. With these, a line stays
// under 8 KiB; a cut value ends in "…" (appendStringMax).
const (
	maxLogPath  = 2048
	maxLogField = 512
)

// appendStringMax appends s as a JSON string of at most max bytes between
// its quotes: cut where a character or an escape starts, and ended with
// "…" when cut.
func appendStringMax(b []byte, s string, max int) []byte {
	n := len(b)
	b = appendString(b, s)
	if len(b)-n-2 <= max {
		return b
	}
	b = append(b[:n], '"')
	end := n + 1 + max - len("…")
	for i := 0; i < len(s); {
		m, size := len(b), 1
		switch c := s[i]; {
		case jsonPlain[c]:
			b = append(b, c)
		case c >= utf8.RuneSelf:
			if r, sz := utf8.DecodeRuneInString(s[i:]); r == utf8.RuneError && sz == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b, size = append(b, s[i:i+sz]...), sz
			}
		default:
			b = appendEscapedByte(b, c)
		}
		if len(b) > end {
			b = b[:m]
			break
		}
		i += size
	}
	b = append(b, "…"...)
	return append(b, '"')
}

// appendString appends s as a JSON string. Paths and request IDs come
// from the app, so every control character, quote and invalid byte is
// escaped: a line can never be broken or forged.
func appendString(b []byte, s string) []byte {
	i := plainPrefix(s)
	b = append(b, '"')
	if i == len(s) {
		b = append(b, s...)
		return append(b, '"')
	}
	return appendEscaped(b, s, i)
}

// plainPrefix is how many of s's first bytes are plain (jsonPlain): all
// of them, or at most as many as are. Most of a line's strings (IDs,
// names, paths) are plain through and through: eight bytes a look, the
// last eight (overlapping) for the rest of a string of eight or more,
// where a byte at a time cost a line ~200 instructions (docs/benchmarks.md,
// "Fewer instructions per request, measured").
func plainPrefix(s string) int {
	if len(s) < 8 {
		for i := range len(s) {
			if !jsonPlain[s[i]] {
				return i
			}
		}
		return len(s)
	}
	i := 0
	for ; i+8 <= len(s); i += 8 {
		if !plainWord(load8(s[i:])) {
			return i
		}
	}
	if i < len(s) && !plainWord(load8(s[len(s)-8:])) {
		return i
	}
	return len(s)
}

// jsonPlain is the bytes that go into a JSON string as they are.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendEscaped is appendString's for s, whose first i bytes are plain,
// after the opening quote.
func appendEscaped(b []byte, s string, i int) []byte {
	start := 0
	for i < len(s) {
		c := s[i]
		if jsonPlain[c] {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		b = append(b, s[start:i]...)
		b = appendEscapedByte(b, c)
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendEscapedByte appends c, an ASCII byte not jsonPlain, escaped.
func appendEscapedByte(b []byte, c byte) []byte {
	switch c {
	case '"', '\\':
		return append(b, '\\', c)
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	p := hexpair.Of(c)
	return append(b, '\\', 'u', '0', '0', p[0], p[1])
}

// load8 is s's first eight bytes, little-endian: one load.
func load8(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// plainWord reports whether the eight bytes of x (load8) go into a JSON
// string as they are: ASCII, no control byte, quote nor backslash. The
// tests are exact: a borrow crosses into a byte only from one below it
// that matched already.
func plainWord(x uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	q, bs := x^(lo*'"'), x^(lo*'\\')
	return (x|(x-lo*0x20)&^x|(q-lo)&^q|(bs-lo)&^bs)&hi == 0
}
