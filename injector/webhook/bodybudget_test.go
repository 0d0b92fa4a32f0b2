package webhook

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
)

// TestBodyBudgetCharge: a body being read is charged for what it sent
// (at most twice that), or firstBuffer before its first byte, never for
// the length it announces; all of it is given back when it ends.
func TestBodyBudgetCharge(t *testing.T) {
	for _, tt := range []struct {
		name     string
		length   int64
		sent     int
		min, max int64
	}{
		{"announces 8 MiB, sends nothing", MaxBodyBytes, 0, firstBuffer, firstBuffer},
		{"announces 100 bytes, sends nothing", 100, 0, 100, 100},
		{"announces 8 MiB, sends 100 KiB", MaxBodyBytes, 100 << 10, 100 << 10, 200 << 10},
		{"chunked, sends 1 MiB", -1, 1 << 20, 1 << 20, 2 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHandler()
				release := make(chan struct{})
				w := httptest.NewRecorder()
				done := make(chan struct{})
				go func() {
					defer close(done)
					h.ServeHTTP(w, stalled(tt.length, tt.sent, release))
				}()
				synctest.Wait()
				held := h.bodies.Load()
				close(release)
				<-done
				if held < tt.min || held > tt.max {
					t.Errorf("a body that sent %d bytes of %d holds %d bytes of the budget, want %d to %d", tt.sent, tt.length, held, tt.min, tt.max)
				}
				if w.Code != http.StatusBadRequest {
					t.Errorf("cut short: %d %s", w.Code, w.Body)
				}
				if n := h.bodies.Load(); n != 0 {
					t.Errorf("%d bytes of the budget still held after the request", n)
				}
			})
		})
	}
}

// TestBodyBudgetSpent: a body that would take more than is left of the
// budget is answered 429 at once; once the bodies that hold it end, the
// same request goes through.
func TestBodyBudgetSpent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHandler()
		// The slow body grows to 64 KiB, for a moment with its 32 KiB.
		h.BodyBudget = 96<<10 + 1<<10
		release := make(chan struct{})
		var slow sync.WaitGroup
		defer func() { close(release); slow.Wait() }()
		slow.Go(func() { h.ServeHTTP(httptest.NewRecorder(), stalled(MaxBodyBytes, 40<<10, release)) })
		synctest.Wait()

		// A review padded to 40 KiB: JSON allows the spaces.
		body := review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"}))
		body = append(body, bytes.Repeat([]byte{' '}, 40<<10-len(body))...)
		w := post(h, body)
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "being read") {
			t.Fatalf("with the budget held: %d %q %s", w.Code, w.Header(), w.Body)
		}
		if got := testutil.ToFloat64(h.Metrics.throttled); got != 1 {
			t.Fatalf("throttled = %v", got)
		}
		close(release)
		slow.Wait()
		release = make(chan struct{}) // for the deferred close
		if w := post(h, body); w.Code != http.StatusOK || !bytes.Contains(w.Body.Bytes(), []byte(`"patch"`)) {
			t.Fatalf("with the budget free: %d %.200s", w.Code, w.Body)
		}
		if n := h.bodies.Load(); n != 0 {
			t.Fatalf("%d bytes of the budget still held", n)
		}
	})
}
