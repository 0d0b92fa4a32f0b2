// Package manifest injects the sidecar into the workloads of a manifest
// stream, for `minimesh inject`: the same mutation as the webhook, applied
// before the API server sees the objects, so that CI pipelines and GitOps
// repositories can hold the injected form. Documents that are not
// workloads, or that are not injected, come back byte for byte, because a
// reviewer diffing the output must see only what injection changed.
package manifest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
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
	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/wellknown"
)

// Event is what happened to one object of the stream, for the report
// that `minimesh inject` prints on stderr.
type Event struct {
	Doc      int    // 1-based number of the document among the non-empty ones
	Kind     string // "Deployment"; empty for a document that is no Kubernetes object
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
	if e.Kind == "" {
		return fmt.Sprintf("document %d %s", e.Doc, what)
	}
	return fmt.Sprintf("%s %s %s", kindWord(e.Kind), echo.Quote(e.Name), what)
}

// plainKind is what a Kubernetes kind looks like (CamelCase letters and
// digits); any other kind is the input's, echoed quoted and capped.
var plainKind = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*$`)

func kindWord(kind string) string {
	if len(kind) <= echo.MaxBytes && plainKind.MatchString(kind) {
		return strings.ToLower(kind)
	}
	return echo.Quote(kind)
}

// Reasons of an Event for the objects that hold no pod minimesh injects:
// every object of the stream gets a line, as in linkerd inject, so that a
// kind minimesh does not know (a CRD with a pod template of its own) is
// never passed through in silence.
const (
	ReasonNotWorkload = "not a workload minimesh injects"
	ReasonNoKind      = `not a Kubernetes object (no "kind")`
	ReasonNoTemplate  = "no pod template (spec.template)"
	// ReasonWorkloadDisabled: minimesh.io/inject: disabled on the
	// workload's own metadata (or a CronJob's jobTemplate), not on its
	// pod template (workloadOptOut).
	ReasonWorkloadDisabled = "annotated minimesh.io/inject: disabled on the workload"
)

// separator is a line that is exactly `---`, optionally followed by
// blanks and a comment, with its line break. A `---` line followed by
// content (`--- !!map`, `--- {a: 1}`) is not split here and is caught as a
// document holding two.
var separator = regexp.MustCompile(`^---(?:[ \t]+(?:#[^\n]*)?)?\r?(?:\n|\z)`)

// isSeparator reports whether line, with its line break if it has one,
// is a separator line.
func isSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	loc := separator.FindIndex(line)
	return loc != nil && loc[1] == len(line)
}

// MaxDocumentBytes bounds one document of a stream: above the 3 MiB the
// API server takes in a request, so any object fits. A List (what kubectl
// get -o yaml prints) is read whole, and injecting it takes up to 65
// times its size (a List of 4 MiB of small Deployments: 270 MB of RSS).
const MaxDocumentBytes = 4 << 20

// HoldBytes is how much output Stream holds back before it writes any:
// a stream that fits is written only once every document is injected, so
// that a refusal leaves stdout empty, as for small streams it always
// did. A larger stream is written document by document past this point.
const HoldBytes = 8 << 20

// chunk is one document's raw bytes and the separator line that ends it
// (empty for the last one).
type chunk struct {
	doc, sep []byte
	line     int // 1-based line of the document's first byte in the stream
}

// splitter cuts a stream at separator lines as it reads it, so that no
// more than one document is held; joining every doc and sep gives the
// stream back.
type splitter struct {
	r     *bufio.Reader
	buf   []byte // the chunk being read, reused from one chunk to the next
	line  int    // line of the next byte
	start int    // line of the chunk being read
	eof   bool   // the input ended with a separator: one empty chunk left
	done  bool
}

func newSplitter(r io.Reader) *splitter {
	return &splitter{r: bufio.NewReaderSize(r, 64<<10), line: 1}
}

// next returns the next chunk, valid until the following call; ok is
// false after the last one. A document over MaxDocumentBytes is an error.
func (s *splitter) next() (c chunk, ok bool, err error) {
	if s.done {
		return chunk{}, false, nil
	}
	if s.eof {
		s.done = true
		return chunk{line: s.line}, true, nil
	}
	s.buf = s.buf[:0]
	s.start = s.line
	c.line = s.line
	lineStart := 0
	for {
		frag, err := s.r.ReadSlice('\n')
		s.buf = append(s.buf, frag...)
		if len(s.buf) > MaxDocumentBytes {
			return chunk{}, false, fmt.Errorf("more than %d bytes without a `---` line: minimesh inject reads one document at a time, of at most %d MiB (for a List, get fewer objects at a time)", MaxDocumentBytes, MaxDocumentBytes>>20)
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue // the rest of a long line
		case errors.Is(err, io.EOF):
			if isSeparator(s.buf[lineStart:]) {
				s.eof = true
				return chunk{doc: s.buf[:lineStart], sep: s.buf[lineStart:], line: c.line}, true, nil
			}
			s.done = true
			return chunk{doc: s.buf, line: c.line}, true, nil
		case err != nil:
			return chunk{}, false, err
		}
		s.line++
		if isSeparator(s.buf[lineStart:]) {
			return chunk{doc: s.buf[:lineStart], sep: s.buf[lineStart:], line: c.line}, true, nil
		}
		lineStart = len(s.buf)
	}
}

// split is the chunks of a stream held in memory.
func split(in []byte) []chunk {
	var out []chunk
	sp := newSplitter(bytes.NewReader(in))
	for {
		c, ok, err := sp.next()
		if err != nil {
			panic(err) // bytes.Reader does not fail; tests stay under MaxDocumentBytes
		}
		if !ok {
			return out
		}
		out = append(out, chunk{doc: bytes.Clone(c.doc), sep: bytes.Clone(c.sep), line: c.line})
	}
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
	if err := stream(bytes.NewReader(in), &out, cfg, len(in)+1, func(e Event) { events = append(events, e) }); err != nil {
		return nil, nil, err
	}
	return out.Bytes(), events, nil
}

// Stream is Inject of a stream, in bounded memory: it reads one document
// at a time, and writes it, injected or byte for byte, once HoldBytes of
// output are pending or the input ends; report is called for each
// object as its document is done.
//
// An error (a document that is not YAML, a workload the injector refuses,
// a document over MaxDocumentBytes) stops it. If nothing was written yet
// (a stream of at most HoldBytes: nearly all), nothing is; otherwise what
// was written ends with Incomplete's lines, a comment and a line that no
// YAML parser reads, so that the consumer (kubectl apply, a file in git)
// fails rather than take the part for the whole.
func Stream(r io.Reader, w io.Writer, cfg *injector.Config, report func(Event)) error {
	return stream(r, w, cfg, HoldBytes, report)
}

// Incomplete ends a stream that Stream could not finish, after its last
// complete document and separator.
const Incomplete = "# minimesh inject stopped at %s; its error is on stderr. The documents\n" +
	"# above were injected, the rest of the stream is missing, and the next line makes it invalid YAML.\n" +
	"minimesh-inject-incomplete: [\n"

func stream(r io.Reader, w io.Writer, cfg *injector.Config, hold int, report func(Event)) error {
	// The chunks held back, each a document and its separator, or the
	// comments and separators before one: a list rather than one buffer,
	// which would hold twice the bytes while it grows.
	var pending [][]byte
	held, written := 0, false
	// keep holds a chunk: a copy of the splitter's bytes, which it
	// reuses, or an injected document, which is ours.
	keep := func(doc []byte, owned bool, sep []byte) {
		if !owned {
			doc = append(make([]byte, 0, len(doc)+len(sep)), doc...)
		}
		doc = append(doc, sep...)
		pending = append(pending, doc)
		held += len(doc)
	}
	flush := func() error {
		for i, b := range pending {
			pending[i] = nil
			if len(b) == 0 {
				continue
			}
			written = true
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("write: %w", err)
			}
		}
		pending, held = pending[:0], 0
		return nil
	}
	stop := func(where string, err error) error {
		if written {
			_, _ = fmt.Fprintf(w, Incomplete, where)
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	sp := newSplitter(r)
	doc := 0
	for {
		c, ok, err := sp.next()
		if err != nil {
			return stop(fmt.Sprintf("document %d (line %d)", doc+1, sp.start), err)
		}
		if !ok {
			return flush()
		}
		if isEmpty(c.doc) {
			// Comments and separators wait for the next document, so
			// that a refusal of it leaves stdout as it was.
			keep(c.doc, false, c.sep)
			continue
		}
		doc++
		out, events, err := injectDoc(c.doc, doc, c.line, cfg)
		if err != nil {
			return stop(fmt.Sprintf("document %d (line %d)", doc, c.line), err)
		}
		if out == nil {
			keep(c.doc, false, c.sep)
		} else {
			keep(out, true, c.sep)
		}
		if written || held > hold {
			if err := flush(); err != nil {
				return err
			}
		}
		if report != nil {
			for _, e := range events {
				report(e)
			}
		}
	}
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
	// Comments before the object (Helm's `# Source: chart/templates/x.yaml`)
	// say where it came from; they survive, the ones inside cannot.
	y, err := changed.yaml(leadingComments(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("encode injected document: %w", err)
	}
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

// streamLines shifts the line numbers in a YAML error by offset, and caps
// each of its lines: the parser repeats some input (an unknown anchor's
// name).
func streamLines(err error, offset int) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = echo.Clip(yamlLine.ReplaceAllStringFunc(l, func(m string) string {
			n, convErr := strconv.Atoi(m[len("line "):])
			if convErr != nil {
				return m
			}
			return "line " + strconv.Itoa(n+offset)
		}))
	}
	return errors.New(strings.Join(lines, "\n"))
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

// rewritten is an object that injection changed: its JSON, or a List's
// other fields and its items, which are encoded one at a time: yaml.v2
// builds its whole output in one buffer that doubles as it grows, and a
// 2 MiB List of small Deployments took 2 GB of allocations as one.
type rewritten struct {
	json  []byte
	list  map[string]json.RawMessage // without items
	items []json.RawMessage
}

func (c *rewritten) jsonBytes() ([]byte, error) {
	if c.list == nil {
		return c.json, nil
	}
	b, err := json.Marshal(c.items)
	if err != nil {
		return nil, fmt.Errorf("encode List items: %w", err)
	}
	list := maps.Clone(c.list)
	list["items"] = b
	out, err := json.Marshal(list)
	if err != nil {
		return nil, fmt.Errorf("encode List: %w", err)
	}
	return out, nil
}

// yaml appends the YAML of the object to out; a List's items come after
// its other fields.
func (c *rewritten) yaml(out []byte) ([]byte, error) {
	if c.list == nil {
		y, err := yaml.JSONToYAML(c.json)
		return append(out, y...), err
	}
	size := len(out)
	for _, it := range c.items {
		size += len(it) + len(it)/8 // YAML is about as long as JSON
	}
	out = slices.Grow(out, size)
	if len(c.list) > 0 {
		rest, err := json.Marshal(c.list)
		if err != nil {
			return nil, err
		}
		y, err := yaml.JSONToYAML(rest)
		if err != nil {
			return nil, err
		}
		out = append(out, y...)
	}
	out = append(out, "items:\n"...)
	for i, it := range c.items {
		y, err := yaml.JSONToYAML(it)
		if err != nil {
			return nil, err
		}
		c.items[i] = nil // done with: let it go
		// A block sequence under a mapping key is not indented (as
		// yaml.v2 writes it); the item's lines are, under its "- ".
		for j, l := range bytes.SplitAfter(bytes.TrimSuffix(y, []byte("\n")), []byte("\n")) {
			if j == 0 {
				out = append(out, "- "...)
			} else if len(l) > 1 {
				out = append(out, "  "...)
			}
			out = append(out, l...)
		}
		out = append(out, '\n')
	}
	return out, nil
}

// injectObject injects one JSON object (a workload or a List), returning
// what it became or nil when unchanged.
func injectObject(js []byte, doc int, cfg *injector.Config) (*rewritten, []Event, error) {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil || tm.Kind == "" {
		// A scalar, an array or an object without a kind: kubectl
		// would refuse it, and so it is said, but it is not ours.
		return nil, []Event{{Doc: doc, Reason: ReasonNoKind}}, nil
	}
	if tm.Kind == "List" && tm.APIVersion == "v1" {
		return injectList(js, doc, cfg)
	}
	skipped := func(reason string) []Event {
		var meta struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		_ = json.Unmarshal(js, &meta) // a name that is no string: none
		return []Event{{Doc: doc, Kind: tm.Kind, Name: meta.Metadata.Name, Reason: reason}}
	}
	obj, ok := newWorkload(tm)
	if !ok {
		return nil, skipped(ReasonNotWorkload), nil
	}
	if obj == nil {
		return nil, skipped(fmt.Sprintf("apiVersion %s is not supported (want %s)", echo.Clip(tm.APIVersion), workloadAPIVersion[tm.Kind])), nil
	}
	// Strict and case-sensitive like the API server; the fields it would
	// refuse or drop matter only if the object is re-encoded, below.
	strictErrs, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	meta, tmpl := parts(obj)
	what := fmt.Sprintf("%s %s", strings.ToLower(tm.Kind), echo.Quote(meta.Name))
	pod, isPod := obj.(*corev1.Pod)
	if !isPod {
		if tmpl == nil { // a ReplicationController's is a pointer
			return nil, []Event{{Doc: doc, Kind: tm.Kind, Name: meta.Name, Reason: ReasonNoTemplate}}, nil
		}
		pod = &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	}
	// Opted out above its template (and not on it, which the injector
	// reads): skipped before the injector looks, so that a pod it would
	// refuse does not fail the stream of a workload that said no.
	if field, ok := workloadOptOut(obj); ok && pod.Annotations[wellknown.AnnotationInject] != wellknown.InjectDisabled {
		return nil, []Event{{Doc: doc, Kind: tm.Kind, Name: meta.Name, Reason: ReasonWorkloadDisabled, Warnings: []string{
			fmt.Sprintf("minimesh: %s[%s] is %q but the pod template's is not: the pods do not carry it, so in a namespace that opted in the webhook injects them; annotate %s too",
				field, wellknown.AnnotationInject, wellknown.InjectDisabled, templateField(obj))}}}, nil
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
			msgs[i] = echo.Clip(e.Error())
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
	return &rewritten{json: out}, []Event{ev}, nil
}

// injectList walks a v1 List (what `kubectl get -o yaml` prints), keeping
// every field of the List and of its items as they are unless an item is
// injected; then the whole List is re-encoded.
func injectList(js []byte, doc int, cfg *injector.Config) (*rewritten, []Event, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(js, &list); err != nil {
		return nil, nil, fmt.Errorf("kind List: %w", err)
	}
	var items []json.RawMessage
	if raw, ok := list["items"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, nil, fmt.Errorf("kind List, items: %w", err)
		}
	}
	var events []Event
	changed := false
	for i, it := range items {
		c, evs, err := injectObject(it, doc, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		events = append(events, evs...)
		if c != nil {
			if items[i], err = c.jsonBytes(); err != nil {
				return nil, nil, err
			}
			changed = true
		}
	}
	if !changed {
		return nil, events, nil
	}
	delete(list, "items")
	return &rewritten{list: list, items: items}, events, nil
}

// workloadAPIVersion is the version of each kind that holds a pod
// template; older ones (extensions/v1beta1, batch/v1beta1) are gone from
// current API servers.
var workloadAPIVersion = map[string]string{
	"Pod": "v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
	"ReplicaSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1", "ReplicationController": "v1",
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
	case "ReplicationController":
		return &corev1.ReplicationController{}, true
	default: // CronJob
		return &batchv1.CronJob{}, true
	}
}

// parts are the workload's own metadata and its pod template (nil for a
// pod, and for a ReplicationController without one).
func parts(obj any) (*metav1.ObjectMeta, *corev1.PodTemplateSpec) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &o.ObjectMeta, nil
	case *corev1.ReplicationController:
		return &o.ObjectMeta, o.Spec.Template
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

// workloadOptOut finds minimesh.io/inject: disabled above the pod
// template (the workload's own metadata, a CronJob's jobTemplate) and
// says where. minimesh inject honours it, as docs/injector.md promises
// ("except workloads annotated disabled"), where linkerd inject reads
// only the template's; but the pods never carry those annotations, so
// the webhook of a namespace that opted in injects them all the same:
// the skip comes with a warning that says so.
func workloadOptOut(obj any) (field string, ok bool) {
	meta, tmpl := parts(obj)
	if tmpl == nil {
		return "", false // a pod's annotations are its own
	}
	if meta.Annotations[wellknown.AnnotationInject] == wellknown.InjectDisabled {
		return "metadata.annotations", true
	}
	if cj, ok := obj.(*batchv1.CronJob); ok && cj.Spec.JobTemplate.Annotations[wellknown.AnnotationInject] == wellknown.InjectDisabled {
		return "spec.jobTemplate.metadata.annotations", true
	}
	return "", false
}

// templateField is where a workload's pod annotations go.
func templateField(obj any) string {
	if _, ok := obj.(*batchv1.CronJob); ok {
		return "spec.jobTemplate.spec.template.metadata.annotations"
	}
	return "spec.template.metadata.annotations"
}
