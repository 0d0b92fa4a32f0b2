package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/heapwatch"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// worstPods are the pods that cost the webhook the most memory, each as
// large as the limits let it be: the 10,000 containers; a full
// review of small env entries, decoded whole before MaxPodBytes; a pod
// just under MaxPodBytes of small env entries, the most a decoded pod
// costs; 100 containers with env entries and a 4 KiB skip-outbound-cidrs,
// the largest patch.
func worstPods(t testing.TB) map[string][]byte {
	enabled := func() *corev1.Pod { return pod(map[string]string{"minimesh.io/inject": "enabled"}) }
	// fill sets n entries with set (names of a fixed width, so that each
	// costs the same bytes) for the largest n whose review fits limit.
	fill := func(p *corev1.Pod, limit int, set func(n int)) []byte {
		size := func(n int) int {
			set(n)
			return len(review(t, "shop", admissionv1.Create, "Pod", p))
		}
		b0, b1 := size(0), size(1000)
		n := (limit - b0) * 1000 / (b1 - b0)
		for size(n) > limit {
			n--
		}
		return review(t, "shop", admissionv1.Create, "Pod", p)
	}
	env := func(n int) []corev1.EnvVar {
		e := make([]corev1.EnvVar, n)
		for i := range e {
			e[i] = corev1.EnvVar{Name: fmt.Sprintf("E%07d", i), Value: "v"}
		}
		return e
	}
	out := map[string][]byte{}

	p := enabled()
	p.Spec.Containers = nil
	for i := range 10000 {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: "x"})
	}
	out["10,000 containers"] = review(t, "shop", admissionv1.Create, "Pod", p)

	for name, limit := range map[string]int{"8 MiB of env": MaxBodyBytes, "512 KiB of env": MaxPodBytes} {
		p := enabled()
		out[name] = fill(p, limit, func(n int) { p.Spec.Containers[0].Env = env(n) })
	}

	p = enabled()
	p.Annotations["minimesh.io/skip-outbound-cidrs"] = strings.Repeat("10.0.0.0/8,", 4096/11)
	p.Spec.Containers = nil
	for i := range 100 {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%03d", i), Image: "x"})
	}
	out["100 containers, 4 KiB of CIDRs"] = fill(p, MaxPodBytes, func(n int) {
		for k := range p.Spec.Containers {
			p.Spec.Containers[k].Env = env(n / 100)
		}
	})
	for name, b := range out {
		if len(b) > MaxBodyBytes || (strings.Contains(name, "512") || strings.Contains(name, "100")) && len(b) > MaxPodBytes+1024 {
			t.Fatalf("%s: %d bytes", name, len(b))
		}
	}
	return out
}

// TestAdmissionMemory: four worst-case admissions sent at once stay far
// under the controller's 512Mi. Before the limits one pod of 10,000
// containers took 63 MiB of heap and four 300 MiB; four reviews of 8 MiB
// of env entries 1.2 GiB.
func TestAdmissionMemory(t *testing.T) {
	const budget = 128 << 20
	for name, body := range worstPods(t) {
		h := newHandler()
		h.QueueTimeout = time.Minute // the race detector makes 8 MiB slow
		for _, n := range []int{1, 4} {
			peak := heapwatch.Peak(func() {
				var wg sync.WaitGroup
				for range n {
					wg.Go(func() {
						if w := post(h, body); w.Code != http.StatusOK {
							t.Errorf("%s: %d %s", name, w.Code, w.Body)
						}
					})
				}
				wg.Wait()
			})
			t.Logf("%s (%.1f MiB review), %d at once: peak heap +%.0f MiB", name, float64(len(body))/(1<<20), n, float64(peak)/(1<<20))
			if peak > budget {
				t.Errorf("%s, %d at once: %d MiB of heap, more than %d", name, n, peak>>20, budget>>20)
			}
		}
	}
}

// BenchmarkWorstAdmission reports what one worst-case admission
// allocates (B/op), one shape after the other.
func BenchmarkWorstAdmission(b *testing.B) {
	for name, body := range worstPods(b) {
		b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			h := newHandler()
			b.ReportAllocs()
			for b.Loop() {
				if w := post(h, body); w.Code != http.StatusOK {
					b.Fatal(w.Code)
				}
			}
		})
	}
}

