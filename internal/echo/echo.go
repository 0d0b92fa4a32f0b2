// Package echo caps what minimesh repeats of its input. Denials, warnings,
// log lines and file:line:col errors name the value at fault so that the
// user can find it; they must not repeat all of it, because the value may
// be a megabyte of annotation, a 50 MB YAML scalar or a key that never
// ends, and an error message that size is a second problem (a denial the
// API server relays to kubectl, a log line, a CI log). One implementation
// for the webhook, the CLI and the policy decoder, so that they all cut
// the same way.
package echo

import (
	"strconv"
	"strings"

	"github.com/minimesh/minimesh/internal/textcut"
)

// MaxBytes is how much of a value is repeated: enough to recognise it.
const MaxBytes = 100

// Quote is s quoted as by strconv.Quote when it is at most MaxBytes long;
// a longer s is cut to its first MaxBytes (at a character boundary),
// quoted, and followed by its full length:
//
//	"xxxx…xxxx"… (1048576 bytes)
func Quote(s string) string {
	head, cut := cutAt(s)
	if !cut {
		return strconv.Quote(s)
	}
	return strconv.Quote(head) + suffix(len(s))
}

// Clip is Quote without the quotes, for text that is quoted elsewhere (a
// log attribute, a library's message, a %q of someone else's format):
// s itself when it is short and one line, else its first MaxBytes, up to
// its first line break, and its length. The result is always one line.
func Clip(s string) string {
	head, cut := cutAt(s)
	if i := strings.IndexAny(head, "\r\n"); i >= 0 {
		head, cut = head[:i], true
	}
	if !cut {
		return s
	}
	return head + suffix(len(s))
}

func cutAt(s string) (string, bool) {
	if len(s) <= MaxBytes {
		return s, false
	}
	return textcut.Prefix(s, MaxBytes), true
}

func suffix(n int) string { return "… (" + strconv.Itoa(n) + " bytes)" }
