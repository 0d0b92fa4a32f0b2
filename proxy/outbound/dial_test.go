package outbound

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestControlAddr: the Control hook's address in every form Go writes
// it, a zone included: an IPv4 address with one (from an IPv4-mapped
// spelling) was unreadable, and so went unchecked.
func TestControlAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "": an error
	}{
		{"127.0.0.1:15020", "127.0.0.1:15020"},
		{"127.0.0.1%lo:15020", "127.0.0.1:15020"},
		{"127.0.0.1%anything:1", "127.0.0.1:1"},
		{"[::1]:80", "[::1]:80"},
		{"[::1%lo]:80", "[::1%lo]:80"},
		{"[fe80::1%eth0]:80", "[fe80::1%eth0]:80"},
		{"[::%lo]:15020", "[::%lo]:15020"},
		{"10.1.2.3:65535", "10.1.2.3:65535"},
		{"10.1.2.3:65536", ""},
		{"10.1.2.3", ""},
		{"name:80", ""},
		{"%lo:80", ""},
		{"1.2.3%lo%x:80", ""},
	} {
		got, err := controlAddr(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("controlAddr(%q) = %v, want an error", tc.in, got)
		case tc.want != "" && err != nil:
			t.Errorf("controlAddr(%q): %v, want %s", tc.in, err, tc.want)
		case tc.want != "" && got.String() != tc.want:
			t.Errorf("controlAddr(%q) = %v, want %s", tc.in, got, tc.want)
		}
	}
}

// TestIsLocal: loopback and unspecified in every spelling, this host's
// own addresses, and nothing else.
func TestIsLocal(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.9.9.9", true},
		{"::1", true},
		{"::1%lo", true},
		{"::ffff:127.0.0.1", true},
		{"0.0.0.0", true},
		{"::", true},
		{"::%lo", true},
		{"::ffff:0.0.0.0", true},
		{"192.0.2.1", false},      // TEST-NET-1: never this host's
		{"2001:db8::1", false},    // documentation prefix
		{"fe80::1%nosuch", false}, // no such interface
	} {
		if got := isLocal(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("isLocal(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || p.Addr().IsLinkLocalUnicast() { // those need their zone
			continue
		}
		if !isLocal(p.Addr()) {
			t.Errorf("isLocal(%s) = false for this host's own address", p.Addr())
		}
	}
}

// isLocalEnv, set, makes the test binary run isLocalChecks instead of its
// tests (TestMain): TestIsLocalAddressAddedLater runs it inside a network
// namespace. A thread of the test process itself could enter it, but
// never leave: the runtime keeps a locked thread that ends its goroutine
// wedged when it is the main one, and /proc/net follows the main thread.
const isLocalEnv = "MINIMESH_TEST_ISLOCAL"

// isLocalChecks runs "ip=want,..." through isLocal, prints each miss and
// returns the exit status.
func isLocalChecks(spec string) int {
	status := 0
	for _, c := range strings.Split(spec, ",") {
		ip, want, _ := strings.Cut(c, "=")
		if got := isLocal(netip.MustParseAddr(ip)); strconv.FormatBool(got) != want {
			fmt.Fprintf(os.Stderr, "isLocal(%s) = %v, want %s\n", ip, got, want)
			status = 1
		}
	}
	return status
}

// TestIsLocalAddressAddedLater: in a network namespace of its own, an
// address assigned after the sidecar started, and one local only by a
// route, are the sidecar's own: its list of addresses was read once, at
// start, and missed both.
func TestIsLocalAddressAddedLater(t *testing.T) {
	ip, err := exec.LookPath("ip")
	if err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs root and ip(8) (iproute2): run make tools as root (ip: %v)", err)
		}
		t.Skip("needs root and ip(8)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("mm-self-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { run("netns", "del", name) })
	run("-n", name, "link", "set", "lo", "up")
	// in runs the checks in a process inside the namespace.
	in := func(checks string) {
		t.Helper()
		cmd := exec.Command(ip, "netns", "exec", name, self)
		cmd.Env = append(os.Environ(), isLocalEnv+"="+checks)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("in namespace %s: %v: %s", name, err, out)
		}
	}
	in("10.77.0.1=false,10.78.0.9=false,fd77::1=false,127.0.0.1=true")
	run("-n", name, "addr", "add", "10.77.0.1/32", "dev", "lo")
	run("-n", name, "addr", "add", "fd77::1/128", "dev", "lo", "nodad")
	run("-n", name, "route", "add", "local", "10.78.0.0/24", "dev", "lo")
	in("10.77.0.1=true,::ffff:10.77.0.1=true,10.78.0.9=true,fd77::1=true,fd77::1%lo=true,10.79.0.1=false")
}
