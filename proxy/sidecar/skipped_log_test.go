package sidecar_test

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestLoadLogSkipped: the log line of a policy load lists what the
// directory holds that it did not read, hidden entries (a ConfigMap
// volume's) aside. A ConfigMap key `maps` (created --from-file=maps=...)
// loaded nothing and the sidecar said only "count": 1.
func TestLoadLogSkipped(t *testing.T) {
	dir := t.TempDir()
	proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.GeoPolicy(5))
	proxytest.WriteFile(t, filepath.Join(dir, "maps"), proxytest.GeoPolicy(1))
	proxytest.WriteFile(t, filepath.Join(dir, ".hidden"), "")
	r := start(t, sidecar.Config{PolicyDir: dir})
	for _, line := range strings.Split(r.log.String(), "\n") {
		var rec struct {
			Msg     string
			Count   int
			Skipped []string
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "policies loaded" {
			continue
		}
		if want := []string{"maps: not .yaml, .yml or .json"}; rec.Count != 1 || !reflect.DeepEqual(rec.Skipped, want) {
			t.Errorf("load logged %s; want count 1 and skipped %q", line, want)
		}
		return
	}
	t.Fatalf("no policies loaded line in the log:\n%s", r.log.String())
}
