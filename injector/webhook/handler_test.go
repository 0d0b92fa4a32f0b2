package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/minimesh/minimesh/injector"
)

// fakeNamespaces is an in-process stand-in for the informer.
type fakeNamespaces map[string]map[string]string

func (f fakeNamespaces) Labels(_ context.Context, name string) (map[string]string, error) {
	l, ok := f[name]
	if !ok {
		return nil, errors.New("namespaces \"" + name + "\" not found")
	}
	return l, nil
}

func newHandler() *Handler {
	cfg := injector.DefaultConfig()
	return &Handler{
		Config: &cfg,
		Namespaces: fakeNamespaces{"shop": nil, "opted": {"minimesh.io/inject": "enabled"},
			"locked": {"pod-security.kubernetes.io/enforce": "restricted"}, "open": {"pod-security.kubernetes.io/enforce": "privileged"}},
		Metrics: NewMetrics(),
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func pod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}},
	}
}

func review(t testing.TB, ns string, op admissionv1.Operation, kind string, obj any) []byte {
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "uid-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: kind},
			Namespace: ns, Operation: op, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(h http.Handler, body []byte) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/inject", bytes.NewReader(body)))
	return w
}

func TestHandler(t *testing.T) {
	enabled := map[string]string{"minimesh.io/inject": "enabled"}
	tests := []struct {
		name    string
		body    []byte
		status  int
		allowed bool
		patched bool
		message string
		result  string
	}{
		{"annotated pod", review(t, "shop", admissionv1.Create, "Pod", pod(enabled)), 200, true, true, "", ResultInjected},
		{"opted-in namespace", review(t, "opted", admissionv1.Create, "Pod", pod(nil)), 200, true, true, "", ResultInjected},
		{"not asked", review(t, "shop", admissionv1.Create, "Pod", pod(nil)), 200, true, false, "", ResultSkipped},
		{"update", review(t, "shop", admissionv1.Update, "Pod", pod(enabled)), 200, true, false, "", ResultSkipped},
		{"not a pod", review(t, "shop", admissionv1.Create, "ConfigMap", map[string]any{"kind": "ConfigMap"}), 200, true, false, "", ResultSkipped},
		{"bad annotation", review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/proxy-cpu-limit": "lots"})), 200, false, false, `minimesh.io/proxy-cpu-limit]: "lots"`, ResultDenied},
		{"iptables where Pod Security forbids it", review(t, "locked", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/interception": "iptables"})),
			200, false, false, `namespace "locked" enforces Pod Security "restricted"`, ResultDenied},
		{"iptables where Pod Security allows it", review(t, "open", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/interception": "iptables"})),
			200, true, true, "", ResultInjected},
		// The app's own container named like the sidecar: not taken for
		// an injected pod (HTTP_PROXY to a port nothing listens on), and
		// not injected beside it (two containers of one name).
		{"own container named minimesh-proxy", review(t, "shop", admissionv1.Create, "Pod", func() *corev1.Pod {
			p := pod(enabled)
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "minimesh-proxy", Image: "my/own-proxy"})
			return p
		}()), 200, false, false, `spec.containers[1].name: "minimesh-proxy": the name of the minimesh sidecar, which this container (image "my/own-proxy") is not`, ResultDenied},
		// A status annotation copied without the sidecar is no injection.
		{"stale status annotation", review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/status": "injected"})),
			200, true, true, "", ResultInjected},
		// The injector failing is no denial: a 500, to which the API
		// server applies failurePolicy (before, allowed=false refused
		// the pod even under Ignore).
		{"namespace that cannot be read", review(t, "gone", admissionv1.Create, "Pod", pod(enabled)), 500, false, false, `minimesh: namespace gone: namespaces "gone" not found`, ResultError},
		{"pod that does not decode", review(t, "shop", admissionv1.Create, "Pod", map[string]any{"spec": "nope"}), 500, false, false, "minimesh: decode pod", ResultError},
		{"not JSON", []byte("{"), 400, false, false, "decode AdmissionReview", ""},
		{"no request", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400, false, false, "no request", ""},
		{"oversized", append(append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), MaxBodyBytes)...), '"', '}'), 400, false, false, "larger than", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHandler()
			w := post(h, tt.body)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			if tt.status == http.StatusInternalServerError {
				// A Status, whose message the API server reports.
				var st metav1.Status
				if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Kind != "Status" || st.Code != 500 || !strings.Contains(st.Message, tt.message) {
					t.Fatalf("500 with body %s (%v), want a Status whose message holds %q", w.Body, err, tt.message)
				}
				if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues(tt.result)); got != 1 {
					t.Fatalf("admissions{result=%q} = %v, want 1", tt.result, got)
				}
				if got := testutil.ToFloat64(h.Metrics.badRequests); got != 0 {
					t.Fatalf("bad requests counted %v, want 0", got)
				}
				return
			}
			if tt.status != 200 {
				if !strings.Contains(w.Body.String(), tt.message) {
					t.Fatalf("body %q lacks %q", w.Body, tt.message)
				}
				if got := testutil.ToFloat64(h.Metrics.badRequests); got != 1 {
					t.Fatalf("bad requests counted %v, want 1", got)
				}
				return
			}
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
			r := out.Response
			if out.Kind != "AdmissionReview" || out.APIVersion != "admission.k8s.io/v1" || r == nil || r.UID != "uid-1" {
				t.Fatalf("not a v1 review answering uid-1: %s", w.Body)
			}
			if r.Allowed != tt.allowed || (len(r.Patch) > 0) != tt.patched {
				t.Fatalf("allowed=%v patch=%d bytes, want %v %v", r.Allowed, len(r.Patch), tt.allowed, tt.patched)
			}
			if tt.message != "" && (r.Result == nil || !strings.Contains(r.Result.Message, tt.message)) {
				t.Fatalf("result %+v lacks %q", r.Result, tt.message)
			}
			if got := testutil.ToFloat64(h.Metrics.admissions.WithLabelValues(tt.result)); got != 1 {
				t.Fatalf("admissions{result=%q} = %v, want 1", tt.result, got)
			}
			if testutil.CollectAndCount(h.Metrics.duration) != 1 {
				t.Fatal("no latency observed")
			}
			if tt.patched {
				checkPatch(t, tt.body, r)
			}
		})
	}
}

