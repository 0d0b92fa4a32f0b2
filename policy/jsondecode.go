package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/minimesh/minimesh/internal/echo"
)

// A .json file is read as JSON, not as YAML: YAML's parser took what no
// JSON reader takes (a trailing comma, a comment, an unquoted string),
// so a file that jq, an editor or a generator's own check refuses served
// all the same, and it refused some JSON that is valid (the escape \/).
// The JSON is parsed by encoding/json into the node tree the YAML
// decoder makes, so that the one schema walk (objDecoder) checks both
// and positions every problem at its line and column.

// isJSONFile reports whether a file is read as JSON: its name ends in
// .json, as Load's directories are filtered (isPolicyFile).
func isJSONFile(name string) bool {
	return strings.EqualFold(filepath.Ext(name), ".json")
}

// jsonNode parses data, a JSON text, into a yaml.Node tree whose nodes
// carry their JSON positions and the tags YAML would give them; nil for
// a text of whitespace only, which is skipped as an empty YAML document
// is. A leading UTF-8 byte order mark is ignored, as RFC 8259 allows.
func jsonNode(filename string, data []byte) (*yaml.Node, *Error) {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	pos := newPositions(data)
	fail := func(off int, msg string) *Error {
		line, col := pos.at(off)
		return &Error{File: filename, Line: line, Column: col, Msg: "invalid JSON: " + echo.Clip(msg)}
	}
	if !utf8.Valid(data) {
		off := 0
		for off < len(data) {
			r, n := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return nil, fail(off, "not UTF-8")
	}
	if len(bytes.Trim(data, " \t\r\n")) == 0 { // JSON's whitespace only
		return nil, nil
	}
	// The whole text first: its scanner says where the first problem is
	// (Offset counts the bytes read, the bad one included) and bounds the
	// nesting, so that the walk below meets only a valid text.
	if err := json.Unmarshal(data, new(json.RawMessage)); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) && !strings.HasPrefix(syn.Error(), "unexpected end") {
			return nil, fail(int(syn.Offset)-1, syn.Error())
		}
		return nil, fail(len(bytes.TrimRight(data, " \t\r\n")), err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	w := jsonWalk{dec: dec, data: data, pos: pos}
	root, err := w.value()
	if err != nil { // not for a text that Unmarshal took
		return nil, fail(0, err.Error())
	}
	return root, nil
}

// jsonWalk builds the node tree of a valid JSON text from its tokens.
type jsonWalk struct {
	dec  *json.Decoder
	data []byte
	pos  positions
}

// next returns the next token and the node for it, positioned where the
// token starts: past the whitespace, ',' and ':' after the last one.
func (w *jsonWalk) next() (json.Token, *yaml.Node, error) {
	off := int(w.dec.InputOffset())
	for off < len(w.data) && strings.IndexByte(" \t\r\n,:", w.data[off]) >= 0 {
		off++
	}
	tok, err := w.dec.Token()
	if err != nil {
		return nil, nil, err
	}
	n := &yaml.Node{}
	n.Line, n.Column = w.pos.at(off)
	return tok, n, nil
}

// value reads one value, a mapping or a list with all it holds.
func (w *jsonWalk) value() (*yaml.Node, error) {
	tok, n, err := w.next()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		n.Kind, n.Style, n.Tag = yaml.SequenceNode, yaml.FlowStyle, "!!seq"
		if v == '{' {
			n.Kind, n.Tag = yaml.MappingNode, "!!map"
		}
		for w.dec.More() {
			if n.Kind == yaml.MappingNode {
				key, k, err := w.next()
				if err != nil {
					return nil, err
				}
				s, _ := key.(string) // a valid text's keys are strings
				k.Kind, k.Style, k.Tag, k.Value = yaml.ScalarNode, yaml.DoubleQuotedStyle, "!!str", s
				n.Content = append(n.Content, k)
			}
			item, err := w.value()
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, item)
		}
		if _, err := w.dec.Token(); err != nil { // the closing delimiter
			return nil, err
		}
	case string:
		n.Kind, n.Style, n.Tag, n.Value = yaml.ScalarNode, yaml.DoubleQuotedStyle, "!!str", v
	case json.Number:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!int", string(v)
		if strings.ContainsAny(string(v), ".eE") {
			n.Tag = "!!float"
		}
	case bool:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!bool", "false"
		if v {
			n.Value = "true"
		}
	case nil:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!null", "null"
	}
	return n, nil
}

// positions turns byte offsets into 1-based lines and columns, columns
// counted in characters as yaml.v3 counts them.
type positions struct {
	data  []byte
	lines []int // the offset where each line starts
}

func newPositions(data []byte) positions {
	p := positions{data: data, lines: []int{0}}
	for i, b := range data {
		if b == '\n' {
			p.lines = append(p.lines, i+1)
		}
	}
	return p
}

func (p positions) at(off int) (line, col int) {
	off = max(0, min(off, len(p.data)))
	line = sort.Search(len(p.lines), func(i int) bool { return p.lines[i] > off }) // > 0: lines[0] is 0
	start := p.lines[line-1]
	return line, utf8.RuneCount(p.data[start:off]) + 1
}
