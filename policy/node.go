package policy

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/minimesh/minimesh/internal/echo"
)

// maxValueBytes is the longest string a policy field takes: a DNS name
// (253) with a port; maxConditionBytes the longest retryOn or failOn
// item, a short word. A longer scalar is refused before the field looks
// at it, so that no message built from it (an invalid service, an unknown
// condition) can repeat more than this, whatever the file holds.
const (
	maxValueBytes     = 253 + len(":65535")
	maxConditionBytes = 64
)

// maxFileErrors bounds the problems reported for one file; a generated
// file can hold millions, each a line of lint's output.
const maxFileErrors = 100

// objDecoder walks the yaml.Node tree of one object by hand instead of
// letting yaml.v3 unmarshal it, because only the nodes know where each
// value was written, and every problem must name its line and column.
type objDecoder struct {
	file *fileDecoder
	// prefix is prepended to reported field paths ("items[2]." inside a
	// List) but not to the keys of pos and bad.
	prefix string
	root   *yaml.Node
	// pos remembers the node of each field path so that the errors of
	// Validate, which sees only the struct, can be positioned.
	pos map[string]place
	// bad holds the paths already reported, so that a field that failed
	// to decode is not reported a second time by Validate for the zero
	// value it was left with.
	bad map[string]bool
	// via is the alias through which the walk reached the node it is in
	// (the outermost, as the user reads the file), nil outside aliased
	// content.
	via *yaml.Node
}

// place is where a value was written, and the alias it was reached
// through (nil for none).
type place struct{ node, via *yaml.Node }

// enter notes that the walk goes into raw, a value as written: when raw
// is an alias and the walk is not already inside one, what is under it
// is reported at the alias. It returns the alias the walk was in, for
// the caller to restore.
func (d *objDecoder) enter(raw *yaml.Node) (outer *yaml.Node) {
	outer = d.via
	if outer == nil && raw.Kind == yaml.AliasNode {
		d.via = raw
	}
	return outer
}

// here is the place of n, a node the walk is at.
func (d *objDecoder) here(n *yaml.Node) place { return place{n, d.via} }

// field is one allowed key of a mapping. A nil decode accepts the key
// and ignores its value (Kubernetes metadata the sidecar has no use for).
type field struct {
	name   string
	decode func(path string, v *yaml.Node)
}

// failAt reports a value that could not be decoded, which leaves its
// field at the zero value or the default; validate then stays silent on
// that field and on everything under it.
func (d *objDecoder) failAt(n *yaml.Node, path, format string, args ...any) {
	d.bad[path] = true
	d.report(n, path, format, args...)
}

// failAtPlace is failAt for a value the walk has left, such as one
// Validate finds fault with.
func (d *objDecoder) failAtPlace(p place, path, format string, args ...any) {
	outer := d.via
	d.via = p.via
	d.failAt(p.node, path, format, args...)
	d.via = outer
}

// report reports a problem that leaves the value it is about intact,
// such as an unknown or duplicate key.
//
// A problem in aliased content is reported at the alias, and says where
// the value is: at the anchored node alone, it would be reported once
// per use, all on the one line, and none of them where the policy that
// has the problem uses it.
func (d *objDecoder) report(n *yaml.Node, path, format string, args ...any) {
	f := path
	if f != "" {
		f = d.prefix + f
	}
	e := &Error{
		File:   d.file.name,
		Line:   n.Line,
		Column: n.Column,
		Field:  f,
		Msg:    fmt.Sprintf(format, args...),
	}
	if a := d.via; a != nil && a != n {
		e.Msg += fmt.Sprintf(" (through alias *%s; the value is at %d:%d)", echo.Clip(a.Value), n.Line, n.Column)
		e.Line, e.Column = a.Line, a.Column
	}
	d.file.add(e)
}

// tooLong refuses a scalar longer than any value a field takes, before
// the field's own checks repeat it.
func (d *objDecoder) tooLong(path string, n *yaml.Node, max int) bool {
	if n.Kind != yaml.ScalarNode || len(n.Value) <= max {
		return false
	}
	d.failAt(n, path, "longer than this field takes (at most %d bytes): %s", max, echo.Quote(n.Value))
	return true
}

