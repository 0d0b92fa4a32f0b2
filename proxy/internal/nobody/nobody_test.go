package nobody

import (
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestIs: Is is b == http.NoBody for NoBody, nil, and bodies of other
// types, empty ones among them; and NoBody's type holds nothing, so that
// its type alone says a body equals it.
func TestIs(t *testing.T) {
	var typed *bytes.Reader
	for _, b := range []io.ReadCloser{
		http.NoBody, nil,
		io.NopCloser(strings.NewReader("")), io.NopCloser(http.NoBody), io.NopCloser(typed),
		http.MaxBytesReader(nil, http.NoBody, 1),
	} {
		if got, want := Is(b), b == http.NoBody; got != want {
			t.Errorf("Is(%T) = %v, want %v", b, got, want)
		}
	}
	if size := reflect.TypeOf(http.NoBody).Size(); size != 0 {
		t.Fatalf("http.NoBody's type holds %d bytes: its values may differ, and Is cannot tell them apart", size)
	}
}
