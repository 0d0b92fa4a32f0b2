package injector

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	kjson "sigs.k8s.io/json"

	"github.com/minimesh/minimesh/wellknown"
)

// podWithUnknownFields is a pod from an API server newer than the
// injector's k8s.io/api: fields the injector cannot decode in the metadata,
// the pod spec, an init container, a container, an env entry and a
// volume, at several depths, with numbers as the server wrote them.
const podWithUnknownFields = `{"apiVersion":"v1","kind":"Pod",
 "metadata":{"generateName":"web-","annotations":{"minimesh.io/inject":"enabled"},"futureMeta":{"a":1}},
 "spec":{"futureSpec":[1,2.50,"x"],
  "initContainers":[{"name":"migrate","image":"m","resources":{"futureResources":true},"futureField":"mine"}],
  "containers":[{"name":"app","image":"x","futureField":{"deep":["app's"]},"env":[{"name":"LOG","value":"1","futureEnv":"e"}]}],
  "volumes":[{"name":"data","emptyDir":{"futureEmptyDir":"x"},"futureVolume":7}]},
 "status":{"futureStatus":1}}`

// decodeRaw decodes a pod as the API server's own decoders do: keys
// case-sensitive, fields it does not know dropped.
func decodeRaw(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	return pod, kjson.UnmarshalCaseSensitivePreserveInts(raw, pod)
}

