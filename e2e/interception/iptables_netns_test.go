package interception_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// backends are iptables' two kernel interfaces; every test runs on both.
var backends = []string{"legacy", "nft"}

// needIPTables ends the test (proc.Unmet) unless it can make network
// namespaces and run iptables' programs of both back-ends and the built
// minimesh-proxy; it returns minimesh-proxy's path.
func needIPTables(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		proc.Unmet(t, "network namespaces and iptables need root")
	}
	var missing []string
	for _, name := range []string{"ip", "bash",
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

var netnsSeq atomic.Int64

// netns is a network namespace made for one test, as a pod's: loopback up
// and nothing else until the test adds it.
type netns struct{ name string }

// netnsPrefix starts the name of every namespace the tests make:
// MINIMESH_NETNS_PREFIX, so that runs sharing a host can tell theirs
// apart, else "mm-ipt-".
func netnsPrefix() string {
	if p := os.Getenv("MINIMESH_NETNS_PREFIX"); p != "" {
		return p
	}
	return "mm-ipt-"
}

// newNetns makes a network namespace with a name no other run uses, and
// removes it when the test ends, failed or not.
func newNetns(t *testing.T) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("%s%d-%d", netnsPrefix(), os.Getpid(), netnsSeq.Add(1))}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command(find(t, "ip"), "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	run(t, "ip", "-n", n.name, "link", "set", "lo", "up")
	return n
}

func find(t *testing.T, name string) string {
	t.Helper()
	p, err := tools.Find(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// run runs a tool (found by tools.Find) and returns its standard output;
// a failure ends the test with the tool's own message.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runErr(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(find(t, name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// exec runs a program inside the namespace (ip netns exec) and returns its
// standard output.
func (n *netns) exec(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", n.name}, args...)...)
}

func (n *netns) execErr(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runErr(t, "ip", append([]string{"netns", "exec", n.name}, args...)...)
}

// init runs `minimesh-proxy init` in the namespace and returns its
// standard output.
func (n *netns) minimeshInit(t *testing.T, bin string, args ...string) string {
	t.Helper()
	return n.exec(t, append([]string{bin, "init"}, args...)...)
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save is every table of one back-end and family in the namespace, as
// iptables-save prints it, without its dated comments and with the
// counters zeroed. Without -t, iptables-legacy-save creates no table.
func (n *netns) save(t *testing.T, backend string, v6 bool) string {
	t.Helper()
	prog := "iptables-" + backend + "-save"
	if v6 {
		prog = "ip6" + prog[2:]
	}
	out := n.exec(t, find(t, prog))
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, counters.ReplaceAllString(l, "[0:0]"))
		}
	}
	return strings.Join(lines, "\n")
}

// saveAll is save of both back-ends and both families.
func (n *netns) saveAll(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, be := range backends {
		for _, v6 := range []bool{false, true} {
			fmt.Fprintf(&b, "== %s ipv6=%v\n%s\n", be, v6, n.save(t, be, v6))
		}
	}
	return b.String()
}

// minimeshLines is what of a save names a MINIMESH_ chain: the chains, the
// jumps to them, their rules.
func minimeshLines(saved string) []string {
	var out []string
	for _, l := range strings.Split(saved, "\n") {
		if strings.Contains(l, "MINIMESH_") {
			out = append(out, l)
		}
	}
	return out
}

// goldenFile is a golden file of proxy/iptables (testdata/NAME): the
// iptables-restore input of one configuration and family.
func goldenFile(t *testing.T, name string) string {
	t.Helper()
	root, err := tools.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "proxy", "iptables", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// goldenLines is the chain declarations and rules of a golden file: what
// iptables-save must show after init.
func goldenLines(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(goldenFile(t, name), "\n") {
		if strings.HasPrefix(l, ":") || strings.HasPrefix(l, "-A ") {
			out = append(out, l)
		}
	}
	return out
}

// do runs f on an OS thread that has entered the namespace: sockets f
// opens belong to the namespace (and stay there, usable from any
// goroutine), and processes f starts run in it. The thread is never
// unlocked, so it ends with its goroutine rather than serve others from
// inside the namespace.
func (n *netns) do(t *testing.T, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// listen opens a TCP listener in the namespace, closed when the test ends
// (before the namespace is removed).
func (n *netns) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	n.do(t, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from the namespace as the test's user (root) and writes
// token.
func (n *netns) dial(t *testing.T, addr, token string) {
	t.Helper()
	var c net.Conn
	n.do(t, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(token)); err != nil {
		t.Fatal(err)
	}
}

// dialAs connects from the namespace as uid:gid (bash's /dev/tcp in a
// process started with those credentials) and writes token. It returns
// once the connection is made and the token written; the process stays
// until the test ends, so that the connection stays open.
func (n *netns) dialAs(t *testing.T, uid uint32, ip netip.Addr, port int, token string) {
	t.Helper()
	script := fmt.Sprintf("exec 3<>/dev/tcp/%s/%d || exit 1; printf %%s %s >&3; echo sent; read -r _ <&0", ip, port, token)
	cmd := exec.Command(find(t, "bash"), "-c", script)
	// No Pdeathsig: it fires when the thread that started the process
	// ends, and do's thread ends at once. When the test dies instead, its
	// end of stdin closes and read returns.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Dir = "/"
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n.do(t, cmd.Start)
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait() //nolint:errcheck // killed
	})
	line := make([]byte, 5)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "sent\n" {
		cmd.Wait() // stderr is complete once the process is reaped
		t.Fatalf("bash as uid %d connecting to %s port %d: %q, %v; stderr: %s", uid, ip, port, line, err, stderr.String())
	}
}

// sendUDP sends one datagram from the namespace.
func (n *netns) sendUDP(t *testing.T, addr, token string) {
	t.Helper()
	n.do(t, func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(token))
		return err
	})
}

// accept waits (up to 10 s) for the connection that carries token on ln:
// the positive sign that a connection went where the rules send it.
func accept(t *testing.T, ln net.Listener, token string) *net.TCPConn {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("waiting on %s for the connection with %q: %v", ln.Addr(), token, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(token))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != token {
		t.Fatalf("on %s: read %q, %v; want %q (a connection meant for somewhere else arrived here)", ln.Addr(), buf, err, token)
	}
	return c.(*net.TCPConn)
}

// originalDst is the destination a redirected connection was addressed to
// (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST): what the sidecar reads.
func originalDst(t *testing.T, c *net.TCPConn) netip.AddrPort {
	t.Helper()
	const soOriginalDst = 80 // SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	v6 := c.LocalAddr().(*net.TCPAddr).IP.To4() == nil
	var got netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			var sa unix.RawSockaddrInet6
			size := uint32(unsafe.Sizeof(sa))
			if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IPV6, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0); e != 0 {
				serr = e
				return
			}
			p := (*[2]byte)(unsafe.Pointer(&sa.Port))
			got = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
			return
		}
		var sa unix.RawSockaddrInet4
		size := uint32(unsafe.Sizeof(sa))
		if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0); e != 0 {
			serr = e
			return
		}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		got = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		t.Fatalf("SO_ORIGINAL_DST of %s → %s: %v", c.RemoteAddr(), c.LocalAddr(), err)
	}
	return got
}
