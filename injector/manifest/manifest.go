// Package manifest injects the sidecar into the workloads of a manifest
// stream, for `minimesh inject`: the same mutation as the webhook, applied
// before the API server sees the objects, so that CI pipelines and GitOps
// repositories can hold the injected form. Documents that are not
// workloads, or that are not injected, come back byte for byte, because a
// reviewer diffing the output must see only what injection changed.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	yamlv2 "go.yaml.in/yaml/v2"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/wellknown"
)

// Event is what happened to one workload of the stream, for the report
// that `minimesh inject` prints on stderr.
type Event struct {
	Doc      int    // 1-based number of the document among the non-empty ones
	Kind     string // "Deployment"
	Name     string
	Injected bool
	Reason   string // an injector.Reason…, or why the object was not looked at
	Warnings []string
}

// String is the report line, in linkerd inject's words.
func (e Event) String() string {
	what := e.Reason
	if !e.Injected {
		what = "skipped: " + e.Reason
	}
	return fmt.Sprintf("%s %q %s", strings.ToLower(e.Kind), e.Name, what)
}

// separator is a line that is exactly `---`, optionally followed by
// blanks and a comment, with its line break. A `---` line followed by
// content (`--- !!map`, `--- {a: 1}`) is not split here and is caught as a
// document holding two.
var separator = regexp.MustCompile(`(?m)^---(?:[ \t]+(?:#[^\n]*)?)?\r?(?:\n|\z)`)

// chunk is one document's raw bytes and the separator line that ends it
// (empty for the last one).
type chunk struct {
	doc, sep []byte
	line     int // 1-based line of the document's first byte in the stream
}

// split cuts the stream at separator lines; joining every doc and sep
// gives the stream back.
func split(in []byte) []chunk {
	var out []chunk
	start, line := 0, 1
	for _, s := range separator.FindAllIndex(in, -1) {
		out = append(out, chunk{doc: in[start:s[0]], sep: in[s[0]:s[1]], line: line})
		line += bytes.Count(in[start:s[1]], []byte("\n"))
		start = s[1]
	}
	return append(out, chunk{doc: in[start:], line: line})
}

// Inject returns the stream with every workload injected (Manual mode:
// each is marked minimesh.io/inject: enabled), and what happened to each.
// Documents that are not injected, and all separators, are kept exactly;
// an injected document is re-encoded, keeping only its leading comments.
// A document that is not YAML, or a workload the injector refuses, is an
// error naming the document, and then no output is returned: a partial
// stream piped into kubectl apply would deploy half an application.
func Inject(in []byte, cfg *injector.Config) ([]byte, []Event, error) {
	var out bytes.Buffer
	out.Grow(len(in))
	var events []Event
	doc := 0
	for _, c := range split(in) {
		raw := c.doc
		if !isEmpty(raw) {
			doc++
			changed, evs, err := injectDoc(raw, doc, c.line, cfg)
			if err != nil {
				return nil, nil, fmt.Errorf("document %d (line %d): %w", doc, c.line, err)
			}
			events = append(events, evs...)
			if changed != nil {
				raw = changed
			}
		}
		out.Write(raw)
		out.Write(c.sep)
	}
	return out.Bytes(), events, nil
}

// isEmpty reports whether a document holds only blanks and comments, which
// YAML reads as no document at all.
func isEmpty(doc []byte) bool {
	for l := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			return false
		}
	}
	return true
}

// injectDoc returns the new bytes of one document, or nil when it is
// unchanged. line is where the document starts, to make the YAML parser's
// line numbers (counted from the document) point into the stream.
func injectDoc(raw []byte, doc, line int, cfg *injector.Config) ([]byte, []Event, error) {
	if err := oneDocument(raw); err != nil {
		return nil, nil, streamLines(err, line-1)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, nil, streamLines(err, line-1)
	}
	changed, evs, err := injectObject(js, doc, cfg)
	if err != nil || changed == nil {
		return nil, evs, err
	}
	y, err := yaml.JSONToYAML(changed)
	if err != nil {
		return nil, nil, fmt.Errorf("encode injected document: %w", err)
	}
	// Comments before the object (Helm's `# Source: chart/templates/x.yaml`)
	// say where it came from; they survive, the ones inside cannot.
	y = append(leadingComments(raw), y...)
	if bytes.Contains(raw, []byte("\r\n")) {
		y = bytes.ReplaceAll(bytes.ReplaceAll(y, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	}
	return y, evs, nil
}

// oneDocument refuses a chunk that YAML reads as several documents (after
// `...`, or a `---` line with content on it): yaml.YAMLToJSON reads only
// the first, and re-encoding it would silently drop the others.
func oneDocument(raw []byte) error {
	dec := yamlv2.NewDecoder(bytes.NewReader(raw))
	var v any
	if err := dec.Decode(&v); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := dec.Decode(&v); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document: start each one with a line of its own that is only `---`")
	}
	return nil
}

var yamlLine = regexp.MustCompile(`\bline (\d+)\b`)

// streamLines shifts the line numbers in a YAML error by offset.
func streamLines(err error, offset int) error {
	msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, convErr := strconv.Atoi(m[len("line "):])
		if convErr != nil {
			return m
		}
		return "line " + strconv.Itoa(n+offset)
	})
	return errors.New(msg)
}

// leadingComments are the comment and blank lines that open a document.
func leadingComments(raw []byte) []byte {
	n := 0
	for l := range bytes.Lines(raw) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			break
		}
		n += len(l)
	}
	return bytes.Clone(raw[:n])
}

