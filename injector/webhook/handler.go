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
	"sync"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/wellknown"
)

// MaxBodyBytes bounds an AdmissionReview. The API server's own limit on an
// object is 3 MiB, and a review carries at most the object and its old
// version; anything larger is not from the API server.
const MaxBodyBytes = 8 << 20

// MaxPodBytes bounds the pods that the webhook decodes whole. Decoding a
// pod, copying it and writing its patch took up to 40 times its JSON when
// the patch was a diff of the two pods re-encoded (a pod of small env
// entries; TestAdmissionMemory); the patch of adds costs less, so the
// figure is an upper bound, and the 8 MiB a review may hold would cost
// up to 315 MB.
// A larger pod is decided on its metadata alone: admitted unchanged when
// it is not to be injected, refused when it is. Real pods are a few KiB.
const MaxPodBytes = 512 << 10

// DefaultMaxInFlight is how many admissions run at once unless
// Handler.MaxInFlight says otherwise. With MaxPodBytes it bounds the
// memory of admissions to about 2 × 32 MB, whatever the pods (the worst
// measured in TestAdmissionMemory; the chart gives the controller 512Mi).
// An admission takes about a millisecond: two slots answer thousands of
// pods a second.
const DefaultMaxInFlight = 2

// DefaultQueueTimeout is how long a request waits for one of the
// MaxInFlight slots before it is answered 429: well within the chart's
// webhook timeout (5 s), so that the API server logs why. An admission
// takes about a millisecond, so only a flood or slow clients wait that
// long.
const DefaultQueueTimeout = 2 * time.Second

// bodyTimeout bounds how long a request's body may take to arrive, from
// its handler's start (its header read): the API server sends it at once,
// and a client that trickles it holds its bytes of the body budget for
// no longer than this.
const bodyTimeout = 5 * time.Second

// DefaultBodyBudget bounds the bytes of the bodies being read, or read
// and waiting for an admission slot, unless Handler.BodyBudget says
// otherwise: four reviews of MaxBodyBytes at once, each for a moment
// holding both its buffer and the one it grows into (1.5 ×). A body is
// charged for what it sent, never for the length it announces (a client
// that announces 8 MiB and sends nothing holds firstBuffer of it), and a
// request whose body would take more than is left is answered 429 at
// once.
const DefaultBodyBudget = 6 * MaxBodyBytes

// firstBuffer is what a body is charged before its first byte: the most
// that a stream which sends nothing holds (the webhook's 128 connections
// of 16 streams: 1 MiB in all). The buffer then doubles as the bytes
// arrive, up to the announced length.
const firstBuffer = 512

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
	// MaxInFlight bounds the admissions decoded at once (0:
	// DefaultMaxInFlight); the others wait for a slot, their bodies
	// read, for up to QueueTimeout (0: DefaultQueueTimeout).
	MaxInFlight  int
	QueueTimeout time.Duration
	// BodyBudget bounds the bytes of bodies being read or waiting for a
	// slot (0: DefaultBodyBudget).
	BodyBudget int64

	once  sync.Once
	slots chan struct{}
	// bodies is the bytes of BodyBudget taken.
	bodies atomic.Int64
}

func (h *Handler) init() {
	h.once.Do(func() {
		n := h.MaxInFlight
		if n <= 0 {
			n = DefaultMaxInFlight
		}
		h.slots = make(chan struct{}, n)
	})
}

