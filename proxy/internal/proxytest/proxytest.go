// Package proxytest holds helpers shared by the proxy's tests: policy
// files, polling with a deadline, the admin endpoints (/ready, /metrics)
// and an upstream server that counts its requests.
//
// It is imported only by tests, and only from the standard library.
package proxytest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
)

// GeoPolicy is a valid policy for geo-service with n consecutive failures.
func GeoPolicy(n int) string {
	return fmt.Sprintf(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo}
spec:
  service: geo-service
  circuitBreaker:
    consecutiveFailures: %d
`, n)
}

// BrokenPolicy has a wrong type at line 7, column 26.
const BrokenPolicy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo}
spec:
  service: geo-service
  circuitBreaker:
    consecutiveFailures: "many"
`

// WriteFile writes content to name in place (os.WriteFile, mode 0644),
// failing the test on error.
func WriteFile(t testing.TB, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ReplaceFile replaces a file atomically, as an editor or a ConfigMap
// update would, so that no reload sees it half written.
func ReplaceFile(t testing.TB, name, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(name), ".tmp-"+filepath.Base(name))
	WriteFile(t, tmp, content)
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

// Poll calls cond every interval until it returns true, and reports
// whether it did before within passed. cond is called at least once, and
// once more after the deadline has passed.
func Poll(within, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// admin is the client of the admin endpoints: no proxy, no kept
// connections.
var admin = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

// Get sends GET url directly (never through a proxy) and returns the
// status and body; on failure, status 0 and the error's text.
func Get(url string) (int, string) {
	resp, err := admin.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// WaitReady polls GET http://adminAddr/ready every 5 ms until it answers
// 200, and fails after within with the last answer.
func WaitReady(adminAddr string, within time.Duration) error {
	var code int
	var body string
	if Poll(within, 5*time.Millisecond, func() bool {
		code, body = Get("http://" + adminAddr + "/ready")
		return code == http.StatusOK
	}) {
		return nil
	}
	return fmt.Errorf("not ready after %v: last /ready answer %d %s", within, code, body)
}

// ServerEnv names the environment variable with which the test helpers
// of proxy/outbound and proxy/sidecar choose the outbound listener's
// HTTP/1.x server: MINIMESH_TEST_SERVER=std runs their suites on
// net/http's server alone (`make test` runs them both ways); unset, on
// the default, the lean server loop (proxy/leanhttp).
const ServerEnv = "MINIMESH_TEST_SERVER"

// Server is the value of ServerEnv: "std", "lean" or "" (the default).
func Server() string { return os.Getenv(ServerEnv) }

// TransportEnv names the environment variable with which the test
// helpers of proxy/outbound and proxy/sidecar choose the outbound
// transport: MINIMESH_TEST_TRANSPORT=std sends every request through
// http.Transport (--std-transport), never the fast path.
const TransportEnv = "MINIMESH_TEST_TRANSPORT"

// StdTransport reports whether TransportEnv asks for --std-transport.
func StdTransport() bool { return os.Getenv(TransportEnv) == "std" }

// RawIOEnv names the environment variable with which the suites of
// proxy/outbound and proxy/sidecar turn raw reads and writes off
// (--raw-io=false, rawio.Off): MINIMESH_TEST_RAWIO=off.
const RawIOEnv = "MINIMESH_TEST_RAWIO"

// Main is the TestMain of those suites: it sets rawio.Off from RawIOEnv
// before any connection exists, as main does from the flag, and runs the
// tests.
func Main(m *testing.M) {
	rawio.Off = os.Getenv(RawIOEnv) == "off"
	os.Exit(m.Run())
}

// RawServer serves raw TCP on loopback until the test ends: handle gets
// each accepted connection, in a goroutine of its own, with its number
// (1 for the first), and closes it. It returns the address and the count
// of connections accepted so far.
func RawServer(t testing.TB, handle func(c net.Conn, n int)) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c, int(conns.Add(1)))
		}
	}()
	return ln.Addr().String(), &conns
}
