package manifest

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/injector"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testConfig pins the image so that golden files do not depend on the build.
func testConfig() *injector.Config {
	cfg := injector.DefaultConfig()
	cfg.Proxy.Image = "ghcr.io/minimesh/minimesh:v0.0.0-test"
	return &cfg
}

// injectFile is the file at path and its injection with testConfig.
func injectFile(t *testing.T, path string) (in, out []byte, events []Event) {
	t.Helper()
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, events, err = Inject(in, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	return in, out, events
}

func report(events []Event) string {
	var b strings.Builder
	for _, e := range events {
		b.WriteString(e.String() + "\n")
		for _, w := range e.Warnings {
			b.WriteString("Warning: " + w + "\n")
		}
	}
	return b.String()
}

// TestGolden: each testdata/NAME.yaml becomes NAME.golden.yaml, with the
// report in NAME.events.golden. They follow the mutation of
// injector.Inject: `go test ./injector/manifest -update` rewrites them when
// it changes, and the diff is the review.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inputs = slices.DeleteFunc(inputs, func(p string) bool { return strings.HasSuffix(p, ".golden.yaml") })
	if len(inputs) == 0 {
		t.Fatal("no testdata/*.yaml")
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		t.Run(name, func(t *testing.T) {
			_, out, events := injectFile(t, path)
			for file, got := range map[string][]byte{
				name + ".golden.yaml":   out,
				name + ".events.golden": []byte(report(events)),
			} {
				golden := filepath.Join("testdata", file)
				if *update {
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (go test ./injector/manifest -update writes it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs (go test ./injector/manifest -update rewrites it); got:\n%s", golden, got)
				}
			}
		})
	}
}

// checkUntouched fails unless out is in with only the documents of
// injected events changed: the separators and every other document come
// back byte for byte. It holds whatever the mutation is.
func checkUntouched(t *testing.T, in, out []byte, events []Event) {
	t.Helper()
	changed := map[int]bool{}
	for _, e := range events {
		if e.Injected {
			changed[e.Doc] = true
		}
	}
	ic, oc := split(in), split(out)
	if len(ic) != len(oc) {
		t.Fatalf("%d documents in, %d out:\n%s", len(ic), len(oc), out)
	}
	doc := 0
	for i := range ic {
		if !bytes.Equal(ic[i].sep, oc[i].sep) {
			t.Errorf("separator %d: %q became %q", i, ic[i].sep, oc[i].sep)
		}
		if !isEmpty(ic[i].doc) {
			doc++
		}
		if changed[doc] && !isEmpty(ic[i].doc) {
			continue
		}
		if !bytes.Equal(ic[i].doc, oc[i].doc) {
			t.Errorf("document %d (line %d) was not injected but changed:\n%q\nbecame\n%q", doc, ic[i].line, ic[i].doc, oc[i].doc)
		}
	}
}

func TestUntouchedBytes(t *testing.T) {
	in, out, events := injectFile(t, "testdata/stream.yaml")
	checkUntouched(t, in, out, events)
	// And by example, comments, flow style and the separators' comments.
	for _, keep := range []string{
		"# A mixed stream: workloads are injected, everything else is kept as written.\napiVersion: v1\nkind: Service\nmetadata:\n  name: web   # the front door\n",
		"data:\n  config.yaml: |\n    ---\n    mode: fast\n--- # a pod\n# Source: tools/templates/debug.yaml\n",
		"      hostNetwork: true\n      containers: [{name: agent, image: example/agent:1}]\n---\n",
		"      annotations: {minimesh.io/inject: disabled}\n",
		"---\n# comments only\n---\n",
		"  - name: app   # a comment of its own\n",
		"apiVersion: extensions/v1beta1\n",
		`{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "json-svc"}, "spec": {"ports": [{"port": 80}]}}` + "\n---\n",
	} {
		if !bytes.Contains(out, []byte(keep)) {
			t.Errorf("output lost %q", keep)
		}
	}
}

func TestReport(t *testing.T) {
	_, out, events := injectFile(t, "testdata/stream.yaml")
	var got []string
	for _, e := range events {
		got = append(got, e.String())
	}
	want := []string{
		`service "web" skipped: ` + ReasonNotWorkload,
		`deployment "web" injected`,
		`configmap "settings" skipped: ` + ReasonNotWorkload,
		`pod "debug" injected`,
		`cronjob "backup" injected`,
		`daemonset "node-agent" skipped: ` + injector.ReasonHostNetwork,
		`statefulset "db" skipped: ` + injector.ReasonDisabled,
		`pod "legacy" skipped: ` + injector.ReasonAlreadyInjected,
		`deployment "ancient" skipped: apiVersion extensions/v1beta1 is not supported (want apps/v1)`,
		`service "json-svc" skipped: ` + ReasonNotWorkload,
		`job "migrate" injected`,
		`service "api" skipped: ` + ReasonNotWorkload,
		`deployment "api" injected`,
		`replicationcontroller "legacy-rc" injected`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := bytes.Count(out, []byte("name: minimesh-proxy")); n != 7 {
		t.Errorf("%d sidecars in the output, want 6 injected and the legacy pod's", n)
	}
}

// TestEveryObjectSaysWhat: every object of a stream gets a report line,
// as in linkerd inject; a kind that is not injected says why, instead of
// passing through in silence (a ReplicationController did, while an old
// CronJob said "skipped").
func TestEveryObjectSaysWhat(t *testing.T) {
	rc := func(apiVersion, spec string) string {
		return "apiVersion: " + apiVersion + "\nkind: ReplicationController\nmetadata: {name: rc, namespace: shop}\nspec:\n  replicas: 2\n" + spec
	}
	const rcTemplate = "  template:\n    metadata: {labels: {app: rc}}\n    spec: {containers: [{name: app, image: example/rc:1}]}\n"
	tests := []struct {
		name, in string
		want     []string // the report's lines
		injected bool     // the document changed, with a sidecar in its pod template
	}{
		{"ReplicationController", rc("v1", rcTemplate), []string{`replicationcontroller "rc" injected`}, true},
		{"ReplicationController without a template", rc("v1", ""), []string{`replicationcontroller "rc" skipped: ` + ReasonNoTemplate}, false},
		{"ReplicationController of another version", rc("v2", rcTemplate), []string{`replicationcontroller "rc" skipped: apiVersion v2 is not supported (want v1)`}, false},
		{"Service", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n", []string{`service "web" skipped: ` + ReasonNotWorkload}, false},
		{"ConfigMap without a name", "apiVersion: v1\nkind: ConfigMap\ndata: {a: b}\n", []string{`configmap "" skipped: ` + ReasonNotWorkload}, false},
		{"a kind minimesh does not know, with a pod template", "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n" + rcTemplate,
			[]string{`rollout "r" skipped: ` + ReasonNotWorkload}, false},
		{"batch/v1beta1 CronJob", "apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: c}\n", []string{`cronjob "c" skipped: apiVersion batch/v1beta1 is not supported (want batch/v1)`}, false},
		{"object without a kind", "apiVersion: v1\nmetadata: {name: x}\n", []string{`document 1 skipped: ` + ReasonNoKind}, false},
		{"scalar", "---\njust text\n", []string{`document 1 skipped: ` + ReasonNoKind}, false},
		{"List", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n- {a: 1}\n",
			[]string{`secret "s" skipped: ` + ReasonNotWorkload, `document 1 skipped: ` + ReasonNoKind}, false},
		{"comments only", "# nothing\n---\n", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, events, err := Inject([]byte(tt.in), testConfig())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range events {
				got = append(got, e.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("report:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if changed := string(out) != tt.in; changed != tt.injected {
				t.Fatalf("document changed: %v, want %v:\n%s", changed, tt.injected, out)
			}
			if !tt.injected {
				return
			}
			var rc corev1.ReplicationController
			if err := yaml.UnmarshalStrict(out, &rc); err != nil {
				t.Fatal(err)
			}
			if rc.Spec.Template == nil || !injector.IsInjected(&corev1.Pod{ObjectMeta: rc.Spec.Template.ObjectMeta, Spec: rc.Spec.Template.Spec}) ||
				rc.Namespace != "shop" || rc.Spec.Replicas == nil || *rc.Spec.Replicas != 2 {
				t.Errorf("not an injected ReplicationController with its own fields kept:\n%s", out)
			}
		})
	}
}

// TestOptOutAboveTheTemplate: minimesh.io/inject: disabled on the
// workload itself, or on a CronJob's jobTemplate, skips it as on the pod
// template (docs/injector.md: "except workloads annotated disabled"),
// with a warning that the pods do not carry it, so that the webhook of an
// opted-in namespace would still inject them.
func TestOptOutAboveTheTemplate(t *testing.T) {
	const disabled = "{minimesh.io/inject: disabled}"
	deploy := func(own, tmpl string) string {
		return "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, annotations: " + own + "}\nspec:\n" +
			"  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}, annotations: " + tmpl + "}\n" +
			"    spec: {containers: [{name: web, image: example/web:1}]}\n"
	}
	cronJob := func(own, job string) string {
		return "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: backup, annotations: " + own + "}\nspec:\n  schedule: '0 3 * * *'\n" +
			"  jobTemplate:\n    metadata: {annotations: " + job + "}\n    spec:\n      template:\n" +
			"        spec: {restartPolicy: OnFailure, containers: [{name: b, image: example/b:1}]}\n"
	}
	notOnPods := func(field, tmpl string) string {
		return "minimesh: " + field + `[minimesh.io/inject] is "disabled" but the pod template's is not: ` +
			"the pods do not carry it, so in a namespace that opted in the webhook injects them; annotate " + tmpl + " too"
	}
	tests := []struct {
		name, in string
		report   string
		warnings []string
	}{
		{"on the Deployment", deploy(disabled, "{}"), `deployment "web" skipped: ` + ReasonWorkloadDisabled,
			[]string{notOnPods("metadata.annotations", "spec.template.metadata.annotations")}},
		{"on the pod template", deploy("{}", disabled), `deployment "web" skipped: ` + injector.ReasonDisabled, nil},
		{"on both", deploy(disabled, disabled), `deployment "web" skipped: ` + injector.ReasonDisabled, nil},
		{"enabled on the Deployment", deploy("{minimesh.io/inject: enabled}", "{}"), `deployment "web" injected`, nil},
		// A pod the injector would refuse (the sidecar's own port): the
		// workload said no, so the stream does not fail.
		{"on a Deployment whose pod would be refused", strings.Replace(deploy(disabled, "{}"), "image: example/web:1}", "image: example/web:1, ports: [{containerPort: 15001}]}", 1),
			`deployment "web" skipped: ` + ReasonWorkloadDisabled, []string{notOnPods("metadata.annotations", "spec.template.metadata.annotations")}},
		{"on the CronJob's jobTemplate", cronJob("{}", disabled), `cronjob "backup" skipped: ` + ReasonWorkloadDisabled,
			[]string{notOnPods("spec.jobTemplate.metadata.annotations", "spec.jobTemplate.spec.template.metadata.annotations")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, events, err := Inject([]byte(tt.in), testConfig())
			if err != nil {
				t.Fatal(err)
			}
			if len(events) != 1 || events[0].String() != tt.report {
				t.Fatalf("report %q, want %q", report(events), tt.report)
			}
			if !slices.Equal(events[0].Warnings, tt.warnings) {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(events[0].Warnings, "\n"), strings.Join(tt.warnings, "\n"))
			}
		})
	}
}

// TestInjectedDocument: what an injected document looks like, beyond the
// golden file: clean of zero-value noise, applyable, with the template's
// mutation written back and its own fields kept.
func TestInjectedDocument(t *testing.T) {
	_, out, _ := injectFile(t, "testdata/stream.yaml")
	for _, noise := range []string{"creationTimestamp", "status: {}", "\nstatus:", "strategy: {}", "resources: {}", "metadata: {}"} {
		if bytes.Contains(out, []byte(noise)) {
			t.Errorf("output carries %q", noise)
		}
	}
	for _, keep := range []string{
		"--- # a pod\n# Source: tools/templates/debug.yaml\napiVersion: v1\nkind: Pod\n", // leading comments of an injected doc
		"- emptyDir: {}\n", // a meaningful empty struct
		"minimesh.io/inject: enabled",
		"  namespace: shop\n",
		"  schedule: 0 3 * * *\n",
		"apiVersion: batch/v1\nkind: Job\n", // the JSON document, now YAML
	} {
		if !bytes.Contains(out, []byte(keep)) {
			t.Errorf("output lacks %q", keep)
		}
	}
	// Every document still parses.
	for _, c := range split(out) {
		if _, err := yaml.YAMLToJSON(c.doc); err != nil {
			t.Errorf("line %d: %v", c.line, err)
		}
	}
}

// TestIdempotent: injecting the output again changes nothing.
func TestIdempotent(t *testing.T) {
	_, once, _ := injectFile(t, "testdata/stream.yaml")
	twice, events, err := Inject(once, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(once, twice) {
		t.Fatalf("second injection changed the stream:\n%s", twice)
	}
	for _, e := range events {
		if e.Injected {
			t.Fatalf("second injection injected %v", e)
		}
	}
}

func TestSplitting(t *testing.T) {
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: x}]}\n"
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
	tests := []struct {
		name, in string
		injected int
		check    func(t *testing.T, out string)
	}{
		{"empty", "", 0, func(t *testing.T, out string) {
			if out != "" {
				t.Errorf("%q", out)
			}
		}},
		{"only separators", "---\n---\n", 0, nil},
		{"leading separator", "---\n" + svc, 0, nil},
		{"no final newline", svc + "---\n" + strings.TrimSuffix(pod, "\n"), 1, func(t *testing.T, out string) {
			if !strings.HasPrefix(out, svc+"---\napiVersion: v1\nkind: Pod\n") {
				t.Errorf("%q", out)
			}
		}},
		{"separator with blanks and comment", svc + "---   # next\n" + pod, 1, func(t *testing.T, out string) {
			if !strings.HasPrefix(out, svc+"---   # next\napiVersion: v1\n") {
				t.Errorf("%q", out)
			}
		}},
		{"not a separator", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: |\n    ---x\n    ---\n  b: \"\n---\"\n", 0, nil},
		{"CRLF", strings.ReplaceAll(svc+"---\n# about p\n"+pod, "\n", "\r\n"), 1, func(t *testing.T, out string) {
			if !strings.HasPrefix(out, strings.ReplaceAll(svc+"---\n# about p\napiVersion: v1\n", "\n", "\r\n")) {
				t.Errorf("%q", out)
			}
			if strings.Contains(strings.ReplaceAll(out, "\r\n", ""), "\n") {
				t.Errorf("a bare LF in %q", out)
			}
		}},
		{"scalar and array documents", "just text\n---\n- a\n- b\n", 0, nil},
		{"object that is no Kubernetes object", "a: 1\n---\nkind: Pod\n", 0, nil},
		{"empty List", "apiVersion: v1\nkind: List\nitems: []\n", 0, nil},
		{"nested List", `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"List","items":[` +
			`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"x"}]}}]}]}`, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, events, err := Inject([]byte(tt.in), testConfig())
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, e := range events {
				if e.Injected {
					n++
				}
			}
			if n != tt.injected {
				t.Errorf("%d injected, want %d: %v", n, tt.injected, events)
			}
			checkUntouched(t, []byte(tt.in), out, events)
			if tt.check != nil {
				tt.check(t, string(out))
			}
		})
	}
}

