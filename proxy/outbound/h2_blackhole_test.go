//go:build linux

package outbound_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/wellknown"
)

// blackholeEnv, set to a TCP_USER_TIMEOUT (a time.Duration), makes
// TestH2UpstreamBlackholed run its scenario with it: the test re-runs
// itself so inside a network namespace of its own, whose iptables rules it
// may change. Run by hand with 30s, it measures the real figure.
const blackholeEnv = "MINIMESH_TEST_BLACKHOLE_NETNS"

// TestH2UpstreamBlackholed: a new call placed on a kept h2c connection
// whose upstream went silent (its packets dropped, as when its node is
// gone) fails within the connection's TCP_USER_TIMEOUT. The sidecar PINGs
// an upstream only after 5 min 10 s without a frame, and Linux sends no
// keepalive probe while the call's HEADERS go unacknowledged: the call
// hung about 5 min 25 s. The figure is scaled (2 s for 30 s).
func TestH2UpstreamBlackholed(t *testing.T) {
	if v := os.Getenv(blackholeEnv); v != "" {
		ut, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", blackholeEnv, v, err)
		}
		blackholed(t, ut)
		return
	}
	var missing []string
	for _, tool := range []string{"unshare", "ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if os.Geteuid() != 0 || len(missing) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs root, unshare(1), ip(8) and iptables(8): run make tools as root (missing: %v)", missing)
		}
		t.Skip("needs root, unshare(1), ip(8) and iptables(8)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", self, "-test.run=^TestH2UpstreamBlackholed$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), blackholeEnv+"=2s")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// blackholed is TestH2UpstreamBlackholed's scenario, in its namespace.
func blackholed(t *testing.T, userTimeout time.Duration) {
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")
	outbound.SetH2UpstreamUserTimeout(userTimeout)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	sc := startSidecar(t, "", resolve(ln.Addr().String(), healthSvc), withRequestBodyTimeout(-1))
	c := h2cClient(t)
	type answer struct {
		code int
		kind string // X-Minimesh-Error
		err  error
	}
	get := func() answer {
		req, err := http.NewRequest("GET", "http://"+sc.Addr+"/x", nil)
		if err != nil {
			return answer{err: err}
		}
		req.Host = healthSvc
		resp, err := c.Do(req)
		if err != nil {
			return answer{err: err}
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return answer{code: resp.StatusCode, kind: resp.Header.Get(wellknown.HeaderError), err: err}
	}
	if a := get(); a.code != http.StatusOK || a.err != nil {
		t.Fatalf("before the black hole: %d %v", a.code, a.err)
	}
	// The upstream's port goes silent both ways; the sidecar keeps its
	// connection, on which the next call goes.
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP")
	run("iptables", "-A", "INPUT", "-p", "tcp", "--sport", port, "-j", "DROP")

	start := time.Now()
	done := make(chan answer, 1)
	go func() { done <- get() }()
	// Retransmissions end at the user timeout; the bound leaves room for
	// the last one's timer and a loaded machine, far below the 5 min the
	// call waited without it.
	bound := userTimeout + 8*time.Second
	select {
	case a := <-done:
		took := time.Since(start)
		t.Logf("answered after %v: %d %q %v", took.Round(time.Millisecond), a.code, a.kind, a.err)
		// The connection lost, as when a PING went unanswered: not a
		// timeout of the call's (504, which gRPC reads DEADLINE_EXCEEDED).
		if a.err != nil || a.code != http.StatusBadGateway || a.kind != wellknown.ErrorReset {
			t.Errorf("the black-holed upstream's call answered %d %q (%v), want 502 %q", a.code, a.kind, a.err, wellknown.ErrorReset)
		}
		if took < userTimeout/2 {
			t.Errorf("failed after %v, before the user timeout %v: not its doing", took, userTimeout)
		}
	case <-time.After(bound):
		t.Fatalf("the call to a black-holed upstream had no answer within %v (TCP_USER_TIMEOUT %v)", bound, userTimeout)
	}
}
