package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestAccessLogLinesAreJSON(t *testing.T) {
	var out syncBuf
	l := NewAccessLog(&out)
	e := Entry{
		Time: time.Date(2026, 11, 24, 10, 0, 0, 123456000, time.UTC), RequestID: "abc\"\n\x01",
		TraceID: [16]byte{0xab, 1}, SpanID: [8]byte{0xcd, 2},
		Service: "tenant-service", Destination: "geo-service:8000", Method: "GET",
		Path: "/search/\xff/ü", Status: 503, Duration: 1500 * time.Microsecond, Attempts: 3,
		Breaker: "open", BytesIn: 10, BytesOut: 200, Error: "circuit-open",
	}
	l.Log(&e)
	l.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("want 1 line, got %q", out.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, lines[0])
	}
	want := map[string]any{
		"time": "2026-11-24T10:00:00.123456Z", "request_id": "abc\"\n\x01",
		"trace_id": "ab010000000000000000000000000000", "span_id": "cd02000000000000",
		"service": "tenant-service", "destination": "geo-service:8000", "method": "GET",
		"path": "/search/\ufffd/ü", "status": 503.0, "duration_ms": 1.5, "attempts": 3.0,
		"breaker": "open", "bytes_in": 10.0, "bytes_out": 200.0, "error": "circuit-open",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want exactly %v", got, want)
	}
}

