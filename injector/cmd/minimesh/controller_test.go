package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/minimesh/minimesh/internal/freeport"
	"github.com/minimesh/minimesh/internal/pki"
	"github.com/minimesh/minimesh/wellknown"
)

// writeCert writes a certificate for 127.0.0.1 and its key to dir/name/
// as tls.crt and tls.key.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.IssueValid("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if certFile, keyFile, err = p.Write(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestControllerStartupErrors: what keeps the controller from starting is
// reported before it listens or calls a cluster, naming the flag or file.
func TestControllerStartupErrors(t *testing.T) {
	dir := t.TempDir()
	cert, _ := writeCert(t, dir, "a")
	_, otherKey := writeCert(t, dir, "b")
	badConfig := filepath.Join(dir, "config.yaml")
	writeFile(t, badConfig, "proxy:\n  image: x\n  colour: blue\n")
	missing := filepath.Join(dir, "missing")
	// No cluster exists: reaching the kubeconfig would fail differently.
	t.Setenv("KUBECONFIG", filepath.Join(dir, "no-kubeconfig"))
	local := []string{"--webhook-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"}
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"log level", []string{"--log-level", "loud"}, []string{`--log-level "loud"`}},
		{"cert without key", []string{"--tls-cert-file", cert}, []string{"--tls-cert-file and --tls-key-file go together"}},
		{"missing cert", []string{"--tls-cert-file", missing + ".crt", "--tls-key-file", missing + ".key"}, []string{missing + ".crt: no such file"}},
		{"key of another cert", []string{"--tls-cert-file", cert, "--tls-key-file", otherKey}, []string{cert, otherKey, "private key does not match public key"}},
		{"missing config", []string{"--config", missing + ".yaml"}, []string{missing + ".yaml: no such file"}},
		{"bad config", []string{"--config", badConfig}, []string{badConfig, "line 3", "colour"}},
		{"negative connection cap", []string{"--xds-max-connections", "-1"}, []string{"--xds-max-connections -1"}},
		{"negative webhook connection cap", []string{"--webhook-max-connections", "-1"}, []string{"--webhook-max-connections -1: want 0 (no limit) or more"}},
		{"negative shutdown delay", []string{"--shutdown-delay", "-1s"}, []string{"--shutdown-delay -1s: want 0 (none) or more"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(append(append([]string{"controller"}, local...), tt.args...)...)
			if code != 1 || out != "" || !strings.HasPrefix(errOut, "Error: ") {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
		})
	}
}

// fakeAPI is the part of an API server the webhook reads: namespaces,
// as metadata, listed, watched and got. Watch-list requests are refused,
// as by an API server without the feature, so the informer lists.
type fakeAPI struct {
	listed map[string]map[string]string
	// held namespaces are not listed (created after the informer's list)
	// and their GET waits for release: an admission in flight.
	held    map[string]map[string]string
	gets    chan string
	release chan struct{}
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	q := r.URL.Query()
	switch {
	case r.URL.Path == "/api/v1/namespaces" && q.Get("watch") == "true":
		if q.Get("sendInitialEvents") == "true" {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Reason: metav1.StatusReasonBadRequest, Code: http.StatusBadRequest, Message: "no watch-list here"})
			return
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case r.URL.Path == "/api/v1/namespaces":
		list := metav1.PartialObjectMetadataList{
			TypeMeta: metav1.TypeMeta{Kind: "PartialObjectMetadataList", APIVersion: "meta.k8s.io/v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: "1"},
		}
		for name, labels := range f.listed {
			list.Items = append(list.Items, *partial(name, labels))
		}
		_ = json.NewEncoder(w).Encode(list)
	case path.Dir(r.URL.Path) == "/api/v1/namespaces":
		name := path.Base(r.URL.Path)
		labels, ok := f.listed[name]
		if l, held := f.held[name]; held {
			labels, ok = l, true
			f.gets <- name
			<-f.release
		}
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound})
			return
		}
		_ = json.NewEncoder(w).Encode(partial(name, labels))
	default:
		http.NotFound(w, r)
	}
}