// missing reports a required field at the mapping that lacks it.
func (d *objDecoder) missing(parent *yaml.Node, path, want string) {
	d.failAt(parent, path, "required field is missing: want %s", want)
}

// mapping walks the pairs of a mapping node and hands each known key's
// value to its decoder. It reports non-mappings, duplicate keys (yaml.v3
// keeps them in a Node) and unknown keys. It returns the keys present,
// nil when n is not a mapping.
func (d *objDecoder) mapping(n *yaml.Node, path string, fields []field) map[string]bool {
	if n.Kind != yaml.MappingNode {
		d.failAt(n, path, "want a mapping, got %s", describe(n))
		return nil
	}
	d.pos[path] = d.here(n)
	seen := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		rawK, rawV := n.Content[i], n.Content[i+1]
		outer := d.enter(rawK)
		fp, f := d.key(path, resolve(rawK), rawK, seen, fields)
		d.via = outer
		if f == nil || f.decode == nil {
			continue
		}
		v := resolve(rawV)
		outer = d.enter(rawV)
		d.pos[fp] = d.here(v)
		f.decode(fp, v)
		d.via = outer
	}
	present := make(map[string]bool, len(seen))
	for name := range seen {
		present[name] = true
	}
	return present
}

// key checks a mapping's key k (raw as written) and returns its field
// path and field, nil when it is no field of fields (reported).
func (d *objDecoder) key(path string, k, raw *yaml.Node, seen map[string]*yaml.Node, fields []field) (string, *field) {
	if k.ShortTag() == "!!merge" {
		d.report(k, path, "merge keys (<<) are not supported: write the fields out")
		return "", nil
	}
	if k.Kind != yaml.ScalarNode {
		d.report(k, path, "want a field name, got %s", describe(k))
		return "", nil
	}
	fp := join(path, k.Value)
	if prev := seen[k.Value]; prev != nil {
		d.report(k, fp, "duplicate field (first set at %d:%d)", prev.Line, prev.Column)
		return "", nil
	}
	seen[k.Value] = raw
	f := lookupField(fields, k.Value)
	if f == nil && d.file.tolerant {
		d.file.unknown = append(d.file.unknown, d.prefix+fp)
		return "", nil
	}
	if f == nil {
		d.report(k, fp, "unknown field %s (allowed: %s)", echo.Quote(k.Value), fieldNames(fields))
		return "", nil
	}
	return fp, f
}

func lookupField(fields []field, name string) *field {
	for i := range fields {
		if fields[i].name == name {
			return &fields[i]
		}
	}
	return nil
}

func fieldNames(fields []field) string {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

// join appends a key to a field path, quoting a key that would break
// the one-line form of an error or make it long, or that holds a
// character a terminal does not show as itself (a byte order mark, a
// direction override): unquoted, the field named would not be the one
// the user sees.
func join(path, name string) string {
	if len(name) > echo.MaxBytes || strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || r == utf8.RuneError }) >= 0 {
		name = echo.Quote(name)
	}
	if path == "" {
		return name
	}
	return path + "." + name
}

// resolve follows aliases. The walk only descends into the fields the
// schema knows, so even a self-referencing anchor cannot loop it.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func (d *objDecoder) str(path string, n *yaml.Node) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.failAt(n, path, "want a string, got %s", describe(n))
		return "", false
	}
	if d.tooLong(path, n, maxValueBytes) {
		return "", false
	}
	return n.Value, true
}

func (d *objDecoder) integer(path string, n *yaml.Node) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		d.failAt(n, path, "want an integer, got %s", describe(n))
		return 0, false
	}
	if !decimal(n.Value) {
		d.failAt(n, path, "want a decimal integer such as 10, got %s (an octal, hexadecimal or underscored spelling reads differently in YAML 1.1 and 1.2)", echo.Clip(n.Value))
		return 0, false
	}
	var v int
	if err := n.Decode(&v); err != nil {
		d.failAt(n, path, "invalid integer %s (out of range?)", echo.Clip(n.Value))
		return 0, false
	}
	return v, true
}

