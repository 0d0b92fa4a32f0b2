package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/minimesh/minimesh/internal/echo"
)

// Decode reads every ResiliencePolicy document of a YAML stream (of a
// JSON value when filename ends in .json), strictly, and returns them
// defaulted and validated, one policy per service (OneSidecar).
// filename only labels the positions in errors and in each policy's
// Source.
//
// On failure it returns no policies and an ErrorList holding every
// problem of the file: a half-applied file would leave some destinations
// with a policy nobody wrote.
func Decode(filename string, data []byte) ([]*ResiliencePolicy, error) {
	return OneSidecar.Decode([]File{{Name: filename, Data: data}})
}

// DecodeTolerant is Decode for a document a control plane wrote from a
// policy it validated itself (a sidecar's CDS clusters): a field the
// decoder does not know is left out instead of refused, and its path
// ("spec.outlierDetection") returned in unknown. Such a field is version
// skew (a controller newer than the sidecar), not a typo: refusing it
// made an older sidecar refuse every policy after a controller upgrade.
// Every other check is Decode's. Files, which a person wrote, stay strict.
func DecodeTolerant(filename string, data []byte) (pols []*ResiliencePolicy, unknown []string, err error) {
	c := &claims{scope: OneSidecar, first: map[claim]*ResiliencePolicy{}}
	f := decodeFileOpts(filename, data, c, true)
	if len(f.errs) > 0 {
		return nil, f.unknown, f.errs
	}
	return f.good, f.unknown, nil
}

// fileDecoder collects the results of one file. Its good policies are
// kept even when other documents fail so that the rest of the set can
// still be checked against them for duplicates in the same run.
type fileDecoder struct {
	name string
	good []*ResiliencePolicy
	errs ErrorList
	// dropped counts the problems past maxFileErrors, and firstDropped
	// is the first of them, where the summary line points.
	dropped      int
	firstDropped *Error
	// claims are the services of the set's policies so far, this file's
	// and those before it.
	claims *claims
	// tolerant leaves unknown fields out, their paths in unknown
	// (DecodeTolerant), rather than report them.
	tolerant bool
	unknown  []string
}

// add records a problem, or only counts it past maxFileErrors.
func (f *fileDecoder) add(e *Error) {
	if len(f.errs) < maxFileErrors {
		f.errs = append(f.errs, e)
		return
	}
	if f.dropped == 0 {
		f.firstDropped = e
	}
	f.dropped++
}

// problems is how many problems were found, reported or not.
func (f *fileDecoder) problems() int { return len(f.errs) + f.dropped }

// summarize ends the list with the count of the problems not reported.
func (f *fileDecoder) summarize() {
	if f.dropped > 0 {
		e := *f.firstDropped
		e.Field, e.Msg = "", fmt.Sprintf("%d more problems in this file not shown", f.dropped)
		f.errs = append(f.errs, &e)
	}
}

// decodeFile decodes one file of a set whose services c holds so far.
func decodeFile(filename string, data []byte, c *claims) *fileDecoder {
	return decodeFileOpts(filename, data, c, false)
}

// decodeFileOpts is decodeFile, tolerant of unknown fields or not.
func decodeFileOpts(filename string, data []byte, c *claims, tolerant bool) (f *fileDecoder) {
	f = &fileDecoder{name: filename, claims: c, tolerant: tolerant}
	// yaml.v3 is not known to panic on any input, but a reloading sidecar
	// must survive a file that proves otherwise.
	defer func() {
		if r := recover(); r != nil {
			f.add(&Error{File: filename, Line: 1, Column: 1, Msg: "YAML parser failed: " + echo.Clip(fmt.Sprint(r))})
		}
		f.errs.sortByPosition()
		f.summarize()
	}()
	if isJSONFile(filename) {
		root, err := jsonNode(filename, data)
		if err != nil {
			f.add(err)
		} else if root != nil && root.ShortTag() != "!!null" {
			f.document(root)
		}
		return f
	}
	data = stripDocumentBOMs(data)
	var budget aliasBudget
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return f
		}
		if err != nil {
			// The parser cannot resume after a syntax error: the rest of
			// the stream is unknown.
			f.add(syntaxError(filename, data, err))
			return f
		}
		if len(doc.Content) == 0 {
			continue
		}
		foreign, over := budget.check(doc.Content[0])
		for _, a := range foreign {
			f.add(&Error{File: filename, Line: a.Line, Column: a.Column,
				Msg: fmt.Sprintf("invalid YAML: unknown anchor '%s' referenced (anchors are per document: this one is in an earlier document, at %d:%d)", echo.Clip(a.Value), a.Alias.Line, a.Alias.Column)})
		}
		if len(foreign) > 0 {
			continue
		}
		if over != nil {
			// Every later alias would pass the bound again: one report,
			// and the file is refused whatever the rest holds.
			f.add(&Error{File: filename, Line: over.Line, Column: over.Column,
				Msg: fmt.Sprintf("YAML aliases add more than %d nodes to this file (%d so far, here): write the values out; the rest of the file is not checked", maxAliasNodes, budget.added)})
			return f
		}
		root := resolve(doc.Content[0])
		if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
			continue // an empty document, or one of comments only
		}
		f.document(root)
	}
}

