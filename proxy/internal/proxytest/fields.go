package proxytest

import (
	"regexp"
	"sort"
	"strings"
)

var headRE = regexp.MustCompile(`(?s)(HTTP/1\.[01] [0-9]{3}[^\r]*\r\n)(.*?\r\n)?\r\n`)

// SortFields sorts the header lines of each response head in s, for
// comparing answers whose fields differ only in order (RFC 9110 §5.3:
// the order across names carries no meaning), as leanhttp's
// SetRawHeader sends them against net/http's sorted ones.
func SortFields(s string) string {
	return headRE.ReplaceAllStringFunc(s, func(head string) string {
		m := headRE.FindStringSubmatch(head)
		lines := strings.SplitAfter(m[2], "\r\n")
		sort.Strings(lines)
		return m[1] + strings.Join(lines, "") + "\r\n"
	})
}
