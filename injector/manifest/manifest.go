// Package manifest injects the sidecar into the workloads of a manifest
// stream, for `minimesh inject`: the same mutation as the webhook, applied
// before the API server sees the objects, so that CI pipelines and GitOps
// repositories can hold the injected form. Documents that are not
// workloads, or that are not injected, come back byte for byte.
package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/injector"
)

// Event is what happened to one workload of the stream.
type Event struct {
	Doc      int    // 1-based document number in the stream
	Kind     string // "Deployment"
	Name     string
	Injected bool
	Reason   string
	Warnings []string
}

func (e Event) String() string {
	what := e.Reason
	if !e.Injected {
		what = "skipped: " + e.Reason
	}
	return fmt.Sprintf("%s %q %s", strings.ToLower(e.Kind), e.Name, what)
}

// separator is a YAML document marker line, possibly with a comment, and
// its line break.
var separator = regexp.MustCompile(`(?m)^---[ \t]*(?:#[^\n]*)?(?:\n|\z)`)

// Inject returns the stream with every workload injected (Manual mode:
// they are marked minimesh.io/inject: enabled), and what happened to each.
// Untouched documents, separators and comments between them are kept
// exactly; an injected document is re-encoded, losing its comments. A
// document that is not YAML, or a workload the injector refuses, is an
// error naming the document, and no output is returned.
func Inject(in []byte, cfg *injector.Config) ([]byte, []Event, error) {
	var out bytes.Buffer
	var events []Event
	seps := separator.FindAllIndex(in, -1)
	start, doc := 0, 0
	for i := 0; i <= len(seps); i++ {
		end, next := len(in), len(in)
		if i < len(seps) {
			end, next = seps[i][0], seps[i][1]
		}
		raw := in[start:end]
		if len(bytes.TrimSpace(stripComments(raw))) > 0 {
			doc++
			line := bytes.Count(in[:start], []byte("\n")) + 1
			changed, evs, err := injectDoc(raw, doc, cfg)
			if err != nil {
				return nil, nil, fmt.Errorf("document %d (line %d): %w", doc, line, err)
			}
			events = append(events, evs...)
			if changed != nil {
				raw = changed
			}
		}
		out.Write(raw)
		out.Write(in[end:next])
		start = next
	}
	return out.Bytes(), events, nil
}

// stripComments drops comment lines, so that a document of only comments
// counts as empty.
func stripComments(b []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l...)
			out = append(out, '\n')
		}
	}
	return out
}

// injectDoc returns the new bytes of one document, or nil when it is
// unchanged.
func injectDoc(raw []byte, doc int, cfg *injector.Config) ([]byte, []Event, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, nil, err
	}
	changed, evs, err := injectObject(js, doc, cfg)
	if err != nil || changed == nil {
		return nil, evs, err
	}
	y, err := yaml.JSONToYAML(changed)
	if err != nil {
		return nil, nil, err
	}
	// Keep the document's trailing newline, if it had one, so the
	// separator that follows stays on its own line.
	if !bytes.HasSuffix(y, []byte("\n")) {
		y = append(y, '\n')
	}
	return y, evs, nil
}

// injectObject injects one JSON object (a workload or a List), returning
// its new JSON or nil when unchanged.
func injectObject(js []byte, doc int, cfg *injector.Config) ([]byte, []Event, error) {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		// Not an object (a scalar or a list at the top): not ours.
		return nil, nil, nil
	}
	if tm.Kind == "List" && tm.APIVersion == "v1" {
		return injectList(js, doc, cfg)
	}
	w, err := decodeWorkload(tm, js)
	if err != nil || w == nil {
		return nil, nil, err
	}
	meta, tmpl := w.parts()
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	if tm.Kind == "Pod" {
		pod = w.obj.(*corev1.Pod)
	}
	res, err := injector.Inject(injector.Input{Pod: pod, Namespace: meta.Namespace, Manual: true, WorkloadName: meta.Name}, cfg)
	ev := Event{Doc: doc, Kind: tm.Kind, Name: meta.Name, Injected: res.Injected, Reason: res.Reason, Warnings: res.Warnings}
	if err != nil {
		return nil, nil, fmt.Errorf("%s %q: %w", strings.ToLower(tm.Kind), meta.Name, err)
	}
	if !res.Injected {
		return nil, []Event{ev}, nil
	}
	if tm.Kind == "Pod" {
		w.obj = res.Pod
	} else {
		tmpl.ObjectMeta, tmpl.Spec = res.Pod.ObjectMeta, res.Pod.Spec
	}
	out, err := encode(w.obj)
	if err != nil {
		return nil, nil, err
	}
	return out, []Event{ev}, nil
}

func injectList(js []byte, doc int, cfg *injector.Config) ([]byte, []Event, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(js, &list); err != nil {
		return nil, nil, err
	}
	var items []json.RawMessage
	if err := json.Unmarshal(list["items"], &items); err != nil && list["items"] != nil {
		return nil, nil, fmt.Errorf("list items: %w", err)
	}
	var events []Event
	changed := false
	for i, it := range items {
		out, evs, err := injectObject(it, doc, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("item %d: %w", i, err)
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
		return nil, nil, err
	}
	list["items"] = b
	out, err := json.Marshal(list)
	return out, events, err
}

// workload is a decoded object that holds a pod template (or is a pod).
type workload struct{ obj any }

func decodeWorkload(tm metav1.TypeMeta, js []byte) (*workload, error) {
	var obj any
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/Pod":
		obj = &corev1.Pod{}
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "apps/v1/StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "apps/v1/DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "apps/v1/ReplicaSet":
		obj = &appsv1.ReplicaSet{}
	case "batch/v1/Job":
		obj = &batchv1.Job{}
	case "batch/v1/CronJob":
		obj = &batchv1.CronJob{}
	default:
		return nil, nil
	}
	if err := json.Unmarshal(js, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return &workload{obj: obj}, nil
}

// parts are the workload's own metadata and its pod template (nil for a
// pod).
func (w *workload) parts() (*metav1.ObjectMeta, *corev1.PodTemplateSpec) {
	switch o := w.obj.(type) {
	case *corev1.Pod:
		return &o.ObjectMeta, &corev1.PodTemplateSpec{}
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
	panic(fmt.Sprintf("manifest: workload of type %T", w.obj))
}

// encode marshals a typed object without the empty fields that Go's zero
// values add (creationTimestamp: null, status: {}), which were not in the
// user's file and would only be noise in a diff.
func encode(obj any) ([]byte, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	prune(m, true)
	return json.Marshal(m)
}

func prune(v any, top bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if k == "creationTimestamp" && c == nil {
				delete(x, k)
				continue
			}
			if k == "status" && top {
				if s, ok := c.(map[string]any); ok && len(s) == 0 {
					delete(x, k)
					continue
				}
			}
			prune(c, false)
		}
	case []any:
		for _, c := range x {
			prune(c, false)
		}
	}
}
