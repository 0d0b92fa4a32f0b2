package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a policy file. It carries the position so that
// editors and CI logs can jump to the offending line, like a compiler's.
type Error struct {
	File   string
	Line   int
	Column int
	// Field is the dotted path of the field at fault, such as
	// spec.retries.attempts; empty when the problem is not in a field
	// (a YAML syntax error).
	Field string
	Msg   string
}

// Error formats the problem as file:line:col: field: msg. Errors of
// structs that never were YAML (Validate) have no position and print as
// field: msg.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" || e.Line > 0 {
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Column)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList holds every problem found, so that one lint run reports them
// all instead of making the user fix them one at a time.
type ErrorList []*Error

// Error joins the problems, one per line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// err returns nil for an empty list: a nil ErrorList stored in an error
// interface would not compare equal to nil.
func (l ErrorList) err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// sortByPosition orders the problems of one file as they appear in it,
// because they are found in walk order, which is not always line order
// (cross-field checks run after the walk).
func (l ErrorList) sortByPosition() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
}
