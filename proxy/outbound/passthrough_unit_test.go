package outbound

import (
	"slices"
	"testing"
)

// TestCloseListed: the names a head's Connection lists beside close,
// read before http.ReadResponse deletes the field; none when the head
// is not all there or does not close.
func TestCloseListed(t *testing.T) {
	for _, tc := range []struct {
		head string
		want []string
	}{
		{"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: s\r\n\r\nbody", []string{"X-Secret", "Close"}},
		{"HTTP/1.1 200 OK\nconnection: close\nCONNECTION: x-a , x-b\n\n", []string{"Close", "X-A", "X-B"}}, // bare LF, any case, two fields
		{"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\n\r\n", nil},                                           // no close: the field stays
		{"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\n", nil},                                        // not all of the head
		{"HTTP/1.1 200 OK\r\nX-Connection: close\r\n\r\n", nil},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nConnection: X-B, close\r\n\r\n", nil}, // the first head only
	} {
		if got := closeListed([]byte(tc.head), nil); !slices.Equal(got, tc.want) {
			t.Errorf("%q: %q, want %q", tc.head, got, tc.want)
		}
	}
}