// checkPatch applies the answer's patch to the pod that was sent, as the
// API server does, and expects the sidecar in the result.
func checkPatch(t *testing.T, body []byte, r *admissionv1.AdmissionResponse) {
	t.Helper()
	if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", r.PatchType)
	}
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(r.Patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(in.Request.Object.Raw)
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	// The sidecar, and under iptables interception the init container
	// before it.
	want := 1
	if got.Annotations[injector.AnnotationInterception] == injector.InterceptionIPTables {
		want = 2
	}
	if !injector.IsInjected(&got) || len(got.Spec.InitContainers) != want {
		t.Fatalf("patched pod not injected: %s", out)
	}
}

func TestHandlerContentType(t *testing.T) {
	body := review(t, "shop", admissionv1.Create, "Pod", pod(nil))
	for ct, want := range map[string]int{
		"application/json":                200,
		"application/json; charset=utf-8": 200,
		"":                                200,
		"text/plain":                      400,
		"application/yaml":                400,
		"application/json;;":              400,
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/inject", bytes.NewReader(body))
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		newHandler().ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Content-Type %q: %d, want %d: %s", ct, w.Code, want, w.Body)
		}
	}
}

// TestMetrics: one handler sees one admission of each result and one
// request that is not a review; the exposition says so under the names
// that dashboards and docs/injector.md use.
func TestMetrics(t *testing.T) {
	h := newHandler()
	enabled := map[string]string{"minimesh.io/inject": "enabled"}
	for _, body := range [][]byte{
		review(t, "shop", admissionv1.Create, "Pod", pod(enabled)),
		review(t, "shop", admissionv1.Create, "Pod", pod(nil)),
		review(t, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled", "minimesh.io/proxy-cpu-limit": "lots"})),
		review(t, "gone", admissionv1.Create, "Pod", pod(enabled)),
		[]byte("not a review"),
	} {
		post(h, body)
	}
	want := `
# HELP minimesh_injector_admissions_total Pod admissions by result: injected, skipped (not asked, opted out, already injected), denied (bad annotation), error.
# TYPE minimesh_injector_admissions_total counter
minimesh_injector_admissions_total{result="denied"} 1
minimesh_injector_admissions_total{result="error"} 1
minimesh_injector_admissions_total{result="injected"} 1
minimesh_injector_admissions_total{result="skipped"} 1
# HELP minimesh_injector_bad_requests_total Requests to /inject that were not an AdmissionReview (answered 400).
# TYPE minimesh_injector_bad_requests_total counter
minimesh_injector_bad_requests_total 1
`
	if err := testutil.GatherAndCompare(h.Metrics.Registry, strings.NewReader(want),
		"minimesh_injector_admissions_total", "minimesh_injector_bad_requests_total"); err != nil {
		t.Fatal(err)
	}
	mfs, err := h.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
		if mf.GetName() == "minimesh_injector_admission_duration_seconds" {
			hist := mf.GetMetric()[0].GetHistogram()
			if hist.GetSampleCount() != 4 || hist.GetBucket()[0].GetUpperBound() != 0.0005 {
				t.Errorf("latency histogram: %d samples, first bucket %v", hist.GetSampleCount(), hist.GetBucket()[0].GetUpperBound())
			}
		}
	}
	for _, name := range []string{"minimesh_injector_admission_duration_seconds", "minimesh_build_info", "certwatcher_read_certificate_errors_total", "go_goroutines"} {
		if !seen[name] {
			t.Errorf("no %s on the registry", name)
		}
	}
}

func TestHandlerRefusesGET(t *testing.T) {
	w := httptest.NewRecorder()
	newHandler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/inject", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /inject: %d", w.Code)
	}
}

// FuzzHandler: whatever arrives, the handler answers 200 with a review of
// the request's UID, 400, or 500 with a Status (the injector could not
// decide); it never panics or answers half a review.
func FuzzHandler(f *testing.F) {
	f.Add(review(f, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"})))
	f.Add(review(f, "opted", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/skip-outbound-cidrs": "10.0.0.0/8"})))
	f.Add([]byte(`{"request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":null}}`))
	f.Add([]byte(`{"request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","namespace":"shop","object":{"metadata":{"annotations":{"minimesh.io/inject":"enabled"}},"spec":{"containers":[{"name":"minimesh-proxy"}]}}}}`))
	f.Add([]byte("null"))
	h := newHandler()
	f.Fuzz(func(t *testing.T, body []byte) {
		w := post(h, body)
		switch w.Code {
		case http.StatusBadRequest:
		case http.StatusInternalServerError:
			var st metav1.Status
			if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Kind != "Status" || st.Message == "" {
				t.Fatalf("500 without a Status: %v %s", err, w.Body)
			}
		case http.StatusOK:
			var in, out admissionv1.AdmissionReview
			_ = json.Unmarshal(body, &in)
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Response == nil {
				t.Fatalf("200 without a review: %v %s", err, w.Body)
			}
			if out.Response.UID != in.Request.UID {
				t.Fatalf("answered uid %q for %q", out.Response.UID, in.Request.UID)
			}
		default:
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
	})
}