func TestErrors(t *testing.T) {
	pod := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"
	tests := []struct {
		name, in string
		want     []string
	}{
		{"not YAML", "apiVersion: v1\nkind: Service\n---\nkind: Pod\nmetadata: [\n", []string{"document 2 (line 4)", "yaml: line 5:"}},
		{"refused", pod + "  annotations: {minimesh.io/proxy-cpu-limit: lots}\nspec: {containers: [{name: a}]}\n",
			[]string{"document 1 (line 1)", `pod "p": minimesh: metadata.annotations[minimesh.io/proxy-cpu-limit]: "lots"`}},
		{"wrong type", "apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: many}\n", []string{"Deployment", "replicas"}},
		{"two documents in one", pod + "spec: {containers: [{name: a}]}\n--- {a: 1}\nkind: Service\n", []string{"more than one YAML document"}},
		{"after an end marker", pod + "spec: {containers: [{name: a}]}\n...\nkind: Service\n", []string{"more than one YAML document"}},
		{"unknown field dropped by injection", pod + "spec:\n  hostNetwrk: true\n  containers: [{name: a, Image: x}]\n",
			[]string{`pod "p"`, `unknown field "spec.hostNetwrk"`, `unknown field "spec.containers[0].Image"`, "minimesh.io/inject: disabled"}},
		{"in a List", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, annotations: {minimesh.io/inject: maybe}}\n",
			[]string{"items[1]", `pod "p"`, `"maybe"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, events, err := Inject([]byte(tt.in), testConfig())
			if err == nil {
				t.Fatalf("no error; output:\n%s", out)
			}
			if out != nil || events != nil {
				t.Errorf("output with an error: %q %v", out, events)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}

	var d *injector.DenyError
	if _, _, err := Inject([]byte(tests[1].in), testConfig()); !errors.As(err, &d) {
		t.Errorf("a refused workload's error does not unwrap to *injector.DenyError: %v", err)
	}
}

// TestUnknownFieldNotInjected: a field the typed objects do not know is
// only an error when the object would be re-encoded.
func TestUnknownFieldNotInjected(t *testing.T) {
	in := "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {minimesh.io/inject: disabled}}\nspec: {futureField: 1, containers: [{name: a}]}\n"
	out, _, err := Inject([]byte(in), testConfig())
	if err != nil || string(out) != in {
		t.Fatalf("err %v, output %q", err, out)
	}
}

// FuzzInject: no input panics; when there is no error, the documents that
// were not injected are unchanged, the injected ones parse, and injecting
// the output again changes nothing. `-fuzzminimizetime 5s` keeps the run
// from sitting on the minimization of large inputs.
func FuzzInject(f *testing.F) {
	if in, err := os.ReadFile("testdata/stream.yaml"); err == nil {
		f.Add(in)
	}
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("apiVersion: v1\r\nkind: Pod\r\nmetadata: {name: p}\r\n--- # x\r\n"))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}]}`))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nspec: {hostNetwork: true}\n"))
	f.Add([]byte("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c, namespace: n}\nspec: {jobTemplate: {spec: {template: {spec: {containers: [{name: a}]}}}}}\n"))
	cfg := testConfig()
	f.Fuzz(func(t *testing.T, in []byte) {
		out, events, err := Inject(in, cfg)
		if err != nil {
			return
		}
		checkUntouched(t, in, out, events)
		ic, oc := split(in), split(out)
		for i, c := range oc {
			if bytes.Equal(c.doc, ic[i].doc) {
				continue // the user's own bytes, parsed or not
			}
			if _, err := yaml.YAMLToJSON(c.doc); err != nil {
				t.Fatalf("injected document at line %d does not parse: %v\n%s", c.line, err, out)
			}
		}
		again, events, err := Inject(out, cfg)
		if err != nil {
			t.Fatalf("output does not inject again: %v\n%s", err, out)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("not idempotent:\n%s\n----\n%s", out, again)
		}
		for _, e := range events {
			if e.Injected {
				t.Fatalf("injected twice: %v", e)
			}
		}
	})
}
