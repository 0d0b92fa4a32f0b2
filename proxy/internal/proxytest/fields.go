package proxytest

import (
	"regexp"
	"sort"
	"strings"
)

var headRE = regexp.MustCompile(`(?s)((?:HTTP/1\.[01] [0-9]{3}[^\r]*|[A-Z]+ [^ \r]+ HTTP/1\.[01])\r\n)(.*?\r\n)?\r\n`)

// SortFields sorts the header lines of each response and request head
// in s by name, lines of one name in their order, for comparing heads
// whose fields differ only in order across names (RFC 9110 §5.3: that
// order carries no meaning; the order of one name's lines does), as
// leanhttp's SetRawHeader and the fast transport's lines send them
// against net/http's sorted ones.
func SortFields(s string) string {
	return headRE.ReplaceAllStringFunc(s, func(head string) string {
		m := headRE.FindStringSubmatch(head)
		lines := strings.SplitAfter(m[2], "\r\n")
		name := func(l string) string { n, _, _ := strings.Cut(l, ":"); return strings.ToLower(n) }
		sort.SliceStable(lines, func(i, j int) bool { return name(lines[i]) < name(lines[j]) })
		return m[1] + strings.Join(lines, "") + "\r\n"
	})
}
