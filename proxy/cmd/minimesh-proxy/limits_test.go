package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// plainBinary is minimesh-proxy built without -race, for figures of
// memory: the race detector's shadow memory would swamp them.
var (
	plainOnce sync.Once
	plainPath string
	plainErr  error
)

func plainBinary(t *testing.T) string {
	t.Helper()
	if len(buildFlags) == 0 {
		return binary
	}
	plainOnce.Do(func() {
		plainPath = filepath.Join(filepath.Dir(binary), "minimesh-proxy-plain")
		// As make build builds the release.
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", plainPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			plainErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainPath
}

// raiseNoFile raises this process's soft RLIMIT_NOFILE to at least need,
// within the hard limit, and skips the test if the hard limit is lower.
func raiseNoFile(t *testing.T, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= need {
		return
	}
	if lim.Max < need {
		if os.Getenv("CI") == "true" {
			t.Fatalf("RLIMIT_NOFILE hard limit %d is below the %d this test needs (ulimit -Hn)", lim.Max, need)
		}
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d this test needs", lim.Max, need)
	}
	old := lim.Cur
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lim.Cur = old
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}

// rss is the resident set size of process pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// keepAlive sends one GET through the sidecar on a new connection and
// keeps the connection, idle, if the answer is a 200.
func keepAlive(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET http://"+geo+"/ HTTP/1.1\r\nHost: "+geo+"\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && (resp.StatusCode != 200 || resp.Close) {
		err = fmt.Errorf("status %d, close %v", resp.StatusCode, resp.Close)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func metricValue(t *testing.T, admin, name string, labels ...string) float64 {
	t.Helper()
	ms, err := proxytest.ScrapeMetrics(admin)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := ms.Value(name, labels...)
	if !ok {
		t.Fatalf("/metrics lacks %s%v", name, labels)
	}
	return v
}

// TestConnectionCap: 5,000 clients each open a keep-alive connection,
// send a request and keep the connection idle. The sidecar (the release
// build, default --max-connections 1024) answers the first 1,024, closes
// the other 3,976 as soon as it accepts them and counts each in
// minimesh_connections_refused_total, and its RSS stays well under the
// chart's 128 MiB memory limit.
func TestConnectionCap(t *testing.T) {
	const (
		clients = 5000
		limit   = 1024 // the default
		maxRSS  = 96 << 20
	)
	raiseNoFile(t, clients+512)
	u := newUpstream(t)
	p := startBinary(t, plainBinary(t), nil, "--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--resolve", geo+"="+u.addr(), "--access-log", "off")
	pid := p.cmd.Process.Pid

	if c, err := keepAlive(p.outbound); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	idle := rss(t, pid)

	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	refusedSeen := 0
	deadline := time.Now().Add(2 * time.Minute)
	for i := range clients {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d clients done in 2 minutes", i, clients)
		}
		c, err := keepAlive(p.outbound)
		if err != nil {
			refusedSeen++
			if len(held) < limit {
				t.Fatalf("client %d (%d held) failed under the cap: %v", i, len(held), err)
			}
			continue
		}
		held = append(held, c)
		if len(held) == limit {
			atCapRSS := rss(t, pid)
			t.Logf("RSS: %.1f MiB idle, %.1f MiB with %d idle keep-alive connections: %.1f KiB per connection",
				float64(idle)/(1<<20), float64(atCapRSS)/(1<<20), limit, float64(atCapRSS-idle)/limit/1024)
		}
	}
	final := rss(t, pid)
	t.Logf("RSS after %d clients: %.1f MiB; %d held, %d refused", clients, float64(final)/(1<<20), len(held), refusedSeen)
	if len(held) != limit || refusedSeen != clients-limit {
		t.Errorf("%d connections held and %d refused, want %d and %d", len(held), refusedSeen, limit, clients-limit)
	}
	if v := metricValue(t, p.admin, "minimesh_connections_refused_total", "listener", "outbound"); v != clients-limit {
		t.Errorf(`minimesh_connections_refused_total{listener="outbound"} = %v, want %d`, v, clients-limit)
	}
	if v := metricValue(t, p.admin, "minimesh_connections_open", "listener", "outbound"); v != limit {
		t.Errorf(`minimesh_connections_open{listener="outbound"} = %v, want %d`, v, limit)
	}
	if final > maxRSS {
		t.Errorf("RSS %d MiB with %d idle connections held, want under %d MiB", final>>20, limit, maxRSS>>20)
	}

	// The connections held still work, and their places come back when
	// they close.
	for _, c := range held[:3] {
		if _, err := io.WriteString(c, "GET http://"+geo+"/ HTTP/1.1\r\nHost: "+geo+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("a held connection's second request: %v", err)
		}
		resp.Body.Close()
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	var open float64
	if !proxytest.Poll(10*time.Second, 20*time.Millisecond, func() bool {
		open = metricValue(t, p.admin, "minimesh_connections_open", "listener", "outbound")
		return open == 0
	}) {
		t.Errorf("minimesh_connections_open = %v after the clients closed, want 0", open)
	}
	if c, err := keepAlive(p.outbound); err != nil {
		t.Errorf("a new connection after the others closed: %v", err)
	} else {
		c.Close()
	}
}

// TestMemoryLimit: without GOMEMLIMIT, the Go memory limit is 90% of the
// container's cgroup memory limit (v2 or v1 layout); GOMEMLIMIT wins;
// "max" is no limit. The runtime's own figure, go_gc_gomemlimit_bytes,
// shows it.
func TestMemoryLimit(t *testing.T) {
	const container = 128 << 20 // the chart's default limit
	for _, c := range []struct {
		name, file, content, env string
		want                     float64
		log                      string
	}{
		{"cgroup v2", "memory.max", "134217728\n", "", container / 100 * 90, "memory.max"},
		{"cgroup v1", "memory/memory.limit_in_bytes", "134217728\n", "", container / 100 * 90, "memory.limit_in_bytes"},
		{"cgroup v2 max", "memory.max", "max\n", "", float64(1<<63 - 1), "no container memory limit"},
		{"cgroup v1 unlimited", "memory/memory.limit_in_bytes", "9223372036854771712\n", "", float64(1<<63 - 1), "no container memory limit"},
		{"GOMEMLIMIT wins", "memory.max", "134217728\n", "64MiB", 64 << 20, "GOMEMLIMIT=64MiB"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			file := filepath.Join(root, c.file)
			if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
				t.Fatal(err)
			}
			proxytest.WriteFile(t, file, c.content)
			p := startProxy(t, []string{"GOMEMLIMIT=" + c.env},
				"--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--cgroup-root", root)
			if v := metricValue(t, p.admin, "go_gc_gomemlimit_bytes"); v != c.want {
				t.Errorf("go_gc_gomemlimit_bytes = %v, want %v", v, c.want)
			}
			var logged bool
			for _, m := range p.log.logLines() {
				msg, _ := m["msg"].(string)
				if strings.Contains(msg, "memory limit") && strings.Contains(fmt.Sprint(m), c.log) {
					logged = true
				}
			}
			if !logged {
				t.Errorf("no log line of the memory limit naming %q:\n%s", c.log, p.log.String())
			}
		})
	}
}

// TestNonLoopbackOutboundWarns: an outbound listener on every interface
// is reachable from the network; the sidecar says so at start.
func TestNonLoopbackOutboundWarns(t *testing.T) {
	for _, c := range []struct {
		addr string
		warn bool
	}{{"0.0.0.0:0", true}, {"127.0.0.1:0", false}, {"localhost:0", false}} {
		p := startProxy(t, nil, "--outbound-addr", c.addr, "--admin-addr", "127.0.0.1:0")
		var warned bool
		for _, m := range p.log.logLines() {
			msg, _ := m["msg"].(string)
			if m["level"] == "WARN" && strings.Contains(msg, "reachable from the network") && strings.Contains(msg, "HTTP_PROXY") {
				warned = true
			}
		}
		if warned != c.warn {
			t.Errorf("--outbound-addr %s: warned %v, want %v\n%s", c.addr, warned, c.warn, p.log.String())
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		p.wait(t, 10*time.Second)
	}
}
