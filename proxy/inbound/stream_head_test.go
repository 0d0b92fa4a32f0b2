package inbound

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestResponseHeadNotHeld: the status and the bytes the app has sent of
// a body of known length reach the caller while the rest is on its way:
// the app sends each piece only once the caller has read the one before
// (read), and notes a wait of pieceWait in vain (held). Before, such a
// body was held whole in the server's 4 KiB buffer, the status with it,
// until it ended.
func TestResponseHeadNotHeld(t *testing.T) {
	const pieceWait = 5 * time.Second // only a failing test waits it
	hundred := strings.Repeat("0123456789", 10)
	for _, tc := range []struct {
		name   string
		pieces []string
	}{
		{"first piece with the head", []string{"hello", "world"}},
		{"several small pieces", []string{hundred, hundred, hundred, hundred, hundred[:5]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			length := 0
			for _, p := range tc.pieces {
				length += len(p)
			}
			read := make(chan int, len(tc.pieces))
			var held atomic.Int32 // 1 + the piece the caller had not read in time
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(length))
				for i, p := range tc.pieces {
					if i > 0 && held.Load() == 0 {
						select {
						case <-read:
						case <-time.After(pieceWait):
							held.Store(int32(i))
						}
					}
					io.WriteString(w, p)
					w.(http.Flusher).Flush()
				}
			}), Config{})
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodGet, "http://"+r.front+"/x", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(length) {
				t.Fatalf("got %d with Content-Length %d, want the app's 200 and %d", resp.StatusCode, resp.ContentLength, length)
			}
			for i, want := range tc.pieces {
				got := make([]byte, len(want))
				if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != want {
					t.Fatalf("piece %d: %q, %v; want %q", i, got, err, want)
				}
				read <- i
			}
			if i := held.Load(); i != 0 {
				t.Errorf("the sidecar held the status and piece %d of the body until the rest came: the caller had not read them %v after the app sent them", i-1, pieceWait)
			}
		})
	}
}