// decimal reports whether an integer is spelled in decimal, with no
// leading zero: yaml.v3 reads 010 as 8, 0x9 as 9 and 1_0 as 10 (YAML
// 1.1), where YAML 1.2 and JSON read 010 as 10 or refuse it. A policy's
// numbers mean one thing whatever reads them.
func decimal(s string) bool {
	if s != "" && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	if s == "" || len(s) > 1 && s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func (d *objDecoder) number(path string, n *yaml.Node) (float64, bool) {
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || tag != "!!int" && tag != "!!float" {
		d.failAt(n, path, "want a number, got %s", describe(n))
		return 0, false
	}
	if tag == "!!int" && !decimal(n.Value) {
		d.failAt(n, path, "want a decimal number such as 0.5, got %s (an octal, hexadecimal or underscored spelling reads differently in YAML 1.1 and 1.2)", echo.Clip(n.Value))
		return 0, false
	}
	var v float64
	if err := n.Decode(&v); err != nil {
		d.failAt(n, path, "want a number, got %s", describe(n))
		return 0, false
	}
	return v, true
}

// duration accepts Go's syntax (2s, 500ms, 1m30s). Plain numbers have no
// unit and are rejected by time.ParseDuration, except 0.
func (d *objDecoder) duration(path string, n *yaml.Node) (time.Duration, bool) {
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!str", "!!int", "!!float":
			if v, err := time.ParseDuration(n.Value); err == nil {
				return v, true
			}
		}
	}
	d.failAt(n, path, "want a duration such as 2s or 500ms, got %s", describe(n))
	return 0, false
}

// optionalDuration is a duration whose absence means "none", so that an
// explicit zero is a mistake rather than a way to say none.
func (d *objDecoder) optionalDuration(path string, n *yaml.Node, omitFor string) (time.Duration, bool) {
	v, ok := d.duration(path, n)
	if ok && v <= 0 {
		d.failAt(n, path, "must be > 0 (omit it for %s), got %v", omitFor, v)
		return 0, false
	}
	return v, ok
}

// conditions decodes a retryOn/failOn list. Items may be strings or bare
// status codes: users write [502, 503] as often as ["502", "503"].
func (d *objDecoder) conditions(path string, n *yaml.Node) (Conditions, bool) {
	var c Conditions
	if n.Kind != yaml.SequenceNode {
		d.failAt(n, path, "want a list, got %s", describe(n))
		return c, false
	}
	ok := true
	for i, raw := range n.Content {
		outer := d.enter(raw)
		ok = d.condition(fmt.Sprintf("%s[%d]", path, i), resolve(raw), &c) && ok
		d.via = outer
	}
	return c, ok
}

// condition adds one retryOn/failOn item to c.
func (d *objDecoder) condition(path string, item *yaml.Node, c *Conditions) bool {
	tag := item.ShortTag()
	if item.Kind != yaml.ScalarNode || tag != "!!str" && tag != "!!int" {
		d.failAt(item, path, "want a condition name or status code, got %s", describe(item))
		return false
	}
	if d.tooLong(path, item, maxConditionBytes) {
		return false
	}
	class, code, err := ParseCondition(item.Value)
	if err != nil {
		d.failAt(item, path, "%v", err)
		return false
	}
	c.Add(class, code)
	return true
}

// describe names what a node is, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case "!!str":
			return "string " + echo.Quote(n.Value)
		case "!!int":
			return "integer " + echo.Clip(n.Value)
		case "!!float":
			return "number " + echo.Clip(n.Value)
		case "!!bool":
			return "boolean " + echo.Clip(n.Value)
		case "!!null":
			return "null"
		default:
			return echo.Quote(n.Value) + " tagged " + echo.Quote(tag)
		}
	}
	return "an alias"
}
