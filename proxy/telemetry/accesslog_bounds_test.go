package telemetry

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestAccessLogLineIsBounded: a request's path, method and Host are as
// long as its head lets them be (64 KiB), and a path of %01s is written
// \u0001 each: lines of 120 KB and more (390 KB at most), which the
// container runtime cuts at 16 KiB into pieces that are not JSON. A line
// now stays under 8 KiB, valid JSON, each long value cut where a
// character starts and ended with "…".
func TestAccessLogLineIsBounded(t *testing.T) {
	var out syncBuf
	l := NewAccessLog(&out)
	long := func(unit string) string { return strings.Repeat(unit, 64<<10/len(unit)) }
	entries := []Entry{
		{Method: long("A"), Path: long("\x01"), Destination: long("h") + ":80", RequestID: strings.Repeat(`"`, 128)},
		{Method: "GET", Path: "/" + long("é"), Destination: "geo:80", RequestID: "x"},
		{Method: "GET", Path: "/" + long("\xff"), Destination: "geo:80", RequestID: "x", Error: long("e")},
		{Destination: long("d"), Protocol: "tls", SNI: long("s"), OriginalDst: long("o")}, // an opaque connection's
	}
	for i := range entries {
		entries[i].Time = time.Unix(0, 0)
		l.Log(&entries[i])
	}
	l.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != len(entries) {
		t.Fatalf("%d lines for %d entries (lines past the 1 MiB backlog are dropped)", len(lines), len(entries))
	}
	for i, line := range lines {
		if len(line) > 8<<10 {
			t.Errorf("line %d is %d bytes, want at most 8 KiB", i, len(line))
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%.200s", i, err, line)
		}
		for _, k := range []string{"path", "method", "destination", "sni", "original_dst", "error"} {
			v, ok := got[k].(string)
			if !ok || len(v) < 100 {
				continue
			}
			if !strings.HasSuffix(v, "…") {
				t.Errorf("line %d: %s of %d bytes is not marked cut", i, k, len(v))
			}
		}
	}
	var first map[string]any
	_ = json.Unmarshal([]byte(lines[0]), &first)
	if p := first["path"].(string); !strings.HasPrefix(p, "\x01\x01\x01") {
		t.Errorf("path %.20q: not the path's start", p)
	}
	if id := first["request_id"].(string); id != strings.Repeat(`"`, 128) {
		t.Errorf("a valid 128-byte request ID is written as %q", id)
	}
}

// TestAppendStringMax: a value within the bound is written as
// appendString writes it; a longer one is a prefix of it, cut where a
// character or an escape starts, "…" after, within max bytes.
func TestAppendStringMax(t *testing.T) {
	for _, s := range []string{"", "/search", strings.Repeat("a", 512), strings.Repeat("a", 513), strings.Repeat("\x01", 86),
		strings.Repeat("\x01", 85) + "ab", strings.Repeat("é", 300), strings.Repeat("\xff", 200), "/" + strings.Repeat("😀", 200)} {
		checkAppendStringMax(t, s, 512)
	}
}

func FuzzAppendStringMax(f *testing.F) {
	f.Add("/search/\xff/ü?q=\"1\"", 8)
	f.Add(strings.Repeat("\x01", 20), 13)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 6 || max > 1<<16 {
			return
		}
		checkAppendStringMax(t, s, max)
	})
}

func checkAppendStringMax(t *testing.T, s string, max int) {
	t.Helper()
	full := string(appendString([]byte("x"), s))
	got := string(appendStringMax([]byte("x"), s, max))
	if len(full)-3 <= max {
		if got != full {
			t.Fatalf("appendStringMax(%q, %d) = %s, want %s", s, max, got, full)
		}
		return
	}
	if len(got)-3 > max {
		t.Fatalf("appendStringMax(%.20q, %d): %d bytes between the quotes", s, max, len(got)-3)
	}
	var v string
	if err := json.Unmarshal([]byte(got[1:]), &v); err != nil {
		t.Fatalf("appendStringMax(%.20q, %d) = %s: not JSON: %v", s, max, got, err)
	}
	if !strings.HasSuffix(got, `…"`) || !strings.HasPrefix(full, strings.TrimSuffix(got, `…"`)) || !utf8.ValidString(v) {
		t.Fatalf("appendStringMax(%.20q, %d) = %s: not a cut of %.40s", s, max, got, full)
	}
}
