package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// SIGHUP makes the sidecar look at its policy directory again and load
// it, even unchanged (an operator's reload gets an answer), and never ends
// the process, as the default action of SIGHUP would.
func TestSIGHUPReloads(t *testing.T) {
	dir := t.TempDir()
	doc := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo-service\n"
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	p := local(t, "--policy-dir", dir)
	ok := func() float64 { return metricValue(t, p.admin, "minimesh_policy_reloads_total", "result", "success") }
	before := ok()
	for i := range 3 {
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		want := before + float64(i+1)
		if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { return ok() == want }) {
			t.Fatalf("after SIGHUP %d: minimesh_policy_reloads_total{result=success} = %v, want %v", i+1, ok(), want)
		}
	}
	select {
	case <-p.exited:
		t.Fatalf("SIGHUP ended the sidecar: %v", p.err)
	default:
	}
	if code, _ := p.adminGet("/ready"); code != 200 {
		t.Fatalf("/ready %d after SIGHUP, want 200", code)
	}
}
