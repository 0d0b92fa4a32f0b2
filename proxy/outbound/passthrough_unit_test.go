package outbound

import (
	"slices"
	"testing"
)

// TestCloseListed: the names a head's Connection lists beside close,
// read before http.ReadResponse deletes the field; none when the head
// is not all there (which it reports) or does not close.
func TestCloseListed(t *testing.T) {
	for _, tc := range []struct {
		head  string
		want  []string
		whole bool
	}{
		{"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: s\r\n\r\nbody", []string{"X-Secret", "Close"}, true},
		{"HTTP/1.1 200 OK\nconnection: close\nCONNECTION: x-a , x-b\n\n", []string{"Close", "X-A", "X-B"}, true},           // bare LF, any case, two fields
		{"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\n\r\n", nil, true},                                                     // no close: the field stays
		{"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\n", nil, false},                                                 // not all of the head
		{"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r", nil, false},                                    // cut in its last line
		{"HTTP/1.1 200 OK\r\nConnection: close,\r\n X-Secret\r\nX-Secret: s\r\n\r\n", []string{"Close", "X-Secret"}, true}, // obs-fold
		{"HTTP/1.1 200 OK\r\nConnection: X-A\r\n\t, close\r\nX-B: b\r\n x-c\r\n\r\n", []string{"X-A", "Close"}, true},      // a fold of another field is not Connection's
		{"HTTP/1.1 200 OK", nil, false},
		{"HTTP/1.1 200 OK\r\nX-Connection: close\r\n\r\n", nil, true},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nConnection: X-B, close\r\n\r\n", nil, true}, // the first head only
		{"HTTP/1.1 103 Early Hints\r\nConnection: close, X-Hint\r\n\r\nHTTP/1.1 200 OK\r\n", []string{"Close", "X-Hint"}, true},
	} {
		got, whole := closeListed([]byte(tc.head), nil)
		if !slices.Equal(got, tc.want) || whole != tc.whole {
			t.Errorf("%q: %q, whole %v; want %q, %v", tc.head, got, whole, tc.want, tc.whole)
		}
	}
}
