package main

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestInboundFlags: MINIMESH_INBOUND_ADDR (or --inbound-addr) starts the
// inbound listener, shown in the ready line and as listener="inbound";
// without it there is none; a negative --max-inbound-connections stops
// the start with status 2, naming the flag.
func TestInboundFlags(t *testing.T) {
	p := startProxy(t, []string{"MINIMESH_INBOUND_ADDR=127.0.0.1:0", "MINIMESH_MAX_INBOUND_CONNECTIONS=16"},
		"--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	inbound := ""
	for _, line := range strings.Split(p.log.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "sidecar ready" {
			inbound, _ = m["inbound"].(string)
		}
	}
	if host, port, _ := net.SplitHostPort(inbound); host != "127.0.0.1" || port == "0" || port == "" {
		t.Errorf("ready line's inbound %q, want the env's 127.0.0.1:<picked>", inbound)
	}
	if code, body := p.adminGet("/metrics"); code != 200 || !strings.Contains(body, `minimesh_connections_open{listener="inbound"}`) {
		t.Errorf("/metrics: %d, no listener=\"inbound\"", code)
	}

	off := local(t)
	if code, body := off.adminGet("/metrics"); code != 200 || strings.Contains(body, `listener="inbound"`) {
		t.Errorf("/metrics without --inbound-addr: %d, listener=\"inbound\" present", code)
	}

	for _, flag := range []string{"--max-inbound-connections", "--max-inbound-connections-per-source"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, binary, "run", "--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
			"--inbound-addr", "127.0.0.1:0", flag, "-1")
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		cancel()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), flag+" -1") {
			t.Errorf("%s -1: %v\n%s", flag, err, out)
		}
	}
}
