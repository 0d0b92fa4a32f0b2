package main

import (
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestStartPagesLetGo: once started, the real binary lets go of the pages
// of its own file that only its start touched (internal/exepages): the
// debug line says how much address space, and it goes on serving,
// mapping again what it needs. (That the file-backed RSS falls is
// exepages' TestReleaseThisProcess; the figures are docs/benchmarks.md's.)
func TestStartPagesLetGo(t *testing.T) {
	u := newUpstream(t)
	p := local(t, "--log-level", "debug", "--resolve", geo+"="+u.addr())
	var released float64
	for _, l := range p.log.logLines() {
		if l["msg"] == "the start's pages of the binary let go" {
			released, _ = l["address_space_bytes"].(float64)
		}
	}
	if released <= 0 {
		t.Fatalf("no debug line with the address space let go, or 0:\n%s", p.log.String())
	}
	fileKB := statusKB(t, p.cmd.Process.Pid, "RssFile:")
	t.Logf("let go of %.0f bytes of address space; RssFile after ready %d kB", released, fileKB)

	resp, err := p.client().Get("http://" + geo + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from geo\n" {
		t.Fatalf("through the sidecar after the release: %d %q", resp.StatusCode, body)
	}
	if code, metrics := p.adminGet("/metrics"); code != 200 || !strings.Contains(metrics, `destination="geo-service:8000"`) {
		t.Errorf("/metrics after the release: %d\n%.2000s", code, metrics)
	}
}

// statusKB is a "NAME: N kB" line of /proc/PID/status.
func statusKB(t *testing.T, pid int, name string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return 0
}
