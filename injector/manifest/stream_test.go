package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	testPod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: x}]}\n"
	testSvc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
	refused = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, annotations: {minimesh.io/proxy-cpu-limit: lots}}\nspec: {containers: [{name: a}]}\n"
)

// watched is a writer that a test can wait on.
type watched struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{}
}

func newWatched() *watched { return &watched{written: make(chan struct{}, 1)} }

func (w *watched) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	select {
	case w.written <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *watched) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until the output contains want. The deadline only keeps
// a failing test from hanging: the stream is expected to write at once.
func (w *watched) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(w.String(), want) {
		select {
		case <-w.written:
		case <-deadline:
			t.Fatalf("output never held %q; it holds %q", want, w.String())
		}
	}
}

// TestStreamDocumentByDocument: past its hold, the output of a document
// is written before the next one is read, and the whole is what Inject
// gives.
func TestStreamDocumentByDocument(t *testing.T) {
	pr, pw := io.Pipe()
	out := newWatched()
	var events []Event
	done := make(chan error, 1)
	go func() { done <- stream(pr, out, testConfig(), 0, func(e Event) { events = append(events, e) }) }()

	if _, err := io.WriteString(pw, testPod+"---\n"); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "name: minimesh-proxy")
	if _, err := io.WriteString(pw, "# next\n---\n"+testSvc); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	in := testPod + "---\n# next\n---\n" + testSvc
	want, wantEvents, err := Inject([]byte(in), testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) || report(events) != report(wantEvents) {
		t.Fatalf("streamed:\n%s\n%s\nInject:\n%s\n%s", out, report(events), want, report(wantEvents))
	}
}

// TestStreamRefused: a stream that fits the hold writes nothing when a
// document is refused; past the hold, what was written ends with
// Incomplete, which kubectl's decoder and every YAML parser refuse, after
// the documents that were complete.
func TestStreamRefused(t *testing.T) {
	in := "# head\n---\n" + testPod + "---\n" + testSvc + "---\n" + refused + "---\n" + testSvc
	var out bytes.Buffer
	err := Stream(strings.NewReader(in), &out, testConfig(), func(Event) {})
	if err == nil || out.Len() != 0 || !strings.Contains(err.Error(), "document 3 (line 12)") {
		t.Fatalf("err %v, %d bytes written", err, out.Len())
	}

	out.Reset()
	err = stream(strings.NewReader(in), &out, testConfig(), 0, func(Event) {})
	if err == nil || !strings.HasSuffix(out.String(), testSvc+"---\n"+fmt.Sprintf(Incomplete, "document 3 (line 12)")) {
		t.Fatalf("err %v, output:\n%s", err, out.String())
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(&out, 4096)
	n := 0
	for {
		var obj k8sruntime.RawExtension
		err := dec.Decode(&obj)
		if err == nil {
			n++
			continue
		}
		if errors.Is(err, io.EOF) {
			t.Fatalf("%d documents and no error: kubectl would take the part for the whole", n)
		}
		break
	}
}

// TestStreamDocumentBound: a document over MaxDocumentBytes is an error
// naming it, read no further than the bound.
func TestStreamDocumentBound(t *testing.T) {
	var read atomic.Int64
	huge := io.MultiReader(strings.NewReader(testSvc+"---\nkind: ConfigMap\ndata: {a: "),
		countingReader{io.LimitReader(zeros{}, 64<<20), &read})
	err := Stream(huge, io.Discard, testConfig(), func(Event) {})
	if err == nil || !strings.Contains(err.Error(), "document 2 (line 5): more than 4194304 bytes without a `---` line") {
		t.Fatalf("err %v", err)
	}
	if n := read.Load(); n > MaxDocumentBytes+1<<20 {
		t.Fatalf("read %d bytes of a document over %d", n, MaxDocumentBytes)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// checkSplit holds split to what a stream's chunks are: together the
// stream, each cut at a separator line, none inside a document, each
// numbered with the line it starts on.
func checkSplit(t *testing.T, in []byte) {
	t.Helper()
	var joined []byte
	chunks := split(in)
	for i, c := range chunks {
		if c.line != 1+bytes.Count(joined, []byte("\n")) {
			t.Fatalf("chunk %d says line %d, starts on %d", i, c.line, 1+bytes.Count(joined, []byte("\n")))
		}
		joined = append(append(joined, c.doc...), c.sep...)
		if (len(c.sep) == 0) != (i == len(chunks)-1) || len(c.sep) > 0 && !isSeparator(c.sep) {
			t.Fatalf("chunk %d ends with %q", i, c.sep)
		}
		for l := range bytes.Lines(c.doc) {
			if isSeparator(l) {
				t.Fatalf("chunk %d holds a separator line %q", i, l)
			}
		}
	}
	if !bytes.Equal(joined, in) {
		t.Fatalf("chunks join to %q, not %q", joined, in)
	}
}

// TestSplitLongLines: lines longer than the reader's buffer, separators
// after them and at the very end.
func TestSplitLongLines(t *testing.T) {
	long := strings.Repeat("y", 200<<10)
	for _, in := range []string{
		"a: " + long + "\n---\nb: 1\n",
		"a: " + long + "\r\n--- # x" + long + "\r\n" + long,
		long + "\n---",
		"---",
		"",
		"--- \n---\t#\n---x\n ---\n",
	} {
		checkSplit(t, []byte(in))
	}
	if n := len(split([]byte("a: " + long + "\n---\nb: 1\n"))); n != 2 {
		t.Fatalf("%d chunks", n)
	}
}

func FuzzSplit(f *testing.F) {
	f.Add([]byte("a\n---\nb\n--- # c\r\n---"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, in []byte) { checkSplit(t, in) })
}

// TestHostileEchoCapped: the report lines and errors of `minimesh
// inject` repeat at most the start of a hostile name, apiVersion or
// anchor.
func TestHostileEchoCapped(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	for name, in := range map[string]string{
		"refused name":   "apiVersion: v1\nkind: Pod\nmetadata: {name: " + huge + ", annotations: {minimesh.io/inject: bad}}\n",
		"skipped name":   "apiVersion: v1\nkind: Pod\nmetadata: {name: " + huge + "}\nspec: {hostNetwork: true}\n",
		"injected name":  "apiVersion: v1\nkind: Pod\nmetadata: {name: " + huge + "}\nspec: {containers: [{name: a, image: x}]}\n",
		"apiVersion":     "apiVersion: " + huge + "\nkind: Pod\nmetadata: {name: a}\n",
		"kind":           "apiVersion: v1\nkind: " + huge + "\nmetadata: {name: a}\n",
		"not a workload": "apiVersion: v1\nkind: Service\nmetadata: {name: " + huge + "}\n",
		"anchor":         "a: *" + huge + "\n",
		"unknown field":  `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "` + huge[:1000] + `": 1}}`,
	} {
		_, events, err := Inject([]byte(in), testConfig())
		if err != nil && len(err.Error()) > 400 {
			t.Errorf("%s: %d-byte error %.300q", name, len(err.Error()), err)
		}
		if r := report(events); len(r) > 400 {
			t.Errorf("%s: %d-byte report %.300q", name, len(r), r)
		}
		if err == nil && len(events) == 0 && name != "anchor" {
			t.Errorf("%s: no event", name)
		}
	}
}
