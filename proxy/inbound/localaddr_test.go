package inbound

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// loopbackIsLocal takes loopback for the pod's address: the unit tests'
// apps listen there, where a real pod's never count (localAddrs).
func loopbackIsLocal(a netip.Addr) bool { return a.IsLoopback() }

// fakeIfaces is a host's interface addresses that a test changes, and how
// many times they were read.
type fakeIfaces struct {
	mu    sync.Mutex
	addrs []net.Addr
	err   error
	reads int
}

func (f *fakeIfaces) list() ([]net.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return f.addrs, f.err
}

func (f *fakeIfaces) set(cidrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = nil
	for _, c := range cidrs {
		ip, n, err := net.ParseCIDR(c)
		if err != nil {
			panic(err)
		}
		n.IP = ip
		f.addrs = append(f.addrs, n)
	}
}

func (f *fakeIfaces) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

// fakeClock is an injected clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newFakeLocal(f *fakeIfaces, c *fakeClock) *localAddrs {
	return &localAddrs{every: refreshInterval, now: c.now, list: f.list}
}

// TestLocalAddrs: a redirected connection's original destination is the
// pod's only when it is one of its interfaces' addresses, loopback
// excluded: another host's (routed through the pod), the cloud metadata
// server's, loopback's are not.
func TestLocalAddrs(t *testing.T) {
	ifaces := &fakeIfaces{}
	ifaces.set("127.0.0.1/8", "::1/128", "10.9.0.2/24", "10.8.0.1/24", "fd00:9::2/64", "fe80::1/64")
	l := newFakeLocal(ifaces, &fakeClock{t: time.Unix(1000, 0)})
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"10.9.0.2", true},         // the pod's IP
		{"fd00:9::2", true},        // its IPv6 address
		{"10.8.0.1", true},         // a secondary address
		{"::ffff:10.9.0.2", true},  // the IPv4 address as an IPv6 socket sees it
		{"fe80::1%eth0", true},     // link-local, with its zone
		{"10.8.0.2", false},        // another host behind the pod
		{"fd00:9::3", false},       // another host, IPv6
		{"169.254.169.254", false}, // the cloud metadata server
		{"127.0.0.1", false},       // loopback, though an interface has it
		{"::1", false},             // IPv6 loopback
		{"127.0.0.2", false},       // loopback not on any interface
		{"0.0.0.0", false},         // unspecified
		{"::ffff:169.254.169.254", false},
	} {
		if got := l.has(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("has(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if l.has(netip.Addr{}) {
		t.Error("the zero address counts as the pod's")
	}
}

// TestLocalAddrsRefresh: the hit path never reads the interfaces; a miss
// reads them at most once per refreshInterval, so that an address the pod
// gains works once the interval has passed, while a flood of foreign
// destinations costs one read per interval.
func TestLocalAddrsRefresh(t *testing.T) {
	ifaces := &fakeIfaces{}
	ifaces.set("10.9.0.2/24")
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := newFakeLocal(ifaces, clock)
	pod, added, foreign := netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("10.9.0.3"), netip.MustParseAddr("10.8.0.2")

	if !l.has(pod) || ifaces.count() != 1 {
		t.Fatalf("first lookup: has = %v after %d reads, want true after 1", l.has(pod), ifaces.count())
	}
	for range 100 {
		l.has(pod)
		l.has(foreign)
		l.has(netip.MustParseAddr("127.0.0.1")) // loopback never reads
	}
	if n := ifaces.count(); n != 1 {
		t.Errorf("%d reads of the interfaces within one interval, want 1", n)
	}

	ifaces.set("10.9.0.2/24", "10.9.0.3/24")
	clock.t = clock.t.Add(refreshInterval / 2)
	if l.has(added) {
		t.Error("a new address was seen before the interval passed: the interfaces were read again")
	}
	clock.t = clock.t.Add(refreshInterval / 2)
	if !l.has(added) {
		t.Error("a new address is not the pod's after the interval")
	}
	if n := ifaces.count(); n != 2 {
		t.Errorf("%d reads, want 2", n)
	}
	for range 100 {
		if !l.has(added) || !l.has(pod) {
			t.Fatal("a known address missed")
		}
	}

	// A failed read keeps the set: nothing new is let in, nothing lost.
	ifaces.mu.Lock()
	ifaces.err = errors.New("no netlink")
	ifaces.mu.Unlock()
	clock.t = clock.t.Add(refreshInterval)
	if l.has(foreign) || !l.has(pod) {
		t.Error("after a failed read: foreign let in or the pod's address lost")
	}
}

// TestLocalAddrsHost: on the real host, the default check takes a
// non-loopback interface address for the pod's and never loopback.
func TestLocalAddrsHost(t *testing.T) {
	l := newLocalAddrs()
	if l.has(netip.MustParseAddr("127.0.0.1")) || l.has(netip.MustParseAddr("::1")) {
		t.Error("loopback counts as the pod's address")
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() {
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP)
		if !l.has(ip) {
			t.Errorf("the host's own %s is not local", ip)
		}
	}
}

// TestServeHTTPForeign: an HTTP connection whose original destination is
// not the pod's address (here the app's own, which the check says is
// another host's) gets no answer, and the app sees nothing.
func TestServeHTTPForeign(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "app") }),
		Config{LocalAddr: func(netip.Addr) bool { return false }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r.front+"/", nil)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Errorf("a request to another host through the inbound path got %s", resp.Status)
	}
	select {
	case req := <-r.seen:
		t.Errorf("the app saw %s %s", req.Method, req.URL)
	default:
	}
}
