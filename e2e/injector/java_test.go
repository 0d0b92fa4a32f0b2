package injector_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

// runJVM runs testdata/Probe.java in a real JVM with nothing but
// javaToolOptions (as stored in a pod, $(KUBERNETES_SERVICE_HOST)
// expanded as the kubelet does), against a stand-in for the sidecar on
// outPort: HttpClient and HttpURLConnection must send their requests to
// it, a localhost URL must go direct (-Dhttp.nonProxyHosts), and https://
// must be tunnelled through it (CONNECT) when httpsProxied.
func runJVM(t *testing.T, javaToolOptions string, outPort int, httpsProxied bool) {
	t.Helper()
	java, err := exec.LookPath("java")
	if err != nil {
		proc.Unmet(t, "no java on PATH (Debian default-jdk-headless): %v", err)
	}

	// The sidecar's stand-in: it answers absolute-form requests and
	// refuses tunnels, recording both.
	var mu sync.Mutex
	var seen []string
	record := func(s string) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}
	proxyLn, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(outPort))
	if err != nil {
		t.Fatalf("the sidecar's outbound port: %v", err)
	}
	proxy := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			record("CONNECT " + r.Host)
			http.Error(w, "no tunnels here", http.StatusForbidden)
			return
		}
		record(r.Method + " " + r.URL.String())
		fmt.Fprint(w, "via-proxy")
	})}
	go proxy.Serve(proxyLn)
	defer proxy.Close()
	directLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	direct := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record("direct " + r.URL.Path)
		fmt.Fprint(w, "direct")
	})}
	go direct.Serve(directLn)
	defer direct.Close()

	opts := strings.ReplaceAll(javaToolOptions, "$(KUBERNETES_SERVICE_HOST)", "10.96.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, java, "testdata/Probe.java",
		"http://orders.shop.svc.cluster.local:8000", "http://localhost:"+strconv.Itoa(directLn.Addr().(*net.TCPAddr).Port), "https://secure.test:8443")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "JAVA_TOOL_OPTIONS=" + opts}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("java Probe.java: %v\n%s\n%s", err, out, stderr.String())
	}
	if !strings.Contains(stderr.String(), "Picked up JAVA_TOOL_OPTIONS: "+opts) {
		t.Errorf("the JVM did not pick up the options:\n%s", stderr.String())
	}
	for _, want := range []string{"httpclient via-proxy", "urlconnection via-proxy", "direct direct"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("probe output lacks %q:\n%s", want, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		"GET http://orders.shop.svc.cluster.local:8000/httpclient",
		"GET http://orders.shop.svc.cluster.local:8000/urlconnection",
		"direct /direct",
	}
	if httpsProxied {
		want = append(want, "CONNECT secure.test:8443")
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("the sidecar and the direct server saw\n%q, want\n%q", seen, want)
	}
}
