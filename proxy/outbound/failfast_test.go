package outbound

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeCircuitOpen must answer exactly as writeError does with the
// errorResponse of a circuitOpenError, or leave it to writeError.
func TestWriteCircuitOpenSameAsWriteError(t *testing.T) {
	for _, tc := range []struct {
		dest, id   string
		retryAfter int
		plain      bool
	}{
		{"geo-service:8000", "0f8fad5b-d9cb-469f-a165-70867728950e", 3600, true},
		{"geo-service:8000", strings.Repeat("i", 128), 100, true},
		{strings.Repeat("d", 250) + ":8000", strings.Repeat("i", 128), 59, true},
		{strings.Repeat("d", 250) + ":8000", strings.Repeat("i", 128), 86400, true},
		{"bench-dead:80", "abc", 1, true},
		{"a:1", strings.Repeat("x", 128), 59, true},
		{"a:1", "with space and 'quotes' + % # ;", 100, true},
		{"geo:80", `a"b`, 5, false},
		{"geo:80", `a\b`, 5, false},
		{"geo:80", "<script>", 5, false},
		{"geo:80", "a&b", 5, false},
		{"ge\u00e9o:80", "id", 5, false},
		{"geo:80", "tab\there", 5, false},
	} {
		got := httptest.NewRecorder()
		if ok := writeCircuitOpen(got, tc.dest, tc.id, tc.retryAfter, new([2]string)); ok != tc.plain {
			t.Fatalf("%q %q: writeCircuitOpen %v, want %v", tc.dest, tc.id, ok, tc.plain)
		}
		if !tc.plain {
			if len(got.Header()) != 0 || got.Body.Len() != 0 {
				t.Fatalf("%q %q: wrote although it declined", tc.dest, tc.id)
			}
			continue
		}
		want := httptest.NewRecorder()
		code, kind, body := errorResponse(&circuitOpenError{destination: tc.dest, retryAfter: time.Duration(tc.retryAfter) * time.Second}, tc.dest)
		body.RequestID = tc.id
		writeError(want, code, kind, body)
		if got.Code != want.Code || !reflect.DeepEqual(got.Header(), want.Header()) || got.Body.String() != want.Body.String() {
			t.Errorf("%q %q:\n got %d %v %q\nwant %d %v %q", tc.dest, tc.id, got.Code, got.Header(), got.Body, want.Code, want.Header(), want.Body)
		}
	}
}

func TestSmallItoa(t *testing.T) {
	for n := range 5000 {
		if got, want := smallItoa(n), strconv.Itoa(n); got != want {
			t.Fatalf("smallItoa(%d) = %q", n, got)
		}
		for range 2 {
			if got, want := retryAfterText(n), strconv.Itoa(n); got != want {
				t.Fatalf("retryAfterText(%d) = %q", n, got)
			}
		}
	}
}

// defaultPortHost names a request's destination as target does whenever
// it answers: host+":80".
func FuzzDefaultPortHost(f *testing.F) {
	for _, s := range []string{
		"GET http://auth-service/x HTTP/1.1\r\nHost: auth-service\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: auth-service\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: auth-service:9000\r\n\r\n",
		"GET http://[::1]/ HTTP/1.1\r\nHost: [::1]\r\n\r\n",
		"GET https://s/ HTTP/1.1\r\nHost: s\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET ok:80 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://a%20b/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a]\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a[b\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || req.Method == http.MethodConnect {
			return
		}
		host, ok := defaultPortHost(req)
		if !ok {
			return
		}
		if a, err := target(req); err != nil || a != host+":80" {
			t.Fatalf("%q: defaultPortHost %q, target %q, %v", raw, host, a, err)
		}
	})
}

// The request's state is its context (reqState.Value): contexts derived
// from it must register with the request's own cancelCtx, as they did
// under a context.WithValue, not start a goroutine each to watch it, and
// must end with it.
func TestStateIsContext(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	st := &reqState{}
	st.Context = context.WithValue(parent, stateKey{}, "not the state")
	if stateOf(st) != st {
		t.Fatal("stateOf does not find the state")
	}
	n0 := runtime.NumGoroutine()
	var stops []func()
	var ctxs []context.Context
	for range 50 {
		c1, cancel1 := context.WithTimeoutCause(st, time.Hour, errTimeout)
		c2, cancel2 := context.WithCancelCause(st)
		stop := context.AfterFunc(st, func() {})
		stops = append(stops, cancel1, func() { cancel2(nil) }, func() { stop() })
		ctxs = append(ctxs, c1, c2)
	}
	if n := runtime.NumGoroutine(); n >= n0+50 { // one a context would be 150; others' may come and go
		t.Errorf("%d goroutines after deriving contexts from the state, %d before", n, n0)
	}
	cancel()
	for _, c := range ctxs {
		select {
		case <-c.Done():
		case <-time.After(time.Second):
			t.Fatal("a context derived from the state outlived the request's")
		}
	}
	for _, stop := range stops {
		stop()
	}
}