// blockingNamespaces holds every admission in Labels until release is
// closed, counting how many are inside at once.
type blockingNamespaces struct {
	release     chan struct{}
	inside, max atomic.Int32
	entered     chan struct{}
}

func (b *blockingNamespaces) Labels(context.Context, string) (map[string]string, error) {
	n := b.inside.Add(1)
	defer b.inside.Add(-1)
	for {
		m := b.max.Load()
		if n <= m || b.max.CompareAndSwap(m, n) {
			break
		}
	}
	b.entered <- struct{}{}
	<-b.release
	return nil, nil
}

// TestMaxInFlight: with every slot busy, requests wait for one and are
// answered 429 when none frees in time; the ones that waited less go
// through once the slots free up.
func TestMaxInFlight(t *testing.T) {
	ns := &blockingNamespaces{release: make(chan struct{}), entered: make(chan struct{}, 10)}
	h := newHandler()
	h.Namespaces = ns
	h.QueueTimeout = 50 * time.Millisecond
	body := review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"}))

	codes := make(chan int, 10)
	for range DefaultMaxInFlight {
		go func() { codes <- post(h, body).Code }()
	}
	for range DefaultMaxInFlight {
		<-ns.entered
	}
	// Every slot is held: the next request waits out its queue timeout.
	w := post(h, body)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "admissions in flight") {
		t.Fatalf("with every slot busy: %d %q %s", w.Code, w.Header(), w.Body)
	}
	if got := testutil.ToFloat64(h.Metrics.throttled); got != 1 {
		t.Fatalf("throttled = %v", got)
	}
	// One more waits, with a longer timeout, and goes through.
	h.QueueTimeout = time.Minute
	go func() { codes <- post(h, body).Code }()
	close(ns.release)
	for range DefaultMaxInFlight + 1 {
		if c := <-codes; c != http.StatusOK {
			t.Fatalf("admission answered %d", c)
		}
	}
	if m := ns.max.Load(); m != DefaultMaxInFlight {
		t.Fatalf("%d admissions at once, want %d", m, DefaultMaxInFlight)
	}
}

// TestLargePod: a pod over MaxPodBytes is decided on its metadata and its
// init containers' names and commands: left alone when it is not to be
// injected (not asked, opted out, injected already: the sidecar is
// there), refused with its size when it is (a status annotation without
// the sidecar is no injection).
func TestLargePod(t *testing.T) {
	large := func(ann map[string]string, sidecar bool) []byte {
		p := pod(ann)
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "BIG", Value: strings.Repeat("x", MaxPodBytes)}}
		if sidecar {
			always := corev1.ContainerRestartPolicyAlways
			p.Spec.InitContainers = []corev1.Container{{Name: "minimesh-proxy", Image: "elsewhere/minimesh:old",
				RestartPolicy: &always, Command: []string{"/minimesh-proxy"}, Args: []string{"run", "--outbound-addr=127.0.0.1:15001"}}}
		}
		return review(t, "shop", admissionv1.Create, "Pod", p)
	}
	injected := map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/status": "injected"}
	for _, tt := range []struct {
		name    string
		ann     map[string]string
		sidecar bool
		allowed bool
		result  string
		message string
		warning string
	}{
		{"asked", map[string]string{"minimesh.io/inject": "enabled"}, false, false, ResultDenied, "more than the 524288 minimesh injects; annotate it minimesh.io/inject: disabled", ""},
		{"not asked", nil, false, true, ResultSkipped, "", ""},
		{"opted out", map[string]string{"minimesh.io/inject": "disabled"}, false, true, ResultSkipped, "", ""},
		// Reinvoked after a later webhook grew it: its containers are
		// not read, and the response says so (it said nothing).
		{"injected", injected, true, true, ResultSkipped, "", "more than the 524288 minimesh reads whole: containers added since its injection were not given the proxy variables"},
		{"status without the sidecar", injected, false, false, ResultDenied, "more than the 524288 minimesh injects", ""},
		{"bad annotation", map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/proxy-cpu-limit": "lots"}, false, false, ResultDenied, `"lots"`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHandler()
			w := post(h, large(tt.ann, tt.sidecar))
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Response == nil {
				t.Fatalf("%d %.300s", w.Code, w.Body)
			}
			r := out.Response
			if r.Allowed != tt.allowed || len(r.Patch) > 0 {
				t.Fatalf("allowed=%v, patch of %d bytes", r.Allowed, len(r.Patch))
			}
			if tt.message != "" && !strings.Contains(r.Result.Message, tt.message) {
				t.Fatalf("message %q lacks %q", r.Result.Message, tt.message)
			}
			if w := strings.Join(r.Warnings, "\n"); tt.warning == "" && w != "" || !strings.Contains(w, tt.warning) {
				t.Fatalf("warnings %q, want %q", r.Warnings, tt.warning)
			}
			if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues(tt.result)); got != 1 {
				t.Fatalf("result %s not counted", tt.result)
			}
		})
	}
}

