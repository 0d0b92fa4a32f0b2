package field

import "testing"

func TestKnownOf(t *testing.T) {
	for i, n := range KnownNames {
		if got := KnownOf([]byte(n)); got != 1<<i {
			t.Errorf("KnownOf(%q) = %b, want %b", n, got, 1<<i)
		}
	}
	for _, n := range []string{"Content-Lengths", "Data", "content-type", "X-Request-Id", ""} {
		if got := KnownOf([]byte(n)); got != 0 {
			t.Errorf("KnownOf(%q) = %b, want 0", n, got)
		}
	}
}

func TestFactsNote(t *testing.T) {
	type line struct{ name, value string }
	for _, tc := range []struct {
		name   string
		lines  []line
		ok     bool
		has    Known
		length int64
	}{
		{"none", nil, true, 0, 0},
		{"plain", []line{{"Content-Length", "256"}, {"Content-Type", "a/b"}, {"Date", "x"}, {"X-A", "1"}}, true, ContentLength | ContentType | Date, 256},
		{"encoding", []line{{"Content-Encoding", "gzip"}}, true, ContentEncoding, 0},
		{"empty encoding first", []line{{"Content-Encoding", ""}, {"Content-Encoding", "gzip"}}, true, 0, 0},
		{"encoding then empty", []line{{"Content-Encoding", "gzip"}, {"Content-Encoding", ""}}, true, ContentEncoding, 0},
		{"two lengths", []line{{"Content-Length", "1"}, {"Content-Length", "1"}}, false, 0, 0},
		{"bad length", []line{{"Content-Length", "+1"}}, false, 0, 0},
		{"connection", []line{{"Connection", "close"}}, false, 0, 0},
		{"transfer-encoding", []line{{"Transfer-Encoding", "chunked"}}, false, 0, 0},
		{"trailer", []line{{"Trailer", "X"}}, false, 0, 0},
		{"upgrade", []line{{"Upgrade", "h2c"}}, false, 0, 0},
	} {
		var f Facts
		ok := true
		for _, l := range tc.lines {
			ok = ok && f.Note([]byte(l.name), []byte(l.value))
		}
		if ok != tc.ok || ok && (f.Has != tc.has || f.Has&ContentLength != 0 && f.Length != tc.length) {
			t.Errorf("%s: Note = %v, %b, %d; want %v, %b, %d", tc.name, ok, f.Has, f.Length, tc.ok, tc.has, tc.length)
		}
	}
}
