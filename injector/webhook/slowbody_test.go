package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
)

// stalled is a request whose body announces length bytes, sends sent of
// them and then nothing until release is closed.
func stalled(length int64, sent int, release <-chan struct{}) *http.Request {
	pr, pw := io.Pipe()
	go func() {
		if sent > 0 {
			// Unblocked by the close below if never read.
			_, _ = pw.Write(bytes.Repeat([]byte{' '}, sent))
		}
	}()
	go func() {
		<-release
		pr.CloseWithError(io.ErrUnexpectedEOF)
	}()
	r := httptest.NewRequest(http.MethodPost, "/inject", pr)
	r.ContentLength = length
	return r
}

// TestSlowBodiesHoldNoSlot: requests whose bodies do not come hold no
// admission slot, so that the API server's admissions are answered at
// once, without waiting. Before, a slot was taken before the body was
// read and held while it did not come (the server's bodyTimeout, here
// for good: a recorder has no read deadline): 50 streams of one HTTP/2
// connection announcing 100 bytes and sending none made every real
// admission wait out its queue timeout and get 429, and four HTTP/1.1
// connections sending a header alone six of ten.
func TestSlowBodiesHoldNoSlot(t *testing.T) {
	for _, tt := range []struct {
		name   string
		n      int
		length int64
		sent   int
	}{
		{"50 streams announcing 100 bytes, sending none", 50, 100, 0},
		{"4 requests announcing 8 MiB, sending 1 KiB", 4, MaxBodyBytes, 1 << 10},
		{"4 chunked requests, 100 KiB sent", 4, -1, 100 << 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHandler()
				release := make(chan struct{})
				var slow sync.WaitGroup
				defer func() { close(release); slow.Wait() }()
				for range tt.n {
					slow.Go(func() {
						w := httptest.NewRecorder()
						h.ServeHTTP(w, stalled(tt.length, tt.sent, release))
					})
				}
				synctest.Wait() // every slow request is in its handler
				body := review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"}))
				for i := range 3 {
					start := time.Now()
					w := post(h, body)
					if w.Code != http.StatusOK || !bytes.Contains(w.Body.Bytes(), []byte(`"patch"`)) {
						t.Fatalf("admission %d among %d slow requests: %d %.200s", i, tt.n, w.Code, w.Body)
					}
					if d := time.Since(start); d != 0 {
						t.Fatalf("admission %d waited %v for a slot", i, d)
					}
				}
			})
		})
	}
}

// TestH2StalledStreamsStarveNothing is the probe's attack on a real
// server: 50 HTTP/2 streams that announce 100 bytes and send none, over
// and over (on one connection before; on four now, 16 streams to a
// connection), while the API server's admissions come on another. Every
// admission is answered, none 429 (before: 10 of 10 were, each after
// waiting its 2 s of queue).
func TestH2StalledStreamsStarveNothing(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	h := newHandler()
	var entered atomic.Int32
	s := &Server{
		WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CertFile: dir + "/tls.crt", KeyFile: dir + "/tls.key",
		Inject: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			entered.Add(1)
			h.ServeHTTP(w, r)
		}),
		Metrics: NewMetrics(), Log: h.Log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	w, _ := listening(t, s)

	evil := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer evil.CloseIdleConnections()
	stop := make(chan struct{})
	var attackers sync.WaitGroup
	defer func() { close(stop); attackers.Wait() }()
	const streams = 50
	for range streams {
		attackers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				pr, pw := io.Pipe()
				req, _ := http.NewRequest(http.MethodPost, "https://"+w.String()+"/inject", pr)
				req.ContentLength = 100
				go func() {
					select {
					case <-stop:
					case <-time.After(30 * time.Second):
					}
					pw.Close()
				}()
				if resp, err := evil.RoundTrip(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	for deadline := time.Now().Add(10 * time.Second); entered.Load() < streams; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stalled streams reached the handler", entered.Load(), streams)
		}
	}
	// The API server is another peer than the attacker: from 127.0.0.2,
	// so that its connection is not one of the attacker's address's share
	// (a reset under load, when the attacker's streams churn).
	legit := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true,
		DialContext: from("127.0.0.2").DialContext}}
	body := review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"}))
	for i := range 5 {
		resp, err := legit.Post("https://"+w.String()+"/inject", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`"patch"`)) {
			t.Fatalf("admission %d during the attack: %d %.200s", i, resp.StatusCode, b)
		}
	}
}
