package outbound

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// FuzzTarget feeds request lines and Host headers through net/http's own
// request parser and then target: whatever the app sends, the sidecar
// either names a host:port to dial or refuses with an error, and never
// panics.
func FuzzTarget(f *testing.F) {
	for _, s := range []string{
		"GET http://nominatim-service:8000/search?q=x HTTP/1.1\r\nHost: nominatim-service:8000\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: auth-service\r\n\r\n",
		"GET http://[::1]:8080/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
		"GET https://secure/ HTTP/1.1\r\nHost: secure\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n",
		"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || req.Method == http.MethodConnect {
			return
		}
		a, err := target(req)
		if err != nil {
			return
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatalf("target(%q) = %q: not host:port: %v", raw, a, err)
		}
		if p, err := strconv.Atoi(port); host == "" || err != nil || p < 1 || p > 65535 {
			t.Fatalf("target(%q) = %q: want a host and a port 1-65535", raw, a)
		}
	})
}

func TestTarget(t *testing.T) {
	for _, tc := range []struct{ raw, want, err string }{
		{"GET http://nominatim-service:8000/search HTTP/1.1\r\nHost: nominatim-service:8000\r\n\r\n", "nominatim-service:8000", ""},
		{"GET http://auth-service/x HTTP/1.1\r\nHost: auth-service\r\n\r\n", "auth-service:80", ""},
		{"GET / HTTP/1.1\r\nHost: auth-service:9000\r\n\r\n", "auth-service:9000", ""},
		{"GET http://[::1]/ HTTP/1.1\r\nHost: [::1]\r\n\r\n", "[::1]:80", ""},
		{"GET http://[::1]:81/ HTTP/1.1\r\nHost: [::1]:81\r\n\r\n", "[::1]:81", ""},
		{"GET https://s/ HTTP/1.1\r\nHost: s\r\n\r\n", "", "CONNECT"},
		{"GET / HTTP/1.0\r\n\r\n", "", "names no destination"},
		{"GET http://]:/ HTTP/1.1\r\nHost: ]:\r\n\r\n", "", "bad destination"},
		{"GET http://geo:0/ HTTP/1.1\r\nHost: geo:0\r\n\r\n", "", "bad port"},
		{"GET / HTTP/1.1\r\nHost: geo:99999\r\n\r\n", "", "bad port"},
	} {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.raw)))
		if err != nil {
			t.Fatalf("%q: %v", tc.raw, err)
		}
		got, err := target(req)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want one containing %q", tc.raw, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.raw, got, err, tc.want)
		}
	}
}
