package main

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestInboundFirstByteTimeoutFlag: --inbound-first-byte-timeout (or
// MINIMESH_INBOUND_FIRST_BYTE_TIMEOUT) is the inbound no-data relay's
// limit (proxy/inbound's TestNoDataClosedAtLimit holds a relay to it):
// the sidecar starts with it set either way; zero, a negative value or
// no duration stops the start with status 2, naming the flag or the
// variable; -h lists it with its default, 10s. Before 2026-12-06 the
// limit was fixed, and the flag unknown.
func TestInboundFirstByteTimeoutFlag(t *testing.T) {
	base := []string{"--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--inbound-addr", "127.0.0.1:0"}
	for _, c := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"--inbound-first-byte-timeout", "250ms"}},
		{[]string{"MINIMESH_INBOUND_FIRST_BYTE_TIMEOUT=2s"}, nil},
	} {
		p := startProxy(t, c.env, append(base, c.args...)...)
		if code, _ := p.adminGet("/ready"); code != http.StatusOK {
			t.Errorf("%v %v: /ready %d", c.env, c.args, code)
		}
	}
	for _, c := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--inbound-first-byte-timeout", "0"}, "--inbound-first-byte-timeout 0s"},
		{nil, []string{"--inbound-first-byte-timeout", "-1s"}, "--inbound-first-byte-timeout -1s"},
		{nil, []string{"--inbound-first-byte-timeout", "soon"}, "-inbound-first-byte-timeout"},
		{[]string{"MINIMESH_INBOUND_FIRST_BYTE_TIMEOUT=soon"}, nil, "MINIMESH_INBOUND_FIRST_BYTE_TIMEOUT"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, binary, append(append([]string{"run"}, base...), c.args...)...)
		cmd.Env = childEnv(c.env...)
		out, err := cmd.CombinedOutput()
		cancel()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%v %v: %v, want status 2 naming %s\n%s", c.env, c.args, err, c.want, out)
		}
	}
	out, err := exec.Command(binary, "run", "-h").CombinedOutput()
	_, entry, _ := strings.Cut(string(out), "-inbound-first-byte-timeout duration")
	entry, _, _ = strings.Cut(entry, "\n  -") // up to the next flag
	if err != nil || !strings.Contains(entry, "(default 10s)") {
		t.Errorf("run -h: %v, want the flag with its default, 10s:\n%s", err, out)
	}
}
