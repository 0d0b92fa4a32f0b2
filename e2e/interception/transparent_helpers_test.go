package interception_test

// Helpers of the transparent listener's tests (transparent_listener_test.go):
// a "pod" network namespace whose outbound TCP iptables redirects to a
// sidecar running in it as wellknown.ProxyUID, an "upstream" namespace
// across a veth pair, servers there that count what reaches them, and
// clients in the pod that know nothing of a proxy.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/wellknown"
)

// Addresses of the two namespaces: 198.18.0.0/15 outside the cluster's
// 198.18.240.0/24 and 198.19.240.0/24, and IPv6's documentation prefix.
const (
	podIP  = "198.19.77.1"
	upIP   = "198.19.77.2"
	podIP6 = "2001:db8:77::1"
	upIP6  = "2001:db8:77::2"
)

// needTransparent ends the test unless it can make namespaces and run the
// tools and the built sidecar; it returns the sidecar's path.
func needTransparent(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		proc.Unmet(t, "network namespaces, iptables and a sidecar under uid %d need root", wellknown.ProxyUID)
	}
	var missing []string
	for _, name := range []string{"ip", "iptables", "curl",
		"iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore",
		"iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore"} {
		if _, err := tools.Find(name); err != nil {
			missing = append(missing, err.Error())
		}
	}
	bin, err := tools.Binary("minimesh-proxy")
	if err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		proc.Unmet(t, "missing: %s", strings.Join(missing, "; "))
	}
	return bin
}