// injectObject injects one JSON object (a workload or a List), returning
// its new JSON or nil when unchanged.
func injectObject(js []byte, doc int, cfg *injector.Config) ([]byte, []Event, error) {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		// Not an object (a scalar or an array at the top): not ours.
		return nil, nil, nil
	}
	if tm.Kind == "List" && tm.APIVersion == "v1" {
		return injectList(js, doc, cfg)
	}
	obj, ok := newWorkload(tm)
	if !ok {
		return nil, nil, nil
	}
	if obj == nil {
		var meta struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		_ = json.Unmarshal(js, &meta)
		return nil, []Event{{Doc: doc, Kind: tm.Kind, Name: meta.Metadata.Name,
			Reason: fmt.Sprintf("apiVersion %s is not supported (want %s)", tm.APIVersion, workloadAPIVersion[tm.Kind])}}, nil
	}
	// Strict and case-sensitive like the API server; the fields it would
	// refuse or drop matter only if the object is re-encoded, below.
	strictErrs, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	meta, tmpl := parts(obj)
	what := fmt.Sprintf("%s %q", strings.ToLower(tm.Kind), meta.Name)
	pod, isPod := obj.(*corev1.Pod)
	if !isPod {
		pod = &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	}
	res, err := injector.Inject(injector.Input{Pod: pod, Namespace: meta.Namespace, Manual: true, WorkloadName: meta.Name}, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	ev := Event{Doc: doc, Kind: tm.Kind, Name: meta.Name, Injected: res.Injected, Reason: res.Reason, Warnings: res.Warnings}
	if !res.Injected {
		return nil, []Event{ev}, nil
	}
	if len(strictErrs) > 0 {
		msgs := make([]string, len(strictErrs))
		for i, e := range strictErrs {
			msgs[i] = e.Error()
		}
		return nil, nil, fmt.Errorf("%s: %s: injecting re-encodes the object from the Kubernetes API types minimesh was built with, which would drop it; fix it, or annotate the workload %s: %s",
			what, strings.Join(msgs, ", "), wellknown.AnnotationInject, wellknown.InjectDisabled)
	}
	if isPod {
		obj = res.Pod
	} else {
		tmpl.ObjectMeta, tmpl.Spec = res.Pod.ObjectMeta, res.Pod.Spec
	}
	out, err := encode(obj)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, []Event{ev}, nil
}

// injectList walks a v1 List (what `kubectl get -o yaml` prints), keeping
// every field of the List and of its items as they are unless an item is
// injected; then the whole List is re-encoded.
func injectList(js []byte, doc int, cfg *injector.Config) ([]byte, []Event, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(js, &list); err != nil {
		return nil, nil, fmt.Errorf("List: %w", err)
	}
	var items []json.RawMessage
	if raw, ok := list["items"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, nil, fmt.Errorf("List items: %w", err)
		}
	}
	var events []Event
	changed := false
	for i, it := range items {
		out, evs, err := injectObject(it, doc, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		events = append(events, evs...)
		if out != nil {
			items[i], changed = out, true
		}
	}
	if !changed {
		return nil, events, nil
	}
	b, err := json.Marshal(items)
	if err != nil {
		return nil, nil, fmt.Errorf("encode List items: %w", err)
	}
	list["items"] = b
	out, err := json.Marshal(list)
	if err != nil {
		return nil, nil, fmt.Errorf("encode List: %w", err)
	}
	return out, events, nil
}

// workloadAPIVersion is the version of each kind that holds a pod
// template; older ones (extensions/v1beta1, batch/v1beta1) are gone from
// current API servers.
var workloadAPIVersion = map[string]string{
	"Pod": "v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
	"ReplicaSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1",
}

// newWorkload returns an empty typed object for a workload's kind: ok is
// false for kinds that are not workloads, obj is nil for a workload kind
// in an unsupported version.
func newWorkload(tm metav1.TypeMeta) (obj any, ok bool) {
	want, ok := workloadAPIVersion[tm.Kind]
	if !ok {
		return nil, false
	}
	if tm.APIVersion != want {
		return nil, true
	}
	switch tm.Kind {
	case "Pod":
		return &corev1.Pod{}, true
	case "Deployment":
		return &appsv1.Deployment{}, true
	case "StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "ReplicaSet":
		return &appsv1.ReplicaSet{}, true
	case "Job":
		return &batchv1.Job{}, true
	default: // CronJob
		return &batchv1.CronJob{}, true
	}
}

// parts are the workload's own metadata and its pod template (nil for a
// pod).
func parts(obj any) (*metav1.ObjectMeta, *corev1.PodTemplateSpec) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &o.ObjectMeta, nil
	case *appsv1.Deployment:
		return &o.ObjectMeta, &o.Spec.Template
	case *appsv1.StatefulSet:
		return &o.ObjectMeta, &o.Spec.Template
	case *appsv1.DaemonSet:
		return &o.ObjectMeta, &o.Spec.Template
	case *appsv1.ReplicaSet:
		return &o.ObjectMeta, &o.Spec.Template
	case *batchv1.Job:
		return &o.ObjectMeta, &o.Spec.Template
	case *batchv1.CronJob:
		return &o.ObjectMeta, &o.Spec.JobTemplate.Spec.Template
	}
	panic(fmt.Sprintf("manifest: workload of type %T", obj))
}
