package admin_test

import (
	"bytes"
	"io"
	"net/http/httptest"
	"testing"
	"time"
)

// TestProfilesOutlastTimeouts: a CPU profile or a trace, which begins to
// answer only after the seconds asked for, extends its server's
// ReadTimeout and WriteTimeout by them (as the sidecar's admin server
// sets both, admin.ReadTimeout and admin.WriteTimeout): it is answered
// whole, not cut at the write deadline nor cancelled at the read one.
// The timeouts are 300 ms here, the profiles 1 s and 0.6 s.
func TestProfilesOutlastTimeouts(t *testing.T) {
	profilerFree(t)
	s, _ := newServer(t)
	srv := httptest.NewUnstartedServer(s)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Config.WriteTimeout = 300 * time.Millisecond
	srv.Start()
	defer srv.Close()
	for _, tc := range []struct {
		path  string
		magic []byte
		least time.Duration
	}{
		{"/debug/pprof/profile?seconds=1", gzipMagic, time.Second},
		{"/debug/pprof/trace?seconds=0.6", []byte("go 1."), 600 * time.Millisecond},
	} {
		start := time.Now()
		resp, err := srv.Client().Get(srv.URL + tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d, %d bytes, %v", tc.path, resp.StatusCode, len(body), err)
		}
		if !bytes.HasPrefix(body, tc.magic) {
			t.Errorf("%s: %d bytes beginning %q, want %q", tc.path, len(body), body[:min(len(body), 8)], tc.magic)
		}
		if took < tc.least {
			t.Errorf("%s answered after %v: cut short of its %v", tc.path, took, tc.least)
		}
	}
}
