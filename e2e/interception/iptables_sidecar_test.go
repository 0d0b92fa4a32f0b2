package interception_test

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/wellknown"
)

// The real rules and the real sidecar together, for each back-end: the
// rules of minimesh-proxy init (not rules written for the test), the
// sidecar running as wellknown.ProxyUID in the pod, and a client in the
// pod that knows nothing of a proxy. Its requests go through the sidecar
// (X-Request-ID and Via reach the upstream; a dead upstream is the
// sidecar's 502), and the sidecar's own connection to the upstream is not
// redirected back to it (no loop: the upstream answers once).
func TestIptablesWithSidecar(t *testing.T) {
	bin := needIPTables(t)
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			pod, peer := newPodAndPeer(t)
			pod.minimeshInit(t, bin, "--backend", be, "--ipv6", "on")

			type seen struct{ requestID, via, from string }
			got := make(chan seen, 10)
			ln := peer.listen(t, ":80")
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- seen{r.Header.Get(wellknown.HeaderRequestID), r.Header.Get("Via"), r.RemoteAddr}
				io.WriteString(w, "hello from the peer")
			})}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })

			sidecar := proc.StartT(t, "minimesh-proxy", bin, []string{"run", "--admin-addr", "127.0.0.1:" + strconv.Itoa(wellknown.AdminPort)},
				proc.Options{
					Env:        []string{"PATH=/usr/bin:/bin"},
					Dir:        "/",
					Credential: &syscall.Credential{Uid: wellknown.ProxyUID, Gid: wellknown.ProxyUID},
					Start:      func(c *exec.Cmd) error { return inNetns(pod.name, c.Start) },
				})
			// A client of the pod, as root: redirected.
			client := netnsClient(t, pod.name)
			if err := sidecar.WaitReady(10*time.Second, func() error {
				resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", wellknown.AdminPort))
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("/ready: %s", resp.Status)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}

			for _, host := range []string{peerV4.String(), "[" + peerV6.String() + "]"} {
				resp, err := client.Get("http://" + host + "/hello")
				if err != nil {
					t.Fatalf("GET %s: %v", host, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "hello from the peer" || resp.Header.Get(wellknown.HeaderRequestID) == "" {
					t.Errorf("GET %s: %s %q, X-Request-ID %q", host, resp.Status, body, resp.Header.Get(wellknown.HeaderRequestID))
				}
				select {
				case s := <-got:
					if s.requestID == "" || !strings.Contains(s.via, "minimesh") {
						t.Errorf("the upstream saw %+v: not through the sidecar", s)
					}
					if from, err := netip.ParseAddrPort(s.from); err != nil || (from.Addr() != podV4 && from.Addr() != podV6) {
						t.Errorf("the upstream saw the request from %s, want the pod", s.from)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the upstream saw no request")
				}
				select {
				case s := <-got:
					t.Errorf("the upstream saw a second request (a loop?): %+v", s)
				default:
				}
			}

			// Nothing listens on :81: the sidecar answers, not the kernel.
			resp, err := client.Get("http://" + peerV4.String() + ":81/")
			if err != nil {
				t.Fatalf("GET :81: %v (a refused connection means it did not go through the sidecar)", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorConnectFailure {
				t.Errorf("GET :81: %s, %s %q", resp.Status, wellknown.HeaderError, resp.Header.Get(wellknown.HeaderError))
			}
		})
	}
}