// generic decodes JSON into maps and slices, numbers as written.
func generic(t testing.TB, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

// applyPatch patches raw, the pod as the API server sent it, with
// Patch(before, after), as the API server does, and checks the result: it
// decodes to after, and it is raw with exactly Inject's additions: every
// field of raw, known to the injector or not, where it was and unchanged,
// and every element added exactly the Go value Inject made. It returns the
// patch and the patched pod.
func applyPatch(t testing.TB, raw []byte, before, after *corev1.Pod) (patch, out []byte) {
	t.Helper()
	patch, err := Patch(before, after)
	if err != nil {
		t.Fatalf("Patch: %v", err)
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err = p.Apply(raw)
	if err != nil {
		t.Fatalf("apply: %v\npatch: %s\npod: %s", err, patch, raw)
	}
	got, err := decodeRaw(out)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(got, after) {
		t.Fatalf("the patched pod is not the mutated pod\npatch: %s\npatched: %s", patch, out)
	}
	doc, orig := generic(t, out).(map[string]any), generic(t, raw).(map[string]any)
	if err := undoInjection(doc, orig, before, after); err != nil {
		t.Fatalf("%v\npatch: %s\npatched: %s", err, patch, out)
	}
	if !reflect.DeepEqual(doc, orig) {
		undone, _ := json.Marshal(doc)
		t.Fatalf("the pod's own fields changed\nsent:            %s\npatched, undone: %s\npatch: %s", raw, undone, patch)
	}
	return patch, out
}

// undoInjection takes out of doc, the patched pod, what Inject added to
// orig, the pod sent, checking that each added element is exactly the Go
// value Inject made (nothing of the pod's own moved into it), and puts
// back the annotations, labels and env values, which applyPatch compared
// whole through the decoded pod. What is left must be orig.
func undoInjection(doc, orig map[string]any, before, after *corev1.Pod) error {
	meta, _ := doc["metadata"].(map[string]any)
	ometa, _ := orig["metadata"].(map[string]any)
	spec, _ := doc["spec"].(map[string]any)
	ospec, _ := orig["spec"].(map[string]any)
	if meta == nil || ometa == nil || spec == nil || ospec == nil {
		return fmt.Errorf("metadata or spec is not an object")
	}
	for _, k := range []string{"annotations", "labels"} {
		restore(meta, ometa, k)
	}
	added := len(after.Spec.InitContainers) - len(before.Spec.InitContainers)
	if err := undoArray(spec, ospec, "initContainers", true, after.Spec.InitContainers[:added]); err != nil {
		return err
	}
	if err := undoArray(spec, ospec, "volumes", false, after.Spec.Volumes[len(before.Spec.Volumes):]); err != nil {
		return err
	}
	// The user's init containers, those put first taken out, and the
	// app's get env entries appended.
	for _, l := range []struct {
		key           string
		before, after []corev1.Container
	}{
		{"initContainers", before.Spec.InitContainers, after.Spec.InitContainers[added:]},
		{"containers", before.Spec.Containers, after.Spec.Containers},
	} {
		if err := undoEnv(spec, ospec, l.key, l.before, l.after); err != nil {
			return err
		}
	}
	return nil
}

// undoEnv takes the env entries Inject appended out of each container of
// the array m[k] and puts back the values it rewrote.
func undoEnv(m, orig map[string]any, k string, before, after []corev1.Container) error {
	cs, _ := m[k].([]any)
	ocs, _ := orig[k].([]any)
	for i := range before {
		if i >= len(cs) || i >= len(ocs) {
			return fmt.Errorf("%s: %v, want %d", k, m[k], len(before))
		}
		c, _ := cs[i].(map[string]any)
		oc, _ := ocs[i].(map[string]any)
		if c == nil || oc == nil {
			continue // nothing added: compared whole
		}
		n := len(before[i].Env)
		if err := undoArray(c, oc, "env", false, after[i].Env[n:]); err != nil {
			return fmt.Errorf("%s[%d]: %w", k, i, err)
		}
		env, _ := c["env"].([]any)
		oenv, _ := oc["env"].([]any)
		for j := range min(len(env), len(oenv)) {
			e, _ := env[j].(map[string]any)
			oe, _ := oenv[j].(map[string]any)
			if e != nil && oe != nil {
				restore(e, oe, "value")
			}
		}
	}
	return nil
}

// restore sets m[k] back to orig's, or removes it if orig has none.
func restore(m, orig map[string]any, k string) {
	if v, ok := orig[k]; ok {
		m[k] = v
	} else {
		delete(m, k)
	}
}

// undoArray takes the elements added first (or last) out of the array
// m[k], checking that each is exactly its Go value, and puts back orig's
// value where the array was added whole.
func undoArray[T any](m, orig map[string]any, k string, first bool, added []T) error {
	if len(added) == 0 {
		return nil
	}
	arr, ok := m[k].([]any)
	if !ok || len(arr) < len(added) {
		return fmt.Errorf("%s: %v, want %d elements added", k, m[k], len(added))
	}
	var ins, rest []any
	if first {
		ins, rest = arr[:len(added)], arr[len(added):]
	} else {
		ins, rest = arr[len(arr)-len(added):], arr[:len(arr)-len(added)]
	}
	for i := range ins {
		b, err := json.Marshal(added[i])
		if err != nil {
			return err
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var want any
		if err := d.Decode(&want); err != nil {
			return err
		}
		if !reflect.DeepEqual(ins[i], want) {
			return fmt.Errorf("%s: added element %v, want exactly %s", k, ins[i], b)
		}
	}
	if o, ok := orig[k].([]any); len(rest) == 0 && !(ok && len(o) > 0) {
		restore(m, orig, k) // added whole: absent, null or empty before
	} else {
		m[k] = rest
	}
	return nil
}

// withJSON returns raw with edit applied to its generic form.
func withJSON(t testing.TB, raw string, edit func(pod map[string]any)) string {
	t.Helper()
	pod := generic(t, []byte(raw)).(map[string]any)
	edit(pod)
	b, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func obj(m map[string]any, path ...string) map[string]any {
	for _, k := range path {
		m = m[k].(map[string]any)
	}
	return m
}

// TestPatchKeepsUnknownFields: the webhook's patch, applied to the pod as
// a newer API server sent it, keeps every field the injector cannot
// decode where it was, and adds nothing but Inject's changes. The diff of
// re-encoded pods it replaces moved the user's first init container's
// unknown field onto the sidecar (the init containers shift by one) and
// dropped it from the user's.
func TestPatchKeepsUnknownFields(t *testing.T) {
	injectedRaw := func(t *testing.T) string {
		pod, err := decodeRaw([]byte(podWithUnknownFields))
		if err != nil {
			t.Fatal(err)
		}
		res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
		if err != nil {
			t.Fatal(err)
		}
		_, out := applyPatch(t, []byte(podWithUnknownFields), pod, res.Pod)
		return string(out)
	}
	tests := []struct {
		name string
		raw  func(t *testing.T) string
		// labels of the namespace: opted in when the pod's annotations
		// are not.
		nsLabels map[string]string
		reason   string
		// wantPaths are the distinct paths of the patch's operations.
		wantPaths []string
	}{
		{
			name: "init container shifted by the sidecar",
			raw:  func(*testing.T) string { return podWithUnknownFields },
			wantPaths: []string{"/metadata/annotations/minimesh.io~1status", "/spec/initContainers/0",
				"/spec/initContainers/1/env", "/spec/volumes/-", "/spec/containers/0/env/-"},
		},
		{
			name: "iptables: two init containers first",
			raw: func(*testing.T) string {
				return strings.Replace(podWithUnknownFields, `"minimesh.io/inject":"enabled"`,
					`"minimesh.io/inject":"enabled","minimesh.io/interception":"iptables"`, 1)
			},
			wantPaths: []string{"/metadata/annotations/minimesh.io~1status", "/spec/initContainers/0",
				"/spec/initContainers/1", "/spec/volumes/-"},
		},
		{
			name: "no annotations, init containers, volumes or env: added whole",
			raw: func(*testing.T) string {
				return `{"metadata":{"name":"solo","futureMeta":1},"spec":{"futureSpec":true,` +
					`"containers":[{"name":"app","image":"x","futureField":1},{"name":"second","image":"y","env":[{"name":"A","futureEnv":null}]}]}}`
			},
			nsLabels: map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled},
			wantPaths: []string{"/metadata/annotations", "/spec/initContainers", "/spec/volumes",
				"/spec/containers/0/env", "/spec/containers/1/env/-"},
		},
		{
			name: "empty and null annotations, init containers, volumes and env",
			raw: func(*testing.T) string {
				return `{"metadata":{"name":"solo","annotations":null,"labels":{}},"spec":{"initContainers":[],"volumes":null,` +
					`"containers":[{"name":"app","image":"x","env":[]},{"name":"b","image":"x","env":null}]}}`
			},
			nsLabels: map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled},
			wantPaths: []string{"/metadata/annotations", "/spec/initContainers", "/spec/volumes",
				"/spec/containers/0/env", "/spec/containers/1/env"},
		},
		{
			name: "JAVA_TOOL_OPTIONS: the app's entry gets minimesh's options appended, nothing else",
			raw: func(t *testing.T) string {
				return withJSON(t, podWithUnknownFields, func(pod map[string]any) {
					c := obj(pod, "spec")["containers"].([]any)[0].(map[string]any)
					c["env"] = append(c["env"].([]any), map[string]any{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g", "futureEnv": "j"})
				})
			},
			wantPaths: []string{"/metadata/annotations/minimesh.io~1status", "/spec/initContainers/0",
				"/spec/initContainers/1/env", "/spec/volumes/-", "/spec/containers/0/env/1/value", "/spec/containers/0/env/-"},
		},
		{
			name: "reinvocation: a container added since gets the proxy env",
			raw: func(t *testing.T) string {
				return withJSON(t, injectedRaw(t), func(pod map[string]any) {
					spec := obj(pod, "spec")
					spec["containers"] = append(spec["containers"].([]any), map[string]any{"name": "added", "image": "y", "futureField": "z"})
					spec["initContainers"].([]any)[0].(map[string]any)["futureField"] = "the sidecar's own"
				})
			},
			reason:    ReasonReinvoked,
			wantPaths: []string{"/spec/containers/1/env"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := []byte(tt.raw(t))
			pod, err := decodeRaw(raw)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Inject(Input{Pod: pod, Namespace: "shop", NamespaceLabels: tt.nsLabels}, testConfig())
			if err != nil || !res.Injected {
				t.Fatalf("not injected: %v %+v", err, res)
			}
			if want := cmpOr(tt.reason, ReasonInjected); res.Reason != want {
				t.Fatalf("reason %q, want %q", res.Reason, want)
			}
			patch, out := applyPatch(t, raw, pod, res.Pod)
			var ops []struct{ Op, Path string }
			if err := json.Unmarshal(patch, &ops); err != nil {
				t.Fatal(err)
			}
			var paths []string
			for _, op := range ops {
				if op.Op != "add" {
					t.Errorf("op %s %s: the patch only adds", op.Op, op.Path)
				}
				if !slices.Contains(paths, op.Path) {
					paths = append(paths, op.Path)
				}
			}
			if !slices.Equal(paths, tt.wantPaths) {
				t.Errorf("paths %q, want %q\npatch: %s", paths, tt.wantPaths, patch)
			}
			// Spelled out for the init container of the report.
			var got struct {
				Spec struct {
					InitContainers []map[string]any `json:"initContainers"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			for _, c := range got.Spec.InitContainers {
				if want := map[any]any{"migrate": "mine", wellknown.ProxyContainerName: nil, initContainerName: nil}[c["name"]]; tt.reason == "" && c["futureField"] != want {
					t.Errorf("init container %v: futureField %v, want %v", c["name"], c["futureField"], want)
				}
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestPatchRefusesWhatItCannotWrite: a difference outside what Inject
// changes is an error, not a patch that silently leaves it out.
func TestPatchRefusesWhatItCannotWrite(t *testing.T) {
	pod := appPod(enabled())
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	res, err := Inject(Input{Pod: pod, Namespace: "shop"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Patch(pod, res.Pod); err != nil {
		t.Fatalf("Inject's own result: %v", err)
	}
	for name, edit := range map[string]func(p *corev1.Pod){
		"container image":               func(p *corev1.Pod) { p.Spec.Containers[0].Image = "other" },
		"user's init container":         func(p *corev1.Pod) { p.Spec.InitContainers[len(p.Spec.InitContainers)-1].Image = "other" },
		"user's init container dropped": func(p *corev1.Pod) { p.Spec.InitContainers = p.Spec.InitContainers[:1] },
		"init container appended": func(p *corev1.Pod) {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "z"})
		},
		"user's volume":        func(p *corev1.Pod) { p.Spec.Volumes[0].Name = "other" },
		"volume removed":       func(p *corev1.Pod) { p.Spec.Volumes = nil },
		"container added":      func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "z"}) },
		"env entry renamed":    func(p *corev1.Pod) { p.Spec.Containers[0].Env[0].Name = "OTHER" },
		"env entry removed":    func(p *corev1.Pod) { p.Spec.Containers[0].Env = nil },
		"env entry valueFrom":  func(p *corev1.Pod) { p.Spec.Containers[0].Env[0].ValueFrom = &corev1.EnvVarSource{} },
		"annotation removed":   func(p *corev1.Pod) { delete(p.Annotations, wellknown.AnnotationInject) },
		"label removed":        func(p *corev1.Pod) { p.Labels = nil },
		"hostname":             func(p *corev1.Pod) { p.Spec.Hostname = "h" },
		"pod security context": func(p *corev1.Pod) { p.Spec.SecurityContext = &corev1.PodSecurityContext{} },
		"metadata name":        func(p *corev1.Pod) { p.Name = "other" },
		"status":               func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning },
		"sidecar before the user's": func(p *corev1.Pod) {
			p.Spec.InitContainers[0], p.Spec.InitContainers[1] = p.Spec.InitContainers[1], p.Spec.InitContainers[0]
		},
	} {
		after := res.Pod.DeepCopy()
		edit(after)
		if patch, err := Patch(pod, after); err == nil {
			t.Errorf("%s: no error, patch %s", name, patch)
		}
	}
}

// TestPatchLabelsAndEscaping: map keys are RFC 6901 reference tokens, "~"
// escaped before "/"; a new label is written like an annotation.
func TestPatchLabelsAndEscaping(t *testing.T) {
	for key, want := range map[string]string{"a/b": "a~1b", "a~b": "a~0b", "~1": "~01", "/~": "~1~0", "plain": "plain"} {
		if got := escapePointer(key); got != want {
			t.Errorf("escapePointer(%q) = %q, want %q", key, got, want)
		}
	}
	raw := []byte(`{"metadata":{"labels":{"x":"1"},"annotations":{"a~1b":"kept","a/b":"old"}},"spec":{"containers":[{"name":"c"}]}}`)
	before, err := decodeRaw(raw)
	if err != nil {
		t.Fatal(err)
	}
	after := before.DeepCopy()
	after.Labels["team/x~y"] = "shop"
	after.Annotations["a/b"] = "new"
	after.Annotations["~"] = "tilde"
	patch, out := applyPatch(t, raw, before, after)
	want := `[{"op":"add","path":"/metadata/annotations/a~1b","value":"new"},{"op":"add","path":"/metadata/annotations/~0","value":"tilde"},` +
		`{"op":"add","path":"/metadata/labels/team~1x~0y","value":"shop"}]`
	if string(patch) != want {
		t.Errorf("patch\n%s, want\n%s\npatched: %s", patch, want, out)
	}
}

// FuzzPatch: for any pod the API server could send (objects where the
// patch writes into them; unknown fields anywhere), the patch of Inject's
// result applies, gives the mutated pod, and keeps every field of the pod
// sent unchanged and in place (applyPatch).
func FuzzPatch(f *testing.F) {
	f.Add([]byte(podWithUnknownFields))
	f.Add([]byte(strings.Replace(podWithUnknownFields, `"minimesh.io/inject":"enabled"`,
		`"minimesh.io/inject":"enabled","minimesh.io/interception":"iptables"`, 1)))
	f.Add([]byte(`{"metadata":{"name":"solo","futureMeta":1},"spec":{"futureSpec":true,"containers":[{"name":"app","futureField":1},{"name":"b","env":[{"name":"A","x":null}]}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":null,"labels":{}},"spec":{"initContainers":[],"volumes":null,"containers":[{"name":"app","env":[]},{"name":"b","env":null}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"a/b~c":"1","minimesh.io/status":"injected"}},"spec":{"initContainers":[{},{"name":"m","x":[{}]}],"volumes":[null],` +
		`"containers":[{"name":"app","env":[{"name":"JAVA_TOOL_OPTIONS","value":"-Xmx1g","x":1},{"name":"HTTP_PROXY","value":"mine"}]}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"minimesh.io/proxy-https":"enabled"}},"spec":{"containers":[{"name":"app","env":[{"name":"JAVA_TOOL_OPTIONS"}]}]}}`))
	cfg := testConfig()
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 64<<10 {
			return
		}
		// As the API server sends it: no duplicate keys (the generic
		// decode keeps the last), and objects where Patch writes under
		// them: the API server encodes every pod, container and env
		// entry as an object.
		d := json.NewDecoder(bytes.NewReader(in))
		d.UseNumber()
		var doc any
		if d.Decode(&doc) != nil || !apiServerShaped(doc) {
			return
		}
		raw, err := json.Marshal(doc)
		if err != nil {
			return
		}
		pod, err := decodeRaw(raw)
		if err != nil {
			return
		}
		res, err := Inject(Input{Pod: pod, Namespace: "shop",
			NamespaceLabels: map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}}, cfg)
		if err != nil || !res.Injected {
			return
		}
		applyPatch(t, raw, pod, res.Pod)
	})
}

// apiServerShaped reports whether doc has objects where a pod the API
// server encodes always has them: the pod, its metadata and spec, each
// container and init container and env entry.
func apiServerShaped(doc any) bool {
	pod, ok := doc.(map[string]any)
	if !ok {
		return false
	}
	if _, ok := pod["metadata"].(map[string]any); !ok {
		return false
	}
	spec, ok := pod["spec"].(map[string]any)
	if !ok {
		return false
	}
	for _, k := range []string{"initContainers", "containers"} {
		cs, _ := spec[k].([]any)
		for _, c := range cs {
			c, ok := c.(map[string]any)
			if !ok {
				return false
			}
			env, _ := c["env"].([]any)
			for _, e := range env {
				if _, ok := e.(map[string]any); !ok {
					return false
				}
			}
		}
	}
	return true
}
