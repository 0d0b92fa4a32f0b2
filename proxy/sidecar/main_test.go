package sidecar

import (
	"os"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/internal/rawio"
)

// TestMain runs the suite with raw reads and writes off when
// MINIMESH_TEST_RAWIO=off (--raw-io=false; make test runs it so).
func TestMain(m *testing.M) {
	rawio.Off = proxytest.RawIOOff()
	os.Exit(m.Run())
}