// take charges n bytes to the body budget; false when they are not left.
func (h *Handler) take(n int64) bool {
	limit := h.BodyBudget
	if limit <= 0 {
		limit = DefaultBodyBudget
	}
	for {
		used := h.bodies.Load()
		if used+n > limit {
			return false
		}
		if h.bodies.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (h *Handler) give(n int64) { h.bodies.Add(-n) }

// acquire waits for an admission slot; false when none came in time.
func (h *Handler) acquire(r *http.Request) bool {
	select {
	case h.slots <- struct{}{}:
		return true
	default:
	}
	wait := h.QueueTimeout
	if wait <= 0 {
		wait = DefaultQueueTimeout
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case h.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-r.Context().Done():
	}
	return false
}

func (h *Handler) release() { <-h.slots }

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
			h.badRequest(w, r, http.StatusBadRequest, fmt.Errorf("content type %s, want application/json", echo.Quote(ct)))
			return
		}
	}
	tooLarge := fmt.Errorf("read AdmissionReview: body larger than %d bytes", MaxBodyBytes)
	if r.ContentLength > MaxBodyBytes {
		h.badRequest(w, r, http.StatusBadRequest, tooLarge)
		return
	}
	h.init()
	// The body is read before a slot is taken, against the body budget:
	// a slot is held for the decoding alone (a millisecond), never while
	// a client takes its time to send, and what slow bodies hold is
	// bounded apart. Before, one HTTP/2 connection of 50 streams that
	// announced 100 bytes and sent none held both slots for the 5 s of
	// bodyTimeout, over and over, and every real admission got 429.
	_ = http.NewResponseController(w).SetReadDeadline(start.Add(bodyTimeout))
	body, err := h.readBody(w, r)
	defer h.give(int64(cap(body)))
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, errBudget):
			h.throttle(w, r, fmt.Sprintf("minimesh: the AdmissionReviews being read hold %d bytes; try again", h.bodies.Load()))
			return
		case errors.As(err, &mbe):
			err = tooLarge
		default:
			err = fmt.Errorf("read AdmissionReview: %w", err)
		}
		h.badRequest(w, r, http.StatusBadRequest, err)
		return
	}
	if !h.acquire(r) {
		h.throttle(w, r, fmt.Sprintf("minimesh: %d admissions in flight; try again", cap(h.slots)))
		return
	}
	defer h.release()
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		h.badRequest(w, r, http.StatusBadRequest, fmt.Errorf("decode AdmissionReview: %w", err))
		return
	}
	if review.Request == nil {
		h.badRequest(w, r, http.StatusBadRequest, errors.New("AdmissionReview has no request"))
		return
	}
	resp, result, err := h.admit(r.Context(), review.Request)
	if err != nil {
		h.fail(w, err)
		h.Metrics.observe(result, time.Since(start))
		return
	}
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

// admit decides one request: an answer (allowed, or denied for what the
// pod asks), or an error when the injector itself could not decide (a pod
// it cannot read, a namespace it cannot look up, a mutation it cannot
// write). Such an error is answered 500 (fail), not as a denial: the API
// server applies the webhook's failurePolicy to a failed call but never
// to a response, so a denial would refuse the pod even under Ignore, and
// failurePolicy would not be what decides, as docs/injector.md says.
func (h *Handler) admit(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string, error) {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	log := h.Log.With("namespace", echo.Clip(req.Namespace), "uid", echo.Clip(string(req.UID)))
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		// A webhook configuration wider than pods/CREATE is harmless.
		log.Debug("admission: not a pod create", "kind", echo.Clip(req.Kind.Kind), "operation", echo.Clip(string(req.Operation)), "subresource", echo.Clip(req.SubResource))
		return allow, ResultSkipped, nil
	}
	pod, whole, err := decodePod(req.Object.Raw)
	if err != nil {
		log.Error("admission: cannot decode the pod", "err", echo.Clip(err.Error()))
		return nil, ResultError, errors.New("minimesh: decode pod: " + echo.Clip(err.Error()))
	}
	log = log.With("pod", echo.Clip(podName(pod)))
	labels, err := h.Namespaces.Labels(ctx, req.Namespace)
	if err != nil {
		// The error names the namespace, which is the requester's.
		log.Error("admission: cannot read the namespace's labels", "err", echo.Clip(err.Error()))
		return nil, ResultError, fmt.Errorf("minimesh: namespace %s: %s", echo.Clip(req.Namespace), echo.Clip(err.Error()))
	}
	res, err := injector.Inject(injector.Input{Pod: pod, Namespace: req.Namespace, NamespaceLabels: labels}, h.Config)
	if err != nil {
		var deny *injector.DenyError
		if errors.As(err, &deny) {
			log.Info("admission: denied", "reason", err.Error())
			return refuse(http.StatusForbidden, err.Error()), ResultDenied, nil
		}
		log.Error("admission: inject", "err", err)
		return nil, ResultError, err
	}
	allow.Warnings = res.Warnings
	if !whole && !res.Injected && injector.IsInjected(pod) {
		// Reinvoked after a later webhook grew the pod past what is
		// decoded whole: its containers were not read, so one that
		// webhook added has not been given the proxy variables (or
		// checked for UID 15000 under iptables). Said rather than
		// refused: the pod may well have no such container.
		msg := fmt.Sprintf("minimesh: the pod is %d bytes of JSON, more than the %d minimesh reads whole: containers added since its injection were not given the proxy variables nor checked",
			len(req.Object.Raw), MaxPodBytes)
		allow.Warnings = append(allow.Warnings, msg)
		log.Info("admission: injected pod too large to check again", "bytes", len(req.Object.Raw))
	}
	if !res.Injected {
		log.Debug("admission: not injected", "reason", res.Reason)
		return allow, ResultSkipped, nil
	}
	if !whole {
		msg := fmt.Sprintf("minimesh: the pod is %d bytes of JSON, more than the %d minimesh injects; annotate it %s: %s",
			len(req.Object.Raw), MaxPodBytes, wellknown.AnnotationInject, wellknown.InjectDisabled)
		log.Info("admission: denied", "reason", msg)
		return refuse(http.StatusForbidden, msg), ResultDenied, nil
	}
	patch, err := injector.Patch(pod, res.Pod)
	if err != nil {
		log.Error("admission: patch", "err", err)
		return nil, ResultError, err
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = patch, &pt
	log.Info("admission: injected", "reason", res.Reason, "warnings", len(res.Warnings))
	return allow, ResultInjected, nil
}

