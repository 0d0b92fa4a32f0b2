package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestOpaquePortsFlag: a bad --opaque-ports (or MINIMESH_OPAQUE_PORTS)
// stops the sidecar at start with a message naming the flag and the value.
func TestOpaquePortsFlag(t *testing.T) {
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"not a port", nil, []string{"--opaque-ports", "25,smtp"}, []string{"-opaque-ports", `"smtp"`}},
		{"out of range", nil, []string{"--opaque-ports", "70000"}, []string{"-opaque-ports", `"70000"`}},
		{"backwards range", nil, []string{"--opaque-ports", "9000-8000"}, []string{"-opaque-ports", `"9000-8000"`}},
		{"env", []string{"MINIMESH_OPAQUE_PORTS=5432,x"}, nil, []string{"MINIMESH_OPAQUE_PORTS", `"x"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			args := append([]string{"run", "--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, c.args...)
			cmd := exec.CommandContext(ctx, binary, args...)
			cmd.Env = childEnv(c.env...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2\n%s", err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("message does not name %s:\n%s", w, out)
				}
			}
		})
	}
	t.Run("empty and ranges start", func(t *testing.T) {
		for _, v := range []string{"", "25,8000-8010"} {
			p := startProxy(t, []string{"MINIMESH_OPAQUE_PORTS=" + v}, "--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
			if code, _ := p.adminGet("/ready"); code != 200 {
				t.Errorf("MINIMESH_OPAQUE_PORTS=%q: /ready %d", v, code)
			}
		}
	})
}
