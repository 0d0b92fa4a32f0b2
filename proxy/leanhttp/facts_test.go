package leanhttp

import (
	"net/http"
	"net/textproto"
	"reflect"
	"strings"
	"testing"
)

// factsHeads are heads at the edges of what the scan's facts say: names
// spelled otherwise, values with white space to trim or none, empty
// values, repeated fields, many fields, a line as long as the loop's
// buffer holds, and heads the scan does not serve (obs-fold, bare LF).
var factsHeads = func() []string {
	heads := []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\n\r\n",
		"GET / HTTP/1.1\r\nhost: a\r\nUser-Agent: u\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nuser-agent: u\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUSER-AGENT: u\r\nX-a: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A-: 1\r\nX--B: 2\r\nX_y.z~1: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost:a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost:  a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a \r\n\r\n",
		"GET / HTTP/1.1\r\nHost:\ta\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\t\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Empty: \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:  \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\nx-a: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1:2: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTe: trailers\r\nUpgrade-Insecure-Requests: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nVia: 1.0 a\r\nHost: a\r\nvia: 1.1 b\r\nX-Request-Id: r\r\n\r\n",
		"HEAD / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n",
	}
	var many, manyLower strings.Builder
	for i := range 100 {
		many.WriteString("X-F" + string(rune('a'+i%26)) + ": v\r\n")
		manyLower.WriteString("x-f" + string(rune('a'+i%26)) + ":v \r\n")
	}
	heads = append(heads,
		"GET / HTTP/1.1\r\nHost: a\r\n"+many.String()+"\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n"+manyLower.String()+"\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n"+many.String()+"x-last: v\r\n\r\n")
	// A line as long as the loop's buffer can hold with the rest of
	// its head.
	long := "GET / HTTP/1.1\r\nHost: a\r\nX-Long: \r\n\r\n"
	heads = append(heads, strings.Replace(long, "X-Long: ", "X-Long: "+strings.Repeat("v", readBufSize-len(long)), 1))
	return heads
}()

// TestHeadFacts: the scan's facts are true of every head it serves, and
// newRequest builds from them the request and lines it builds knowing
// nothing (which TestNewRequest and FuzzScanHead hold to net/http).
func TestHeadFacts(t *testing.T) {
	served := 0
	for _, h := range factsHeads {
		if sameWithFacts(t, []byte(h)) {
			served++
		}
	}
	if served < len(factsHeads)-4 {
		t.Fatalf("the scan served %d of %d heads: the test wants most served", served, len(factsHeads))
	}
}

// FuzzHeadFacts: whatever the scan serves, its facts are true and
// newRequest builds the same from them as without them.
func FuzzHeadFacts(f *testing.F) {
	for _, h := range factsHeads {
		f.Add([]byte(h))
	}
	for _, r := range requests {
		f.Add([]byte(r))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sameWithFacts(t, b)
	})
}

// sameWithFacts scans b as the loop does and reports whether the scan
// served it; if it did, it fails unless the facts are what they say of
// its lines and newRequest, given them, builds what it builds without. A
// head the scan does not serve leaves the facts as they were.
func sameWithFacts(t *testing.T, b []byte) bool {
	t.Helper()
	stale := headFacts{canonical: true, bare: true}
	f := stale
	n, _, v := scan(b, &f)
	if v != serveLean {
		if f != stale {
			t.Fatalf("scan(%q) = %v changed the facts: %+v", b, v, f)
		}
		return false
	}
	head := b[:n]
	if want := factsOf(string(head)); f != want {
		t.Fatalf("scan(%q): facts %+v, want %+v", head, f, want)
	}
	var without, with reqScratch
	var r0, r1 http.Request
	ok0 := newRequest(head, &without, &r0)
	with.facts = f
	ok1 := newRequest(head, &with, &r1)
	if ok0 != ok1 {
		t.Fatalf("newRequest(%q): %v knowing nothing, %v with the facts %+v", head, ok0, ok1, f)
	}
	if !ok0 {
		return true
	}
	type fields struct {
		Method, Proto, Host, RequestURI, URL string
		ProtoMajor, ProtoMinor               int
		Header                               http.Header
		Close                                bool
	}
	of := func(r *http.Request) fields {
		return fields{r.Method, r.Proto, r.Host, r.RequestURI, r.URL.String(), r.ProtoMajor, r.ProtoMinor, r.Header, r.Close}
	}
	if g, w := of(&r1), of(&r0); !reflect.DeepEqual(g, w) {
		t.Fatalf("newRequest(%q) with the facts %+v:\n got  %+v\n want %+v", head, f, g, w)
	}
	if with.lined != without.lined || with.lines != without.lines {
		t.Fatalf("newRequest(%q) with the facts %+v: lines %v %+v, knowing nothing %v %+v",
			head, f, with.lined, with.lines, without.lined, without.lines)
	}
	return true
}

// factsOf is what headFacts say of a served head, found line by line
// with net/textproto's rules.
func factsOf(head string) headFacts {
	f := headFacts{canonical: true, bare: true}
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")[1:]
	for _, line := range lines {
		name, value, _ := strings.Cut(line, ":")
		f.canonical = f.canonical && name == textproto.CanonicalMIMEHeaderKey(name)
		f.bare = f.bare && value == " "+strings.Trim(value, " \t")
	}
	return f
}