func partial(name string, labels map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{Kind: "PartialObjectMetadata", APIVersion: "meta.k8s.io/v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, ResourceVersion: "1"},
	}
}

func admissionReview(t *testing.T, uid, namespace string, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("uid-" + uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: namespace, Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMain runs the test binary as `minimesh` itself when
// TestControllerSIGTERM starts it with MINIMESH_TEST_CONTROLLER_ARGS, so
// that the test can send a real signal to a real process.
func TestMain(m *testing.M) {
	if args := os.Getenv("MINIMESH_TEST_CONTROLLER_ARGS"); args != "" {
		os.Exit(execute(strings.Split(args, "\n"), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestControllerSIGTERM runs `minimesh controller` against a fake API
// server: it becomes ready once the namespaces are listed, injects over
// TLS, counts it on the admin port, and on SIGTERM turns unready while it
// serves on for --shutdown-delay, then stops listening, lets the
// admission in flight finish, and exits 0.
func TestControllerSIGTERM(t *testing.T) {
	api := &fakeAPI{
		listed:  map[string]map[string]string{"shop": nil, "opted": {"minimesh.io/inject": "enabled"}},
		held:    map[string]map[string]string{"late": {"minimesh.io/inject": "enabled"}},
		gets:    make(chan string, 1),
		release: make(chan struct{}),
	}
	apiSrv := httptest.NewServer(api)
	defer apiSrv.Close()
	released := false
	defer func() {
		if !released {
			close(api.release)
		}
	}()

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeFile(t, kubeconfig, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: %q}}]
users: [{name: test, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: test}}]
current-context: fake
`, apiSrv.URL))
	cert, key := writeCert(t, dir, "webhook")
	var cmd *exec.Cmd
	var exited chan error
	var stderr bytes.Buffer
	waited := false
	defer func() {
		if cmd != nil && !waited {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			t.Logf("controller stderr:\n%s", stderr.String())
		}
	}()
	addrs := onFreeAddrs(t, 3, func(addrs []string) error {
		args := []string{"controller", "--webhook-addr", addrs[0], "--admin-addr", addrs[1], "--xds-addr", addrs[2],
			"--tls-cert-file", cert, "--tls-key-file", key, "--kubeconfig", kubeconfig, "--policy-dir", t.TempDir(), "--log-level", "debug"}
		cmd = exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "MINIMESH_TEST_CONTROLLER_ARGS="+strings.Join(args, "\n"))
		stderr.Reset()
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		exited = make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		err := awaitCond(exited, 30*time.Second, readyz(addrs[1]))
		if err != nil {
			// Ended before its stderr is read: a port taken ends it anyway.
			_ = cmd.Process.Kill()
			werr := <-exited
			exited <- werr
			if strings.Contains(stderr.String(), syscall.EADDRINUSE.Error()) {
				return fmt.Errorf("%w (%v)", syscall.EADDRINUSE, err)
			}
		}
		return err
	})
	webhookURL, adminURL := "https://"+addrs[0], "http://"+addrs[1]

	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	admit := func(uid, ns string) (*admissionv1.AdmissionResponse, error) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "web-"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}},
		}
		resp, err := client.Post(webhookURL+"/inject", "application/json", bytes.NewReader(admissionReview(t, uid, ns, pod)))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("/inject %d: %s", resp.StatusCode, body)
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &out); err != nil || out.Response == nil {
			return nil, fmt.Errorf("not a review (%v): %s", err, body)
		}
		return out.Response, nil
	}

	// The namespace's label opts the pod in: read from the informer's cache.
	r, err := admit("1", "opted")
	if err != nil {
		t.Fatal(err)
	}
	if r.UID != "uid-1" || !r.Allowed || r.PatchType == nil || !bytes.Contains(r.Patch, []byte(wellknown.ProxyContainerName)) {
		t.Fatalf("opted-in pod not injected: %+v", r)
	}
	for url, want := range map[string]string{
		webhookURL + "/healthz": "ok",
		adminURL + "/metrics":   `minimesh_injector_admissions_total{result="injected"} 1`,
	} {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body lacks %q", url, resp.StatusCode, want)
		}
	}

	// A namespace the informer has not seen is read from the API server;
	// SIGTERM arrives while that read is held.
	late := make(chan error, 1)
	go func() {
		r, err := admit("2", "late")
		if err == nil && (r.UID != "uid-2" || !r.Allowed || len(r.Patch) == 0) {
			err = fmt.Errorf("pod of namespace late not injected: %+v", r)
		}
		late <- err
	}()
	select {
	case <-api.gets:
	case err := <-late:
		t.Fatalf("admission answered without reading the namespace: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the controller did not read namespace late")
	}
	signalled := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Shutting down: /readyz answers 503 at once, while the webhook, the
	// admin port and the xDS server serve on (new connections, as from
	// an API server still routed to this pod) for --shutdown-delay.
	// Before, every port refused within a millisecond of SIGTERM.
	waitFor(t, exited, 10*time.Second, func() error {
		resp, err := http.Get(adminURL + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz %d after SIGTERM, want 503", resp.StatusCode)
		}
		return nil
	})
	client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	if r, err := admit("3", "opted"); err != nil || !r.Allowed || len(r.Patch) == 0 {
		t.Fatalf("admission while shutting down: %+v %v, want it injected", r, err)
	}
	xc, err := net.DialTimeout("tcp", addrs[2], 10*time.Second)
	if err != nil {
		t.Fatalf("xDS listener while shutting down: %v", err)
	}
	xc.SetDeadline(time.Now().Add(10 * time.Second))
	h2Handshake(t, xc)
	xc.Close()
	// Then it stops accepting (the admin port refuses new connections),
	// not before the default delay, while the admission is still in
	// flight.
	waitFor(t, exited, 30*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addrs[1], time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		return fmt.Errorf("%s still accepts", addrs[1])
	})
	if d := time.Since(signalled); d < defaultShutdownDelay {
		t.Fatalf("stopped accepting %v after SIGTERM, want --shutdown-delay's default %v", d, defaultShutdownDelay)
	}
	close(api.release)
	released = true
	if err := <-late; err != nil {
		t.Fatalf("admission in flight at SIGTERM: %v", err)
	}
	select {
	case err := <-exited:
		waited = true
		if err != nil {
			t.Fatalf("controller after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("controller did not exit within 15 s of SIGTERM")
	}
}

// waitFor polls cond until it holds, failing the test at the deadline or
// when the process exits first.
func waitFor(t *testing.T, exited chan error, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := awaitCond(exited, timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// awaitCond is waitFor's wait: cond's last error at the deadline, or the
// process's exit (put back in exited) wrapped with it.
func awaitCond(exited chan error, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case werr := <-exited:
			exited <- werr
			return fmt.Errorf("controller exited (%w) while waiting: %v", werr, err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeClient is for readiness probes: another process holding the port
// may accept a connection and never answer.
var probeClient = &http.Client{Timeout: 2 * time.Second}

// readyz probes the controller's admin address admin: ready on a 200,
// not on any answer (another process holding the port answers too).
func readyz(admin string) func() error {
	return func() error {
		resp, err := probeClient.Get("http://" + admin + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz %d", resp.StatusCode)
		}
		return nil
	}
}

// onFreeAddrs is freeport.Start for a test (the controller started again
// on other ports while another process took one of its ports between the
// pick and the bind): t fails when no start succeeds.
func onFreeAddrs(t *testing.T, n int, start func(addrs []string) error) []string {
	t.Helper()
	addrs, err := freeport.Start(n, start)
	if err != nil {
		t.Fatalf("starting the controller: %v", err)
	}
	return addrs
}
