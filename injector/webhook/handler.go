// Package webhook serves the injector as a Kubernetes mutating admission
// webhook: AdmissionReview v1 in, the JSON patch of injector.Inject out,
// over TLS whose certificate is reloaded when the files change.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/injector"
)

// MaxBodyBytes bounds an AdmissionReview. The API server's own limit on an
// object is 3 MiB, and a review carries at most the object and its old
// version; anything larger is not from the API server.
const MaxBodyBytes = 8 << 20

// NamespaceLabels tells the labels of a namespace: a namespace label opts
// its pods in, and an AdmissionRequest does not carry it.
type NamespaceLabels interface {
	Labels(ctx context.Context, name string) (map[string]string, error)
}

// Results of an admission, the values of the metric's result label.
const (
	ResultInjected = "injected"
	ResultSkipped  = "skipped"
	ResultDenied   = "denied"
	ResultError    = "error"
)

// Handler answers AdmissionReviews at /inject.
type Handler struct {
	Config     *injector.Config
	Namespaces NamespaceLabels
	Metrics    *Metrics
	Log        *slog.Logger
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.badRequest(w, r, http.StatusMethodNotAllowed, errors.New("want POST"))
		return
	}
	// The API server always sends application/json; no header is let
	// through for curl and tests, anything else is not a review.
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			h.badRequest(w, r, http.StatusBadRequest, fmt.Errorf("content type %q, want application/json", ct))
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			err = fmt.Errorf("body larger than %d bytes", MaxBodyBytes)
		}
		h.badRequest(w, r, http.StatusBadRequest, fmt.Errorf("read AdmissionReview: %w", err))
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		h.badRequest(w, r, http.StatusBadRequest, fmt.Errorf("decode AdmissionReview: %w", err))
		return
	}
	if review.Request == nil {
		h.badRequest(w, r, http.StatusBadRequest, errors.New("AdmissionReview has no request"))
		return
	}
	resp, result := h.admit(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil { // cannot happen for these types; never answer half a review
		h.badRequest(w, r, http.StatusInternalServerError, fmt.Errorf("encode AdmissionResponse: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
	h.Metrics.observe(result, time.Since(start))
}

// admit decides one request. A pod we cannot read or a namespace we
// cannot look up is refused (result error): the webhook's failurePolicy
// is for an injector that is down, and a guess here would inject pods
// that asked not to be, or skip pods that asked to be.
func (h *Handler) admit(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string) {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	log := h.Log.With("namespace", req.Namespace, "uid", string(req.UID))
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		// A webhook configuration wider than pods/CREATE is harmless.
		log.Debug("admission: not a pod create", "kind", req.Kind.Kind, "operation", req.Operation, "subresource", req.SubResource)
		return allow, ResultSkipped
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		log.Error("admission: cannot decode the pod", "err", err)
		return refuse(http.StatusBadRequest, fmt.Sprintf("minimesh: decode pod: %v", err)), ResultError
	}
	log = log.With("pod", podName(&pod))
	labels, err := h.Namespaces.Labels(ctx, req.Namespace)
	if err != nil {
		log.Error("admission: cannot read the namespace's labels", "err", err)
		return refuse(http.StatusInternalServerError, fmt.Sprintf("minimesh: namespace %s: %v", req.Namespace, err)), ResultError
	}
	res, err := injector.Inject(injector.Input{Pod: &pod, Namespace: req.Namespace, NamespaceLabels: labels}, h.Config)
	if err != nil {
		var deny *injector.DenyError
		if errors.As(err, &deny) {
			log.Info("admission: denied", "reason", err.Error())
			return refuse(http.StatusForbidden, err.Error()), ResultDenied
		}
		log.Error("admission: inject", "err", err)
		return refuse(http.StatusInternalServerError, err.Error()), ResultError
	}
	allow.Warnings = res.Warnings
	if !res.Injected {
		log.Debug("admission: not injected", "reason", res.Reason)
		return allow, ResultSkipped
	}
	patch, err := injector.Patch(&pod, res.Pod)
	if err != nil {
		log.Error("admission: patch", "err", err)
		return refuse(http.StatusInternalServerError, err.Error()), ResultError
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = patch, &pt
	log.Info("admission: injected", "reason", res.Reason, "warnings", len(res.Warnings))
	return allow, ResultInjected
}

func refuse(code int32, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Result: &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg}}
}

// badRequest answers what is not an AdmissionReview. It is logged, since
// the API server only ever sends valid ones: this is a misconfiguration
// or someone else talking to the port.
func (h *Handler) badRequest(w http.ResponseWriter, r *http.Request, code int, err error) {
	h.Log.Warn("admission: bad request", "remote", r.RemoteAddr, "status", code, "err", err)
	http.Error(w, err.Error(), code)
	h.Metrics.badRequests.Inc()
}

// podName is the pod's name, or its generateName prefix for pods that a
// controller creates (the name is assigned after admission).
func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}
