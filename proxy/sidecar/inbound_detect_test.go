package sidecar_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
	"github.com/minimesh/minimesh/wellknown"
)

// inNetnsEnv marks the run of TestInboundLateAndLongRequests inside its
// own network namespace (unshare -n), where it may write iptables rules.
const inNetnsEnv = "MINIMESH_TEST_INBOUND_NETNS"

// The pod's address and a caller's, both on the namespace's loopback
// device (no dummy or veth needed): only the caller's connections match
// the REDIRECT rule, not the sidecar's own to the app.
const (
	detectPodIP    = "10.98.0.1"
	detectCallerIP = "10.98.0.2"
)

// TestInboundLateAndLongRequests reproduces the probe (iptables REDIRECT
// to the inbound listener, the sidecar as it runs): a caller that sends
// its first request 1.5 s after connecting (a pool's warm-up connection),
// and one whose first request line is longer than detection's 16,389
// bytes, get the HTTP handling of the inbound path: X-Request-ID, counted
// in minimesh_requests_total. Before 2026-12-06 both were relayed blind
// (no-data, unknown) under the outbound listener's 1 s detection: the
// app's 500s counted as tcp_connections_total{result="ok"}.
func TestInboundLateAndLongRequests(t *testing.T) {
	if os.Getenv(inNetnsEnv) != "1" {
		unshare, uerr := exec.LookPath("unshare")
		_, ierr := exec.LookPath("iptables")
		if uerr != nil || ierr != nil || os.Geteuid() != 0 {
			if os.Getenv("CI") == "true" {
				t.Fatalf("needs root, unshare(1) and iptables: run make tools as root (%v, %v)", uerr, ierr)
			}
			t.Skip("needs root, unshare(1) and iptables")
		}
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(unshare, "-n", self, "-test.run=^TestInboundLateAndLongRequests$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestInboundLateAndLongRequests") {
			t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
		}
		return
	}

	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")
	run("ip", "addr", "add", detectPodIP+"/32", "dev", "lo")
	run("ip", "addr", "add", detectCallerIP+"/32", "dev", "lo")

	appLn, err := net.Listen("tcp", detectPodIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App-Saw-Request-ID", r.Header.Get(wellknown.HeaderRequestID))
		w.WriteHeader(http.StatusInternalServerError)
	})}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	_, appPort, _ := net.SplitHostPort(appLn.Addr().String())

	r := start(t, sidecar.Config{InboundAddr: "127.0.0.1:0"})
	_, inPort, _ := net.SplitHostPort(r.sc.InboundAddr())
	run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", detectCallerIP, "-d", detectPodIP,
		"--dport", appPort, "-j", "REDIRECT", "--to-ports", inPort)

	long := "/" + strings.Repeat("a", 20000)
	tests := []struct {
		name  string
		delay time.Duration // between connecting and the first request
		paths []string      // requests sent on the connection, one after the other
	}{
		{"first request 1.5 s after connecting", 1500 * time.Millisecond, []string{"/late/1", "/late/2"}},
		{"request line over 16,389 bytes", 0, []string{long}},
	}
	want := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(detectCallerIP)}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", net.JoinHostPort(detectPodIP, appPort))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second)) // bounds a failing test only
			time.Sleep(tt.delay)                            // the caller's pause, not a wait for the sidecar
			br := bufio.NewReader(c)
			for _, p := range tt.paths {
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app\r\n\r\n", p)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("GET %.40s: %v", p, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				id := resp.Header.Get(wellknown.HeaderRequestID)
				if resp.StatusCode != 500 || id == "" || resp.Header.Get("X-App-Saw-Request-ID") != id {
					t.Errorf("GET %.40s: %d, X-Request-ID %q, the app saw %q: want the app's 500 with the sidecar's request ID",
						p, resp.StatusCode, id, resp.Header.Get("X-App-Saw-Request-ID"))
				}
				want++
			}
		})
	}
	ms := r.metrics(t)
	if v, _ := ms.Value("minimesh_requests_total", "direction", "inbound", "destination", appPort, "code", "500"); v != float64(want) {
		t.Errorf("minimesh_requests_total{direction=inbound,destination=%s,code=500} = %v, want %d", appPort, v, want)
	}
	if v, ok := ms.Value("minimesh_tcp_connections_total", "direction", "inbound"); ok {
		t.Errorf("minimesh_tcp_connections_total{direction=inbound} = %v: a connection was relayed blind", v)
	}

	// A silent caller under detection (up to 10 s) does not hold the
	// drain: the sweep closes it after DrainIdleGrace (1 s), well before
	// --drain-timeout (10 s).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(detectCallerIP)}, Timeout: 5 * time.Second}
	silent, err := d.Dial("tcp", net.JoinHostPort(detectPodIP, appPort))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	stop := time.Now()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for start's cleanup
		if took := time.Since(stop); took > 5*time.Second {
			t.Errorf("the drain took %v with a silent caller under detection, want about 1 s", took)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return")
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(silent); len(b) != 0 || isTimeout(err) {
		t.Errorf("the silent caller read %q, %v: want its connection closed", b, err)
	}
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
