package telemetry

import (
	"flag"
	"os"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// TestAccessLogLineShapes pins the lines of an explicit request, a
// redirected request and an opaque TCP connection.
func TestAccessLogLineShapes(t *testing.T) {
	at := time.Date(2026, 12, 1, 17, 0, 0, 0, time.UTC)
	entries := []Entry{
		{Time: at, RequestID: "r1", Service: "app", Destination: "geo:8000", Method: "GET", Path: "/x", Status: 200,
			Duration: 2 * time.Millisecond, Attempts: 1, Breaker: "closed", BytesOut: 2},
		{Time: at, RequestID: "r2", Service: "app", Destination: "geo:8000", OriginalDst: "198.18.0.10:8000", Method: "GET", Path: "/x", Status: 200,
			Duration: 2 * time.Millisecond, Attempts: 1, Breaker: "closed", BytesOut: 2},
		{Time: at, Service: "app", Destination: "api.example.com:443", Protocol: "tls", OriginalDst: "198.18.0.11:443", SNI: "api.example.com",
			Duration: 1500 * time.Millisecond, Attempts: 1, Breaker: "closed", BytesIn: 517, BytesOut: 4096},
		{Time: at, Service: "app", Destination: "198.18.0.12:5432", Protocol: "opaque-port", OriginalDst: "198.18.0.12:5432",
			Duration: 3 * time.Millisecond, Attempts: 2, Breaker: "open", Error: "connect-failure"},
	}
	var b []byte
	for i := range entries {
		b = entries[i].appendJSON(b, nil)
	}
	const path = "testdata/accesslog.golden"
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(b) {
		t.Errorf("lines differ from %s (go test -update):\n%s", path, b)
	}
}
