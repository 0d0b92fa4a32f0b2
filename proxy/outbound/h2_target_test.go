package outbound_test

// How the outbound listener reads an HTTP/2 request's destination: its
// :authority, with a :path in origin form (RFC 9113 §8.3.1). A :path in
// absolute form (http://other/x) named another destination than the
// :authority, and the sidecar went there.

import (
	"bytes"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Status sends one bodiless HTTP/2 request, its header fields as
// given (pseudo-fields first), on a new h2c connection to addr, and
// returns the answer's :status ("RST_STREAM ..." for a reset).
func h2Status(t *testing.T, addr string, fields ...string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if ackControl(fr, f) {
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.PseudoValue("status")
		case *http2.RSTStreamFrame:
			return "RST_STREAM " + f.ErrCode.String()
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		}
	}
}

// TestH2PathOriginForm: an HTTP/2 request whose :path is not in origin
// form is answered 400 and goes nowhere; before, an absolute-form :path
// overrode :authority, and the request went to the destination it named.
func TestH2PathOriginForm(t *testing.T) {
	const named, other = "named-service:8080", "other-service:80"
	var hits atomic.Int32
	up := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("X-Host", r.Host)
	})
	sc := startSidecar(t, "", resolve(up, named, other, "other-service:8080"))
	for _, tc := range []struct {
		name, path string
		want       string
		reached    bool
	}{
		{"origin form", "/x", "200", true},
		{"absolute form, a port-less host", "http://other-service/x", "400", false},
		{"absolute form with a port", "http://other-service:8080/x", "400", false},
		{"absolute form naming the :authority itself: where it says", "http://" + named + "/x", "200", true},
		{"https absolute form", "https://other-service/x", "400", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			got := h2Status(t, sc.Addr, ":method", "GET", ":scheme", "http", ":authority", named, ":path", tc.path)
			if got != tc.want {
				t.Errorf(":path %q: answered %s, want %s", tc.path, got, tc.want)
			}
			// The answer came after the upstream's, if it was reached: no
			// wait is needed to see a request that went.
			if reached := hits.Load() > before; reached != tc.reached {
				t.Errorf(":path %q: the upstream reached: %v, want %v", tc.path, reached, tc.reached)
			}
		})
	}
}