// fail answers an admission the injector could not decide: 500 with a
// Status, which the API server's client reads as the call's error (its
// message is what a refused pod's creator sees under failurePolicy Fail).
func (h *Handler) fail(w http.ResponseWriter, err error) {
	body, _ := json.Marshal(metav1.Status{ // cannot fail for this type
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status:   metav1.StatusFailure, Reason: metav1.StatusReasonInternalError,
		Code: http.StatusInternalServerError, Message: err.Error(),
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write(body)
}

// throttle answers 429: the API server logs why, and under failurePolicy
// Ignore creates the pod without a sidecar.
func (h *Handler) throttle(w http.ResponseWriter, r *http.Request, msg string) {
	h.Log.Warn("admission: throttled", "remote", r.RemoteAddr, "reason", msg)
	h.Metrics.throttled.Inc()
	w.Header().Set("Retry-After", "1")
	http.Error(w, msg, http.StatusTooManyRequests)
}

// errBudget: the body would take more of the body budget than is left.
var errBudget = errors.New("body budget spent")

// readBody reads at most MaxBodyBytes into a buffer charged to the body
// budget, which it doubles as the bytes arrive, up to the announced
// length: what a body holds is at most twice what it sent, or
// firstBuffer, whatever it announces. The caller gives back the cap of
// the buffer, even with an error.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	last := int64(MaxBodyBytes)
	if r.ContentLength > 0 {
		last = r.ContentLength
	}
	var buf []byte
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) == last {
				// Full: the end, else more than announced or allowed,
				// which the reader tells.
				var one [1]byte
				n, err := body.Read(one[:])
				if n > 0 && err == nil {
					err = fmt.Errorf("body longer than its Content-Length %d", r.ContentLength)
				}
				if err == io.EOF {
					return buf, nil
				}
				return buf, err
			}
			size := min(max(2*int64(cap(buf)), firstBuffer), last)
			if !h.take(size) {
				return buf, errBudget
			}
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			h.give(int64(cap(buf)))
			buf = grown
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// podHead is what decides whether a pod is injected: its metadata,
// whether it is on the host's network or for nodes other than Linux (its
// os, nodeSelector and node affinity), and what of its init containers
// tells minimesh's own apart (injector.IsInjected asks the containers,
// not the status annotation, which a pod may carry without the sidecar).
type podHead struct {
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     struct {
		HostNetwork  bool              `json:"hostNetwork"`
		OS           *corev1.PodOS     `json:"os"`
		NodeSelector map[string]string `json:"nodeSelector"`
		Affinity     struct {
			NodeAffinity *corev1.NodeAffinity `json:"nodeAffinity"`
		} `json:"affinity"`
		InitContainers []struct {
			Name          string                         `json:"name"`
			RestartPolicy *corev1.ContainerRestartPolicy `json:"restartPolicy"`
			Command       []string                       `json:"command"`
			Args          []string                       `json:"args"`
		} `json:"initContainers"`
	} `json:"spec"`
}

// decodePod decodes a pod whole when it is at most MaxPodBytes, else only
// its head (whole false): enough for injector.Inject to decide whether it
// is to be injected, far less memory than its containers in Go.
func decodePod(raw []byte) (pod *corev1.Pod, whole bool, err error) {
	if len(raw) <= MaxPodBytes {
		pod = &corev1.Pod{}
		return pod, true, json.Unmarshal(raw, pod)
	}
	var head podHead
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, false, err
	}
	pod = &corev1.Pod{ObjectMeta: head.Metadata, Spec: corev1.PodSpec{HostNetwork: head.Spec.HostNetwork,
		OS: head.Spec.OS, NodeSelector: head.Spec.NodeSelector}}
	if a := head.Spec.Affinity.NodeAffinity; a != nil {
		pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: a}
	}
	for _, c := range head.Spec.InitContainers {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{
			Name: c.Name, RestartPolicy: c.RestartPolicy, Command: c.Command, Args: c.Args,
		})
	}
	return pod, false, nil
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
