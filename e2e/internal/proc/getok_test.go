package proc

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestGetOK: only a 200 is ready; another status or no answer is not,
// and the error says which.
func TestGetOK(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		down    bool
		wantErr string
	}{
		{"ready", http.StatusOK, false, ""},
		{"not yet", http.StatusServiceUnavailable, false, "503 Service Unavailable"},
		{"no server", 0, true, "connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
			}))
			url := srv.URL + "/ready"
			if tc.down {
				srv.Close()
			} else {
				defer srv.Close()
			}
			err := GetOK(url)()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("GetOK(%s) = %v, want an error with %q (none if empty)", url, err, tc.wantErr)
			}
		})
	}
}
