// Package proxy_test guards the direction of imports that DESIGN.md sets:
// the sidecar stays small, so nothing under proxy/ may depend on
// Kubernetes' client libraries or on the injector.
package proxy_test

import (
	"os/exec"
	"strings"
	"testing"
)

func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "github.com/minimesh/minimesh/injector") {
			t.Errorf("the sidecar depends on %s", pkg)
		}
	}
}
