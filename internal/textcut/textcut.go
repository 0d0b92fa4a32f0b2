// Package textcut shortens text to a byte bound without splitting a
// character: log lines, span attributes, NACK reasons and messages that
// a bound keeps small must stay valid UTF-8 where their input was.
package textcut

import "unicode/utf8"

// Prefix is the longest prefix of s of at most n bytes that ends where
// a character starts (s itself when it fits). It shares s's memory.
func Prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
