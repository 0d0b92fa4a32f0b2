package interception_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/wellknown"
)

// linkLocal waits (DAD on a new veth takes a second or two) for dev's
// IPv6 link-local address in the namespace to be usable, and returns it.
func linkLocal(t *testing.T, n *netns, dev string) netip.Addr {
	t.Helper()
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out = run(t, "ip", "-n", n.name, "-6", "-o", "addr", "show", "dev", dev, "scope", "link")
		if strings.Contains(out, "tentative") {
			continue
		}
		for _, f := range strings.Fields(out) {
			if p, err := netip.ParsePrefix(f); err == nil && p.Addr().IsLinkLocalUnicast() {
				return p.Addr()
			}
		}
	}
	t.Fatalf("no usable link-local address on %s in %s: %q", dev, n.name, out)
	return netip.Addr{}
}

// With the pod's IPv6 rules in place, its link-local addresses keep
// working both ways. Outbound, a connection to the peer's fe80:: address
// goes around the sidecar (REDIRECT to ::1 of a link-local destination is
// dropped by the kernel: it hung in SYN-SENT). Inbound, a request to the
// pod's fe80:: address goes through the sidecar, which dials the app back
// at that address with its zone (without one the dial failed: 502
// connect-failure, "invalid argument").
func TestIptablesLinkLocal(t *testing.T) {
	p := newInboundPod(t, 1024) // --capture-inbound, IPv6 rules (the pod has a ULA)
	podLL, peerLL := linkLocal(t, p.pod, "mm0"), linkLocal(t, p.peer, "mm1")

	t.Run("outbound", func(t *testing.T) {
		ln := p.peer.listen(t, "[::]:9443")
		p.pod.dial(t, fmt.Sprintf("[%s%%mm0]:9443", peerLL), "link-local-out")
		c := accept(t, ln, "link-local-out")
		// From the app's own socket, not the sidecar's: the peer sees the
		// pod's link-local address and the app's port, and the sidecar
		// logged nothing for it.
		if ra := c.RemoteAddr().(*net.TCPAddr); !ra.IP.Equal(podLL.AsSlice()) {
			t.Errorf("the peer saw the connection from %s, want the pod's %s", ra, podLL)
		}
		if strings.Contains(p.sidecar.Output(), ":9443") {
			t.Errorf("the sidecar saw the link-local connection:\n%s", grepLines(p.sidecar.Output(), ":9443"))
		}
	})

	t.Run("inbound", func(t *testing.T) {
		url := fmt.Sprintf("http://[%s%%25mm1]:8090/link-local", podLL)
		resp, err := p.get(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := p.appSaw("/link-local")
		if s.requestID == "" || resp.Header.Get(wellknown.HeaderRequestID) != s.requestID {
			t.Errorf("the app saw X-Request-ID %q, the caller got %q: not through the sidecar", s.requestID, resp.Header.Get(wellknown.HeaderRequestID))
		}
		want := fmt.Sprintf("[%s%%mm0]:8090", podLL)
		if l := p.accessLine(t, map[string]any{"path": "/link-local"}); l != nil && (l["direction"] != "inbound" || l["original_dst"] != want || l["status"] != float64(200)) {
			t.Errorf("access log line %v: want inbound, original_dst %s, 200", l, want)
		}
	})
}

// A sidecar moved off 15020 (proxy.adminPort 9901, init --admin-port 9901)
// leaves 15020 to the app, and the app's 15020 is captured like any other
// port: a request there goes through the sidecar, where it went around it
// (init skipped 15020 whatever the admin port). The admin port itself is
// still reached directly.
func TestInboundAdminPortMoved(t *testing.T) {
	bin := needIPTables(t)
	pod, peer := newPodAndPeer(t)
	pod.minimeshInit(t, bin, "--capture-inbound", "--admin-port", "9901")

	seen := make(chan string, 10)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get(wellknown.HeaderRequestID)
		io.WriteString(w, "the app on 15020\n")
	})}
	go app.Serve(pod.listen(t, "0.0.0.0:15020"))
	t.Cleanup(func() { app.Close() })

	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	sidecar := proc.StartT(t, "minimesh-proxy", bin, []string{"run",
		"--inbound-addr", fmt.Sprintf(":%d", wellknown.InboundPort), "--admin-addr", ":9901",
		"--service-name", "app", "--drain-timeout", "2s",
	}, proc.Options{
		Env:        []string{"PATH=/usr/bin:/bin"},
		Dir:        "/",
		OutputMax:  1 << 20,
		Credential: &syscall.Credential{Uid: wellknown.ProxyUID, Gid: wellknown.ProxyUID},
		Start:      startIn(pod.name, stop),
	})
	client := netnsClient(t, peer.name)
	get := func(port int, path string) (*http.Response, string, error) {
		resp, err := client.Get(fmt.Sprintf("http://%s:%d%s", podV4, port, path))
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}
	// The admin port, from the peer: not redirected.
	if err := sidecar.WaitReady(15*time.Second, func() error {
		resp, _, err := get(9901, "/ready")
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("/ready: %s", resp.Status)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	resp, body, err := get(wellknown.AdminPort, "/app")
	if err != nil || body != "the app on 15020\n" {
		t.Fatalf("GET :15020/app: %q, %v", body, err)
	}
	select {
	case id := <-seen:
		if id == "" || resp.Header.Get(wellknown.HeaderRequestID) != id {
			t.Errorf("the app on 15020 saw X-Request-ID %q, the caller got %q: around the sidecar", id, resp.Header.Get(wellknown.HeaderRequestID))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the app saw no request")
	}
	w := &world{t: t, sidecar: sidecar}
	w.accessLine(map[string]any{"direction": "inbound", "destination": "15020", "path": "/app", "status": 200})
}
