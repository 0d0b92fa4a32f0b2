package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/pki"
)

// selfSigned writes a certificate for 127.0.0.1 to dir as tls.crt and
// tls.key, replacing the files atomically as a Secret volume update would.
func selfSigned(t *testing.T, dir string) *pki.Pair {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.IssueValid("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Write(dir); err != nil {
		t.Fatal(err)
	}
	return p
}

func startServer(t *testing.T, dir string, ready func() error) (*Server, context.CancelFunc, chan error) {
	t.Helper()
	m := NewMetrics()
	s := &Server{
		WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		Inject: newHandler(), Ready: ready, Metrics: m,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if w, _ := s.Addrs(); w != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not listen")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(cancel)
	return s, cancel, done
}

// served reports whether addr serves the certificate of p.
func served(t *testing.T, addr string, p *pki.Pair) bool {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Equal(p.Leaf)
}

// TestCertificateRotation: new files are served without a restart.
func TestCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	first := selfSigned(t, dir)
	s, _, _ := startServer(t, dir, nil)
	w, _ := s.Addrs()
	if !served(t, w.String(), first) {
		t.Fatal("the first certificate is not served")
	}
	second := selfSigned(t, dir)
	deadline := time.Now().Add(20 * time.Second) // watch, else the 10 s poll
	for !served(t, w.String(), second) {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was not served within 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestServerEndpointsAndShutdown(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	var notReady atomic.Bool
	notReady.Store(true)
	s, cancel, done := startServer(t, dir, func() error {
		if notReady.Load() {
			return errors.New("informer not synced")
		}
		return nil
	})
	w, a := s.Addrs()
	get := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	admin := "http://" + a.String()
	if c := get(admin + "/readyz"); c != 503 {
		t.Fatalf("/readyz before sync: %d", c)
	}
	notReady.Store(false)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/inject": 404} {
		if c := get(admin + path); c != want {
			t.Errorf("admin %s: %d, want %d", path, c, want)
		}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	client := &http.Client{Transport: tr}
	resp, err := client.Post("https://"+w.String()+"/inject", "application/json", bytes.NewReader([]byte("{")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("webhook /inject with junk: %d", resp.StatusCode)
	}
	tr.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestServerMissingCertificate(t *testing.T) {
	s := &Server{WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", CertFile: "/nonexistent/tls.crt", KeyFile: "/nonexistent/tls.key",
		Metrics: NewMetrics(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	err := s.Run(context.Background())
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("/nonexistent/tls.crt")) {
		t.Fatalf("Run = %v, want an error naming the file", err)
	}
}

// TestServerDrainsInFlight: once ctx ends neither port accepts, and an
// admission already being answered still gets its answer.
func TestServerDrainsInFlight(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	started, release := make(chan struct{}), make(chan struct{})
	s := &Server{
		WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		Inject: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			close(started)
			<-release
			_, _ = w.Write([]byte("answered"))
		}),
		Metrics: NewMetrics(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	w, a := listening(t, s)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	answer := make(chan string, 1)
	go func() {
		resp, err := client.Post("https://"+w.String()+"/inject", "application/json", bytes.NewReader([]byte("{}")))
		if err != nil {
			answer <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answer <- string(b)
	}()
	<-started
	cancel()
	refusing(t, 5*time.Second, "after ctx ended", w, a)
	close(release)
	if got := <-answer; got != "answered" {
		t.Fatalf("admission in flight got %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestServerShutdownDelay: once ctx ends, /readyz answers 503 at once
// while both ports keep serving (a new connection's admission is
// answered) until the delay has passed; then neither accepts and Run
// returns. Before, both listeners closed within a millisecond of SIGTERM,
// while the API server still routed webhook calls to the pod.
func TestServerShutdownDelay(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	delays, fire := make(chan time.Duration, 1), make(chan time.Time)
	s := &Server{
		WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		Inject: newHandler(), Metrics: NewMetrics(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ShutdownDelay: 7 * time.Second,
		after: func(d time.Duration) <-chan time.Time {
			delays <- d
			return fire
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	w, a := listening(t, s)
	// Each request on a new connection: what a call routed to the pod
	// after SIGTERM does.
	newClient := func() *http.Client {
		return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	}
	get := func(url string) (int, error) {
		resp, err := newClient().Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	admin, hook := "http://"+a.String(), "https://"+w.String()
	if c, err := get(admin + "/readyz"); c != 200 {
		t.Fatalf("/readyz before ctx ends: %d %v", c, err)
	}

	cancel()
	select {
	case d := <-delays:
		if d != 7*time.Second {
			t.Fatalf("waited %v, want the ShutdownDelay", d)
		}
	case err := <-done:
		t.Fatalf("Run returned %v without the delay", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no delay after ctx ended")
	}
	for _, url := range []string{admin + "/readyz", hook + "/readyz"} {
		if c, err := get(url); c != http.StatusServiceUnavailable {
			t.Errorf("%s while shutting down: %d %v, want 503", url, c, err)
		}
	}
	for _, url := range []string{admin + "/healthz", admin + "/metrics", hook + "/healthz"} {
		if c, err := get(url); c != 200 {
			t.Errorf("%s while shutting down: %d %v, want 200", url, c, err)
		}
	}
	// A client that keeps connections alive is told to close this one
	// after the answer, so that its next call dials again (and meets a
	// pod that is not going).
	keepAlive := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := keepAlive.Post(hook+"/inject", "application/json",
		bytes.NewReader(review(t, "shop", "CREATE", "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"}))))
	if err != nil {
		t.Fatalf("admission while shutting down: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"patch"`)) {
		t.Fatalf("admission while shutting down: %d %s", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Error("an admission while shutting down kept its connection alive, want Connection: close")
	}

	close(fire)
	refusing(t, 20*time.Second, "after the delay", w, a)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after the delay")
	}
}

// listening waits for s to listen and returns its webhook and admin
// addresses.
func listening(t *testing.T, s *Server) (webhook, admin net.Addr) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); webhook == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("server did not listen")
		}
		webhook, admin = s.Addrs()
	}
	return webhook, admin
}

// refusing waits, for at most within, until every one of addrs refuses
// connections; when says after what, for the failure.
func refusing(t *testing.T, within time.Duration, when string, addrs ...net.Addr) {
	t.Helper()
	for _, addr := range addrs {
		for deadline := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				t.Fatalf("%s still accepts %s", addr, when)
			}
		}
	}
}
