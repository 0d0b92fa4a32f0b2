package outbound

import (
	"os"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestMain turns raw reads and writes off when MINIMESH_TEST_RAWIO=off
// (--raw-io=false; make test runs the suite so too).
func TestMain(m *testing.M) {
	if spec := os.Getenv(isLocalEnv); spec != "" {
		os.Exit(isLocalChecks(spec)) // TestIsLocalAddressAddedLater's, in its namespace
	}
	proxytest.Main(m)
}
