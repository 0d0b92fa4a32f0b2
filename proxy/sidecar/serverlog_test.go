package sidecar

import (
	"bytes"
	"encoding/json"
	"log"
	"log/slog"
	"testing"
)

// A recovered panic in a handler is an error the operator must see at the
// default level; a client's bad request line is not.
func TestServerLogLevels(t *testing.T) {
	for _, tc := range []struct{ line, level string }{
		{"http: panic serving 127.0.0.1:4242: invalid concurrent Body.Read call", "ERROR"},
		{"http: TLS handshake error from 127.0.0.1:4242: EOF", "DEBUG"},
		{"httputil: ReverseProxy read error during body copy: unexpected EOF", "DEBUG"},
	} {
		var buf bytes.Buffer
		l := log.New(serverLog{slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}, "", 0)
		l.Print(tc.line)
		var rec struct{ Level, Error string }
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatalf("%q: %v: %s", tc.line, err, buf.Bytes())
		}
		if rec.Level != tc.level || rec.Error != tc.line {
			t.Errorf("%q logged at %s as %q, want %s", tc.line, rec.Level, rec.Error, tc.level)
		}
	}
}
