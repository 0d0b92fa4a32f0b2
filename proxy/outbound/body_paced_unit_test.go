package outbound

import (
	"net/http"
	"testing"
)

// TestAppPaced: which request bodies --request-body-timeout leaves to the
// app's pace: gRPC calls whatever their length, and HTTP/2 bodies without
// a content-length; never an HTTP/1.x body, chunked or not.
func TestAppPaced(t *testing.T) {
	for _, tc := range []struct {
		name   string
		proto  int
		grpc   bool
		length int64
		want   bool
	}{
		{"gRPC", 2, true, -1, true},
		{"gRPC with a content-length", 2, true, 12, true},
		{"HTTP/2 without content-length", 2, false, -1, true},
		{"HTTP/2 with content-length", 2, false, 12, false},
		{"HTTP/1.1 chunked", 1, false, -1, false},
		{"HTTP/1.1 with content-length", 1, false, 12, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{ProtoMajor: tc.proto, ContentLength: tc.length}
			if got := appPaced(r, &reqState{grpc: tc.grpc}); got != tc.want {
				t.Errorf("appPaced = %v, want %v", got, tc.want)
			}
		})
	}
}