// netnsClient is an HTTP client whose connections are dialled in network
// namespace name, closed when the test ends.
func netnsClient(t *testing.T, name string) *http.Client {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = inNetns(name, func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// inNetns runs f on a thread inside the namespace, then returns the
// thread to the namespace it came from before releasing it: a process f
// starts keeps a live parent thread (its Pdeathsig), and sockets f opens
// stay in the namespace. It needs no *testing.T, so a Transport's dialer
// may use it.
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(self)
		fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			runtime.UnlockOSThread()
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread ends with this goroutine.
			errc <- fmt.Errorf("setns back from %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// startIn returns a proc.Options.Start that starts the command from a
// thread inside the namespace and keeps that thread (locked, parked) until
// stop is closed: the process's Pdeathsig fires when the thread that
// started it ends, and a thread released to the runtime could be taken by
// another test's locked goroutine and ended with it.
func startIn(name string, stop <-chan struct{}) func(*exec.Cmd) error {
	return func(cmd *exec.Cmd) error {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				errc <- err
				return
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err == nil {
				err = cmd.Start()
			}
			errc <- err
			<-stop
		}()
		return <-errc
	}
}

// world is the pod, the upstream namespace, the sidecar and its output.
type world struct {
	t        *testing.T
	pod, up  *netns
	sidecar  *proc.Proc
	policies string // directory
	ca       string // PEM file of the upstream TLS server's CA
}

// newWorld makes the namespaces, links them, redirects the pod's outbound
// TCP with `minimesh-proxy init` (uid 15000, loopback and the pod's own
// addresses excepted) and starts the sidecar with policies.
func newWorld(t *testing.T, bin, policies string) *world {
	t.Helper()
	return newWorldAs(t, bin, policies, wellknown.ProxyUID)
}

// newWorldAs is newWorld with the sidecar run as uid: another than the
// one the rules exempt is a misconfigured pod (loop_test.go).
func newWorldAs(t *testing.T, bin, policies string, uid uint32) *world {
	t.Helper()
	w := &world{t: t, pod: newNetns(t), up: newNetns(t)}
	run(t, "ip", "-n", w.pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", w.up.name)
	for _, c := range []struct{ ns, v4, v6 string }{{w.pod.name, podIP, podIP6}, {w.up.name, upIP, upIP6}} {
		run(t, "ip", "-n", c.ns, "addr", "add", c.v4+"/24", "dev", "eth0")
		run(t, "ip", "-n", c.ns, "addr", "add", c.v6+"/64", "dev", "eth0", "nodad")
		run(t, "ip", "-n", c.ns, "link", "set", "eth0", "up")
	}
	// The rules of the init container, not rules written for the test:
	// what the tests prove holds for the pods the injector makes.
	w.pod.minimeshInit(t, bin, "--ipv6", "on")

	// A directory the sidecar's user can read.
	dir, err := os.MkdirTemp("", "mm-transparent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policies.yaml"), []byte(policies), 0o644); err != nil {
		t.Fatal(err)
	}
	w.policies = dir

	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // after the sidecar's own cleanup stops it
	w.sidecar = proc.StartT(t, "minimesh-proxy", bin, []string{"run",
		"--admin-addr", "127.0.0.1:" + strconv.Itoa(wellknown.AdminPort),
		"--policy-dir", dir, "--log-level", "debug", "--service-name", "app", "--connect-timeout", "2s", "--drain-timeout", "2s",
	}, proc.Options{
		Env:        []string{"PATH=/usr/bin:/bin"},
		Dir:        "/",
		OutputMax:  4 << 20,
		Credential: &syscall.Credential{Uid: uid, Gid: uid},
		Start:      startIn(w.pod.name, stop),
	})
	if err := w.sidecar.WaitReady(10*time.Second, func() error {
		code, _, err := w.curl("-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15020/ready")
		if err != nil || code != "200" {
			return fmt.Errorf("/ready: %s %v", code, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return w
}

// curl runs curl in the pod as root (so redirected), with no proxy in its
// environment. It returns curl's standard output and error.
func (w *world) curl(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(find(w.t, "ip"), append([]string{"netns", "exec", w.pod.name, "curl", "-sS", "--max-time", "10"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// dial connects from the pod as root (so redirected).
func (w *world) dial(addr string) net.Conn {
	w.t.Helper()
	var c net.Conn
	if err := inNetns(w.pod.name, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	return c
}

// metrics is the sidecar's /metrics, read from the pod.
func (w *world) metrics() string {
	w.t.Helper()
	out, _, err := w.curl("http://127.0.0.1:15020/metrics")
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

// metric reads one sample of the sidecar's /metrics (0 if absent).
func (w *world) metric(series string) float64 {
	w.t.Helper()
	return seriesValue(w.metrics(), series)
}

// seriesValue is the value of series (a sample's name and labels, as
// written) in a scrape's text; 0 if absent.
func seriesValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// waitMetric polls the sidecar's /metrics until series is want; failing,
// it shows the metric's every series (a value under another label, such
// as another result, says what happened).
func (w *world) waitMetric(series string, want float64) {
	w.t.Helper()
	var got float64
	var text string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		text = w.metrics()
		if got = seriesValue(text, series); got == want {
			return
		}
	}
	name, _, _ := strings.Cut(series, "{")
	w.t.Errorf("%s = %v, want %v; its series now:\n%s", series, got, want, grepLines(text, name+"{"))
}

// accessLine waits for the sidecar's access log line (stdout) whose fields
// include want, and returns it.
func (w *world) accessLine(want map[string]any) map[string]any {
	w.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, line := range strings.Split(w.sidecar.Output(), "\n") {
			var m map[string]any
			if !strings.HasPrefix(line, `{"time"`) || json.Unmarshal([]byte(line), &m) != nil || m["level"] != nil {
				continue
			}
			match := true
			for k, v := range want {
				if fmt.Sprint(m[k]) != fmt.Sprint(v) {
					match = false
					break
				}
			}
			if match {
				return m
			}
		}
	}
	w.t.Errorf("no access log line with %v in the sidecar's output:\n%s", want, tail(w.sidecar.Output(), 4000))
	return nil
}

// debugLine waits for the sidecar's debug log of a redirected connection
// with want's fields.
func (w *world) debugLine(want map[string]any) {
	w.t.Helper()
	want["msg"] = "redirected connection"
	w.accessLineAny(want)
}

func (w *world) accessLineAny(want map[string]any) {
	w.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, line := range strings.Split(w.sidecar.Output(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			match := true
			for k, v := range want {
				if fmt.Sprint(m[k]) != fmt.Sprint(v) {
					match = false
				}
			}
			if match {
				return
			}
		}
	}
	w.t.Errorf("no log line with %v", want)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// counting counts the connections accepted on a listener.
type counting struct {
	net.Listener
	n atomic.Int64
}

func (c *counting) Accept() (net.Conn, error) {
	conn, err := c.Listener.Accept()
	if err == nil {
		c.n.Add(1)
	}
	return conn, err
}

// seen is what an upstream HTTP server saw of one request.
type seen struct {
	Path, RequestID, Via, Remote string
}

// httpUpstream serves HTTP on addr in the upstream namespace, answering
// status, and records each request.
type httpUpstream struct {
	ln *counting
	mu sync.Mutex
	r  []seen
}

func (w *world) httpUpstream(addr string, status int, h2c bool) *httpUpstream {
	w.t.Helper()
	u := &httpUpstream{ln: &counting{Listener: w.up.listen(w.t, addr)}}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.r = append(u.r, seen{r.URL.Path, r.Header.Get("X-Request-ID"), r.Header.Get("Via"), r.RemoteAddr})
		u.mu.Unlock()
		rw.WriteHeader(status)
		fmt.Fprintf(rw, "%s %d\n", r.Proto, status)
	})}
	if h2c {
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	go func() { _ = srv.Serve(u.ln) }()
	w.t.Cleanup(func() { srv.Close() })
	return u
}

func (u *httpUpstream) requests(path string) []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []seen
	for _, s := range u.r {
		if s.Path == path {
			out = append(out, s)
		}
	}
	return out
}

// tcpUpstream serves raw TCP on addr in the upstream namespace: banner
// first when not empty, then an echo until the client's end, then "bye".
func (w *world) tcpUpstream(addr, banner string) *counting {
	w.t.Helper()
	ln := &counting{Listener: w.up.listen(w.t, addr)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if banner != "" {
					_, _ = c.Write([]byte(banner))
				}
				br := bufio.NewReader(c)
				buf := make([]byte, 4096)
				for {
					n, err := br.Read(buf)
					if n > 0 {
						_, _ = c.Write(buf[:n])
					}
					if err != nil {
						break
					}
				}
				_, _ = c.Write([]byte("bye"))
			}()
		}
	}()
	return ln
}

// tlsUpstream serves HTTPS for name on addr in the upstream namespace,
// with a certificate of a fresh CA written to w.ca.
func (w *world) tlsUpstream(addr, name string) *httpUpstream {
	w.t.Helper()
	cert, caPEM := selfSigned(w.t, name)
	w.ca = filepath.Join(w.policies, "ca.pem")
	if err := os.WriteFile(w.ca, caPEM, 0o644); err != nil {
		w.t.Fatal(err)
	}
	u := &httpUpstream{ln: &counting{Listener: w.up.listen(w.t, addr)}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			u.mu.Lock()
			u.r = append(u.r, seen{r.URL.Path, r.Header.Get("X-Request-ID"), r.Header.Get("Via"), r.RemoteAddr})
			u.mu.Unlock()
			fmt.Fprintln(rw, "tls ok")
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	go func() { _ = srv.ServeTLS(u.ln, "", "") }()
	w.t.Cleanup(func() { srv.Close() })
	return u
}

// selfSigned makes a CA and a certificate for name signed by it.
func selfSigned(t *testing.T, name string) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