// TestLargePodNotForLinux: a pod over MaxPodBytes for nodes other than
// Linux is skipped with the injector's warning, as the same pod under
// MaxPodBytes is, not refused for its size: its head carries what says
// its nodes' OS.
func TestLargePodNotForLinux(t *testing.T) {
	for name, mod := range map[string]func(*corev1.PodSpec){
		"os":           func(s *corev1.PodSpec) { s.OS = &corev1.PodOS{Name: corev1.Windows} },
		"nodeSelector": func(s *corev1.PodSpec) { s.NodeSelector = map[string]string{"kubernetes.io/os": "windows"} },
		"node affinity": func(s *corev1.PodSpec) {
			s.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"windows"}}}}}}}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := pod(map[string]string{"minimesh.io/inject": "enabled"})
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "BIG", Value: strings.Repeat("x", MaxPodBytes)}}
			mod(&p.Spec)
			h := newHandler()
			w := post(h, review(t, "shop", admissionv1.Create, "Pod", p))
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Response == nil {
				t.Fatalf("%d %.300s", w.Code, w.Body)
			}
			if r := out.Response; !r.Allowed || len(r.Patch) > 0 || !strings.Contains(strings.Join(r.Warnings, "\n"), "nodes other than Linux") {
				t.Fatalf("allowed=%v, patch of %d bytes, warnings %q: want skipped with the warning", r.Allowed, len(r.Patch), r.Warnings)
			}
			if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues(ResultSkipped)); got != 1 {
				t.Fatal("not counted as skipped")
			}
		})
	}
}

// TestEchoCapped: what the webhook answers and logs repeats at most the
// start of a hostile value: a 1 MB annotation, pod name, namespace or
// content type.
func TestEchoCapped(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	var logs bytes.Buffer
	h := newHandler()
	h.Log = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.Namespaces = fakeNamespaces{"shop": nil}

	p := pod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/proxy-memory-limit": huge})
	p.GenerateName = huge
	w := post(h, review(t, "shop", admissionv1.Create, "Pod", p))
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Response == nil || out.Response.Allowed {
		t.Fatalf("%d %.300s", w.Code, w.Body)
	}
	if msg := out.Response.Result.Message; len(msg) > 300 || !strings.Contains(msg, "(1048576 bytes)") {
		t.Errorf("%d-byte denial: %.400s", len(msg), msg)
	}

	p = pod(map[string]string{"minimesh.io/inject": "enabled"})
	post(h, review(t, huge, admissionv1.Create, "Pod", p))
	post(h, review(t, "shop", admissionv1.Operation(huge), huge, p))

	r := httptest.NewRequest(http.MethodPost, "/inject", strings.NewReader("{}"))
	r.Header.Set("Content-Type", "text/"+huge)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest || w.Body.Len() > 300 {
		t.Errorf("content type: %d, %d-byte answer", w.Code, w.Body.Len())
	}

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d log lines, want 4", len(lines))
	}
	for _, l := range lines {
		if len(l) > 1000 {
			t.Errorf("%d-byte log line: %.1100s", len(l), l)
		}
	}
}

// TestBodyBound: a request that announces more than MaxBodyBytes is
// refused before a slot is taken or its body read.
func TestBodyBound(t *testing.T) {
	h := newHandler()
	h.MaxInFlight = 1
	r := httptest.NewRequest(http.MethodPost, "/inject", io.NopCloser(strings.NewReader("")))
	r.ContentLength = MaxBodyBytes + 1
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "larger than") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}