func TestAccessLogFlushesWithoutClose(t *testing.T) {
	var out syncBuf
	l := NewAccessLog(&out)
	defer l.Close()
	l.Log(&Entry{Time: time.Now(), RequestID: "x", Method: "GET"})
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(out.String(), `"request_id":"x"`) {
		if time.Now().After(deadline) {
			t.Fatal("line not flushed within 2s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAccessLogWritesWithinInterval holds the flusher to its schedule in
// fake time: a line is written flushInterval after it went into an empty
// buffer (a second line does not put it off), a full buffer at once, and
// an idle log runs no flush at all (the ticker it had ran five a second).
func TestAccessLogWritesWithinInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var out syncBuf
		l := NewAccessLog(&out)
		defer l.Close()
		lines := func() int { return strings.Count(out.String(), "\n") }
		idle := func() { t.Helper(); quietFor(t, time.Hour, &l.flushes, "flushes with nothing logged") }
		idle()

		l.Log(&Entry{Time: time.Now(), RequestID: "a", Method: "GET"})
		time.Sleep(flushInterval / 2)
		l.Log(&Entry{Time: time.Now(), RequestID: "b", Method: "GET"})
		time.Sleep(flushInterval/2 - time.Millisecond)
		synctest.Wait()
		if n := lines(); n != 0 {
			t.Fatalf("%d lines written before flushInterval", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := lines(); n != 2 {
			t.Fatalf("%d lines written at flushInterval after the first, want 2", n)
		}
		idle()

		// The timer starts again for the next line.
		l.Log(&Entry{Time: time.Now(), RequestID: "c", Method: "GET"})
		time.Sleep(flushInterval)
		synctest.Wait()
		if n := lines(); n != 3 {
			t.Fatalf("%d lines written flushInterval after a line following a timed flush, want 3", n)
		}
		idle()

		// A full buffer goes at once, without the timer: the line that
		// brings it to flushAt writes it and the lines before it.
		e := Entry{Time: time.Now(), RequestID: strings.Repeat("r", 1000), Method: "GET"}
		size := len(e.appendJSON(nil, nil))
		k := (flushAt + size - 1) / size
		before := lines()
		for i := range k {
			synctest.Wait()
			if n := lines() - before; n != 0 {
				t.Fatalf("%d lines written with %d of %d bytes buffered", n, i*size, flushAt)
			}
			l.Log(&e)
		}
		synctest.Wait()
		if n := lines() - before; n != k {
			t.Fatalf("%d lines written when the buffer reached %d bytes, want %d", n, flushAt, k)
		}
	})
}

// quietFor lets d of fake time pass (in a synctest bubble) and fails if
// count moved meanwhile: a background loop that should wait on no timer.
func quietFor(t *testing.T, d time.Duration, count *atomic.Int64, what string) {
	t.Helper()
	n := count.Load()
	time.Sleep(d)
	synctest.Wait()
	if got := count.Load() - n; got != 0 {
		t.Fatalf("%d %s in %v, want 0", got, what, d)
	}
}

// blockingWriter never returns, like stdout whose reader stopped.
type blockingWriter struct{ ch chan struct{} }

func (w blockingWriter) Write(p []byte) (int, error) { <-w.ch; return len(p), nil }

func TestAccessLogNeverBlocksOnStuckOutput(t *testing.T) {
	w := blockingWriter{make(chan struct{})}
	l := NewAccessLog(w)
	e := Entry{Time: time.Now(), RequestID: strings.Repeat("r", 100), Method: "GET", Path: strings.Repeat("/p", 100)}
	start := time.Now()
	for range 50000 {
		l.Log(&e)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("50k Log calls took %v with stuck output", d)
	}
	if l.Dropped() == 0 {
		t.Fatal("no line counted as dropped though output was stuck")
	}
	close(w.ch)
	l.Close()
}

func BenchmarkAccessLog(b *testing.B) {
	l := NewAccessLog(discard{})
	defer l.Close()
	e := Entry{Time: time.Now(), RequestID: "0f8fad5b-d9cb-469f-a165-70867728950e", Service: "tenant", Destination: "geo-service:8000", Method: "GET", Path: "/search", Status: 200, Attempts: 1, Breaker: "closed"}
	b.ReportAllocs()
	for b.Loop() {
		l.Log(&e)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestAppendTime: the access log's time is what AppendFormat writes with
// its layout, across digits, zones, years and the fallback.
func TestAppendTime(t *testing.T) {
	east := time.FixedZone("east", 5*3600+1800)
	for _, tm := range []time.Time{
		time.Date(2026, 12, 2, 6, 5, 9, 123456789, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, east),
		time.Date(1, 2, 3, 4, 5, 6, 7000, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Unix(0, 0),
		{},
	} {
		if got, want := string(appendTime([]byte("x"), tm, nil)), "x"+tm.UTC().Format(timeLayout); got != want {
			t.Errorf("appendTime(%v) = %q, want %q", tm, got, want)
		}
	}
	// With the log's memory of the last second: a time in it, in it
	// again in another zone, then in the next second and back.
	var last second
	base := time.Date(2026, 12, 3, 12, 34, 56, 0, time.UTC)
	for _, tm := range []time.Time{time.Unix(0, 5000), base, base.Add(999999 * time.Microsecond), base.In(time.FixedZone("east", 3600)).Add(5),
		base.Add(time.Second), base.Add(time.Second + 1), base, base.Add(24 * time.Hour), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), base} {
		if got, want := string(appendTime([]byte("x"), tm, &last)), "x"+tm.UTC().Format(timeLayout); got != want {
			t.Errorf("appendTime(%v) after the last second = %q, want %q", tm, got, want)
		}
	}
}

func FuzzAppendTime(f *testing.F) {
	f.Add(int64(1764655509), int64(123456789))
	f.Add(int64(1764655509), int64(999999999))
	f.Add(int64(0), int64(0))
	f.Fuzz(func(t *testing.T, sec, nsec int64) {
		var last second
		for _, tm := range []time.Time{time.Unix(sec, nsec), time.Unix(sec, nsec+1000), time.Unix(sec, nsec-1000), time.Unix(sec, nsec)} {
			if got, want := string(appendTime(nil, tm, &last)), tm.UTC().Format(timeLayout); got != want {
				t.Fatalf("appendTime(%d, %d) = %q, want %q", sec, nsec, got, want)
			}
			if got, want := string(appendTime(nil, tm, nil)), tm.UTC().Format(timeLayout); got != want {
				t.Fatalf("appendTime(%d, %d) without the last second = %q, want %q", sec, nsec, got, want)
			}
		}
	})
}

func BenchmarkAppendTime(b *testing.B) {
	buf := make([]byte, 0, 64)
	tm := time.Date(2026, 12, 2, 6, 5, 9, 123456789, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendTime(buf[:0], tm, nil)
	}
}

// TestAppendMillis: a duration's milliseconds as the float formatting
// wrote them, around every boundary of the integer one.
func TestAppendMillis(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 999, time.Microsecond, 999 * time.Microsecond, time.Millisecond,
		1001 * time.Microsecond, 12345678 * time.Microsecond, time.Hour, -time.Microsecond, -1500 * time.Microsecond,
		-999, 10 * 365 * 24 * time.Hour} {
		if got, want := string(appendMillis([]byte("x"), d)), "x"+strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 3, 64); got != want {
			t.Errorf("appendMillis(%v) = %q, want %q", d, got, want)
		}
	}
}

// FuzzAppendMillis: the same for any duration within 30 years either
// way (beyond, the float's own rounding errs, not the integers).
func FuzzAppendMillis(f *testing.F) {
	f.Add(int64(123456789))
	f.Fuzz(func(t *testing.T, ns int64) {
		const limit = int64(30 * 365 * 24 * time.Hour)
		if ns > limit || ns < -limit {
			return
		}
		d := time.Duration(ns)
		if got, want := string(appendMillis(nil, d)), strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 3, 64); got != want {
			t.Fatalf("appendMillis(%d) = %q, want %q", ns, got, want)
		}
	})
}

// appendStringRef is appendString a byte at a time, as first written:
// the eight-byte steps must not change a line.
func appendStringRef(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		case c < 0x20:
			b = fmt.Appendf(b, `\u%04x`, c)
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"')
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{"", "a", "4bf92f3577b34da6a3ce929d0e0e4736", "/search/\xff/ü", "abcdefg\"", "abcdefgh\\",
		"1234567\x1f", "12345678\x7f", "abcdefg\\", "\\bcdefgh", "abc\\defghijk", "abc\"defghijk", "\x00\x01\x02\x03\x04\x05\x06\x07", "ü12345678", "1234567ü", "12345678901234567\n",
		"geo-service.default.svc.cluster.local:8000", "\x80\x80\x80\x80\x80\x80\x80\x80\x80"} {
		if got, want := string(appendString([]byte("x"), s)), string(appendStringRef([]byte("x"), s)); got != want {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("/search/\xff/ü?q=\"1\"")
	f.Add("4bf92f3577b34da6a3ce929d0e0e4736\x1f")
	f.Add("ab\\cdefghij")
	f.Fuzz(func(t *testing.T, s string) {
		got := appendString(nil, s)
		if want := appendStringRef(nil, s); string(got) != string(want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("appendString(%q) = %s: not a JSON string: %v", s, got, err)
		}
	})
}

// BenchmarkAppendString: the strings of a typical line (an ID, a
// destination, a method, a path).
func BenchmarkAppendString(b *testing.B) {
	buf := make([]byte, 0, 128)
	for b.Loop() {
		buf = appendString(buf[:0], "0f8fad5b-d9cb-469f-a165-70867728950e")
		buf = appendString(buf, "geo-service:8000")
		buf = appendString(buf, "GET")
		buf = appendString(buf, "/search")
	}
}