// bom is the UTF-8 byte order mark.
var bom = []byte("\ufeff")

// stripDocumentBOMs removes a byte order mark at the start of a document
// other than the stream's first (which yaml.v3 skips itself): on the
// line after a bare --- or ... marker, or just before a ---. YAML allows
// one at every document's start, and files joined with cat carry one
// there, which yaml.v3 reads as part of the first key
// ("\ufeffapiVersion") or as a syntax error. kubectl, which parses each
// document apart, takes such a file. Lines keep their numbers; only the
// columns after the mark on its line move, by the one character that
// editors do not show.
func stripDocumentBOMs(data []byte) []byte {
	if len(data) < len(bom) || !bytes.Contains(data[1:], bom) {
		return data
	}
	out := make([]byte, 0, len(data))
	afterMarker := false
	for start := 0; start < len(data); {
		end := len(data)
		if i := bytes.IndexByte(data[start:], '\n'); i >= 0 {
			end = start + i + 1
		}
		line := data[start:end]
		if start > 0 && bytes.HasPrefix(line, bom) && (afterMarker || startsDocument(line[len(bom):])) {
			line = line[len(bom):]
		}
		trimmed := bytes.TrimRight(line, " \t\r\n")
		afterMarker = bytes.Equal(trimmed, []byte("---")) || bytes.Equal(trimmed, []byte("..."))
		out = append(out, line...)
		start = end
	}
	return out
}

// startsDocument reports whether a line starts with the marker ---.
func startsDocument(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("---"))
	return ok && (len(rest) == 0 || strings.IndexByte(" \t\r\n", rest[0]) >= 0)
}

// yamlLine picks the line out of yaml.v3's "yaml: line 3: ..." messages,
// its only report of where a syntax error is.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserProblems are the messages of yaml.v3's parser, as opposed to its
// scanner. yaml.v3 prints the parser's lines 0-based and the scanner's
// 1-based; the message is the only way to tell them apart.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntaxError positions a yaml.v3 error. yaml.v3 gives no column, and
// often not the problem's line: the line it names is where the enclosing
// mapping or sequence began (its context), and none for problems on the
// first line (0-based line 0 is omitted). problemLine finds the line the
// problem is on.
func syntaxError(filename string, data []byte, err error) *Error {
	e := &Error{File: filename, Line: 1, Column: 1, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil && n > 0 {
			e.Line, e.Msg = n, m[2]
			if parserProblems[e.Msg] {
				e.Line++
			}
		}
	}
	e.Line = problemLine(data, e.Line, e.Msg)
	// The parser's messages can hold the input (an unknown anchor's name).
	e.Msg = "invalid YAML: " + echo.Clip(e.Msg)
	return e
}

// maxProblemSearch and maxProblemBytes bound problemLine's parses: each
// reads the file up to a line, so the search costs lines × size (8 MiB
// of YAML parse in about a quarter of a second here).
const (
	maxProblemSearch = 200
	maxProblemBytes  = 8 << 20
)

// problemLine returns the first line, from the reported one on, where the
// file cut after it fails with the same message: the first line the
// parser cannot get past. A cut that ends a construct early fails with
// another message (an unexpected end), so a multi-line value is passed
// over, not blamed. The reported line stands when no cut within
// maxProblemSearch lines fails alike.
func problemLine(data []byte, reported int, msg string) int {
	// end[i] is the offset just past line i+1.
	var end []int
	for i, b := range data {
		if b == '\n' {
			end = append(end, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		end = append(end, len(data))
	}
	read := 0
	for line := max(reported, 1); line <= len(end) && line < reported+maxProblemSearch; line++ {
		if read += end[line-1]; read > maxProblemBytes {
			break
		}
		if parseError(data[:end[line-1]]) == msg {
			return line
		}
	}
	return reported
}

// parseError is the message, without its line, of the first error
// yaml.v3 reports for a stream ("" for none).
func parseError(data []byte) string {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			return ""
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			msg = m[2]
		}
		return msg
	}
}

// document decodes a policy or a List of policies (what `kubectl get
// resiliencepolicies -o yaml` writes).
func (f *fileDecoder) document(root *yaml.Node) {
	if k := peekKind(root); k == "List" || k == Kind+"List" {
		f.list(root)
		return
	}
	f.object(root, nil, "")
}

// object decodes one policy and keeps it when it has no problem. via is
// the alias n was reached through, nil for none.
func (f *fileDecoder) object(n, via *yaml.Node, prefix string) {
	before := f.problems()
	d := &objDecoder{file: f, prefix: prefix, root: n, via: via, pos: map[string]place{}, bad: map[string]bool{}}
	p := d.policy(n)
	if p == nil || f.problems() > before {
		return
	}
	if prev, msg := f.claims.take(p); prev != nil {
		d.failAtPlace(d.pos["spec.service"], "spec.service", "%s", msg)
		return
	}
	f.good = append(f.good, p)
}

// peekKind returns the kind of a mapping without reporting anything: the
// kind decides which schema the walk applies.
func peekKind(n *yaml.Node) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.Value == "kind" && v.Kind == yaml.ScalarNode {
			return v.Value
		}
	}
	return ""
}
