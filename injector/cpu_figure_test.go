package injector

import (
	"os"
	"strings"
	"testing"
)

// documentedCPU is the sidecar's CPU at 1,000 requests/s as
// docs/annotations.md gives it; the warning on a small CPU limit quotes it
// (TestInjectWarns), so the two cannot drift apart again.
const documentedCPU = "0.05–0.14 core at 1,000 requests/s"

func TestDocumentedCPUFigure(t *testing.T) {
	doc, err := os.ReadFile("../docs/annotations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `minimesh.io/proxy-cpu-request` |") {
			if !strings.Contains(line, documentedCPU) {
				t.Fatalf("docs/annotations.md's proxy-cpu-request row no longer says %q: update the warning in annotations.go and this figure\n%s", documentedCPU, line)
			}
			return
		}
	}
	t.Fatal("docs/annotations.md has no proxy-cpu-request row")
}
