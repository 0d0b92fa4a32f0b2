package outbound_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// How refusingH2Upstream treats the first stream it is sent, once the
// stream's request has arrived whole.
const (
	refuseRST       = "RST_STREAM REFUSED_STREAM"
	refuseGoAway    = "GOAWAY NO_ERROR below the stream"        // as a server shutting down gracefully
	refuseGoAwayErr = "GOAWAY ENHANCE_YOUR_CALM below it"       // an error code, on the connection's first stream
	resetProtocol   = "RST_STREAM PROTOCOL_ERROR"               // may have acted on it: not a refusal
	resetInternal   = "RST_STREAM INTERNAL_ERROR"               // the same
	refuseAfterHead = "headers, then RST_STREAM REFUSED_STREAM" // a stream error in the response body
	resetAfterHead  = "headers, then RST_STREAM PROTOCOL_ERROR"
	closeConn       = "the connection closed, no GOAWAY"
)

// h2Refuser is an h2c upstream, written with the HTTP/2 framer so that it
// can refuse a stream as the test asks, that answers every other stream
// 200 (a gRPC call: trailers-only, grpc-status 0) once its request has
// arrived whole. It counts the streams it was sent and keeps the request
// bodies of the streams it answered.
type h2Refuser struct {
	streams  atomic.Int32
	mu       sync.Mutex
	answered [][]byte
}

func (u *h2Refuser) bodies() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.answered...)
}

func refusingH2Upstream(t *testing.T, how string) (string, *h2Refuser) {
	t.Helper()
	u := &h2Refuser{}
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) { u.serve(c, how) })
	return addr, u
}

// errHangUp ends h2Refuser.serve's frame loop: the connection closes.
var errHangUp = errors.New("the upstream closes the connection")

func (u *h2Refuser) serve(c net.Conn, how string) {
	defer c.Close()
	type stream struct {
		grpc bool
		body bytes.Buffer
		nth  int32
	}
	streams := map[uint32]*stream{}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	headers := func(fr *http2.Framer, id uint32, end bool, fields ...string) {
		hbuf.Reset()
		for i := 0; i < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndStream: end, EndHeaders: true})
	}
	ended := func(fr *http2.Framer, id uint32) error { // the request is whole: refuse or answer it
		s := streams[id]
		if s == nil {
			return nil
		}
		if s.nth == 1 {
			switch how {
			case refuseRST:
				_ = fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
			case resetProtocol:
				_ = fr.WriteRSTStream(id, http2.ErrCodeProtocol)
			case resetInternal:
				_ = fr.WriteRSTStream(id, http2.ErrCodeInternal)
			case refuseGoAway:
				_ = fr.WriteGoAway(id-1, http2.ErrCodeNo, nil) // the last stream taken: the one before
				return errHangUp
			case refuseGoAwayErr:
				_ = fr.WriteGoAway(id-1, http2.ErrCodeEnhanceYourCalm, nil)
				return errHangUp
			case refuseAfterHead:
				headers(fr, id, false, ":status", "200", "content-type", "text/plain")
				_ = fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
			case resetAfterHead:
				headers(fr, id, false, ":status", "200", "content-type", "text/plain")
				_ = fr.WriteRSTStream(id, http2.ErrCodeProtocol)
			case closeConn:
				return errHangUp
			}
			return nil
		}
		u.mu.Lock()
		u.answered = append(u.answered, bytes.Clone(s.body.Bytes()))
		u.mu.Unlock()
		if s.grpc {
			headers(fr, id, true, ":status", "200", "content-type", "application/grpc", "grpc-status", "0")
		} else {
			headers(fr, id, false, ":status", "200", "content-type", "text/plain")
			_ = fr.WriteData(id, true, fmt.Appendf(nil, "got %d bytes", s.body.Len()))
		}
		return nil
	}
	outbound.ServeH2c(c, func(fr *http2.Framer, f http2.Frame) error {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			s := &stream{nth: u.streams.Add(1)}
			for _, hf := range f.RegularFields() {
				if hf.Name == "content-type" {
					s.grpc = strings.HasPrefix(hf.Value, "application/grpc")
				}
			}
			streams[f.StreamID] = s
			if f.StreamEnded() {
				return ended(fr, f.StreamID)
			}
		case *http2.DataFrame:
			if s := streams[f.StreamID]; s != nil {
				s.body.Write(f.Data())
			}
			if n := len(f.Data()); n > 0 { // give the window back
				_ = fr.WriteWindowUpdate(0, uint32(n))
				_ = fr.WriteWindowUpdate(f.StreamID, uint32(n))
			}
			if f.StreamEnded() {
				return ended(fr, f.StreamID)
			}
		}
		return nil
	})
}

// TestH2RefusedResent: a request the upstream refused without processing
// it (RFC 9113 §8.7: RST_STREAM REFUSED_STREAM, or a GOAWAY whose last
// stream ID is below it) was never processed: with connect-failure in
// retryOn the try loop sends it again whatever its method, once, with
// its whole body, and the app gets the answer. The first try counts
// neither way for the breaker (heldVerdict). Before, a request with a
// body was answered reset and not sent again (docs/grpc.md, "Retries").
func TestH2RefusedResent(t *testing.T) {
	post := bytes.Repeat([]byte("charge card 42;"), 40<<10/15) // 40 KiB: several DATA frames, held whole
	unary := append([]byte{0, 0, 0, 4, 0}, bytes.Repeat([]byte("m"), 1024)...)
	for _, how := range []string{refuseRST, refuseGoAway, refuseGoAwayErr} {
		for _, tc := range []struct {
			name, path, ctype string
			body              []byte
		}{
			{"POST", "/charge", "text/plain", post},
			{"gRPC unary", "/pay.Payments/Charge", "application/grpc", unary},
		} {
			t.Run(how+"/"+tc.name, func(t *testing.T) {
				addr, up := refusingH2Upstream(t, how)
				const svc = "orders:8080"
				var log accessLog
				sc := startSidecar(t, policyDoc("orders", svc, "timeout: 5s\nretries:\n  attempts: 2\n  retryOn: [connect-failure]\n  backoff: {base: 1ms, max: 2ms}\n"), resolve(addr, svc), withAccessLog(&log))
				resp := postH2(t, sc, svc, tc.path, tc.ctype, tc.body)
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Minimesh-Error") != "" || tc.ctype == "application/grpc" && resp.Header.Get("Grpc-Status") != "0" {
					t.Fatalf("answer %d %q, grpc-status %q, body %q: want the upstream's 200", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), resp.Header.Get("Grpc-Status"), got)
				}
				if n := up.streams.Load(); n != 2 {
					t.Errorf("the upstream was sent %d streams, want 2: the refused one and its retry", n)
				}
				if b := up.bodies(); len(b) != 1 || !bytes.Equal(b[0], tc.body) {
					t.Errorf("the retry carried %d bodies (%v), want the whole body of %d bytes once", len(b), lens(b), len(tc.body))
				}
				if n := sc.metric("minimesh_retries_total", "destination", svc, "reason", "connect-failure"); n != 1 {
					t.Errorf("minimesh_retries_total{reason=connect-failure} = %v, want 1", n)
				}
				if e := log.wait(t, 1, 5*time.Second)[0]; e.Attempts != 2 || e.Status != 200 || e.Error != "" {
					t.Errorf("access log %+v: want 200 after 2 attempts", e)
				}
				if b := sc.breaker(svc); b.Counts.TotalFailures != 0 || b.Counts.TotalSuccesses != 1 {
					t.Errorf("breaker counts %+v: want the retry's success only", b.Counts)
				}
			})
		}
	}
}

// TestH2RefusedAnswered: a refused request not sent again (retryOn
// without connect-failure, or no retries) is the sidecar's
// connect-failure, a failure for the breaker: the upstream refused it.
// One the upstream reset with PROTOCOL_ERROR stays a reset
// (TestH2ResetNotResent).
func TestH2RefusedAnswered(t *testing.T) {
	for _, tc := range []struct{ name, spec string }{
		{"retryOn reset", "timeout: 5s\nretries:\n  attempts: 2\n  retryOn: [reset]\n"},
		{"no retries", "timeout: 5s\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, up := refusingH2Upstream(t, refuseRST)
			const svc = "orders:8080"
			sc := startSidecar(t, policyDoc("orders", svc, tc.spec), resolve(addr, svc))
			resp := postH2(t, sc, svc, "/charge", "text/plain", []byte("charge card 42"))
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Minimesh-Error") != "connect-failure" || !bytes.Contains(body, []byte("refused the request before processing it")) {
				t.Errorf("answer %d %q %s: want 502 connect-failure, refused", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), body)
			}
			if n := up.streams.Load(); n != 1 {
				t.Errorf("the upstream was sent %d streams, want 1", n)
			}
			if b := sc.breaker(svc); b.Counts.TotalFailures != 1 {
				t.Errorf("breaker counts %+v: want 1 failure", b.Counts)
			}
		})
	}
}

// postH2 sends a POST to the sidecar over h2c, as an app's HTTP/2 client
// does, naming svc in :authority.
func postH2(t *testing.T, sc *testSidecar, svc, path, ctype string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = svc
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Te", "trailers")
	resp, err := h2cClient(t).Transport.RoundTrip(req)
	if err != nil {
		t.Fatalf("the app got no answer: %v", err)
	}
	return resp
}

func lens(b [][]byte) []int {
	var n []int
	for _, x := range b {
		n = append(n, len(x))
	}
	return n
}

// TestH2UnprocessedRealTransport: the errors net/http's HTTP/2 transport
// returns for each way an upstream refuses or resets a stream, with a
// body and no GetBody as the sidecar sends (the transport's error values
// are unexported, and flattened to text for such a request), and what
// h2Unprocessed makes of them. It drives the real transport against a
// real server, so that a Go upgrade that changes a text fails here, not
// as POSTs silently answered reset again.
func TestH2UnprocessedRealTransport(t *testing.T) {
	const cannotRetry = "http2: Transport: cannot retry err [%s] after Request.Body was written; define Request.GetBody to avoid this error"
	for _, tc := range []struct {
		how, want   string
		unprocessed bool
		inBody      bool // the error comes from reading the response body, unwrapped
	}{
		{refuseRST, fmt.Sprintf(cannotRetry, "stream error: stream ID 1; REFUSED_STREAM; received from peer"), true, false},
		{refuseGoAway, fmt.Sprintf(cannotRetry, "http2: Transport received Server's graceful shutdown GOAWAY"), true, false},
		{refuseGoAwayErr, "http2: Transport received GOAWAY from server ErrCode:ENHANCE_YOUR_CALM", true, false},
		{resetProtocol, fmt.Sprintf(cannotRetry, "stream error: stream ID 1; PROTOCOL_ERROR; received from peer"), false, false},
		{resetInternal, "stream error: stream ID 1; INTERNAL_ERROR; received from peer", false, false},
		{closeConn, "unexpected EOF", false, false},
		// A typed stream error (errors.As to net/http's unexported type,
		// through its As method): REFUSED_STREAM is a refusal whatever
		// its text, PROTOCOL_ERROR is not.
		{refuseAfterHead, "stream error: stream ID 1; REFUSED_STREAM; received from peer", true, true},
		{resetAfterHead, "stream error: stream ID 1; PROTOCOL_ERROR; received from peer", false, true},
	} {
		t.Run(tc.how, func(t *testing.T) {
			addr, _ := refusingH2Upstream(t, tc.how)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/charge", bytes.NewReader([]byte("charge card 42")))
			if err != nil {
				t.Fatal(err)
			}
			req.GetBody = nil // as the sidecar sends: no GetBody (docs/grpc.md, "Retries")
			resp, err := h2cClient(t).Transport.RoundTrip(req)
			if tc.inBody {
				if err != nil {
					t.Fatalf("RoundTrip: %v, want the headers", err)
				}
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			} else if err == nil {
				resp.Body.Close()
				t.Fatalf("answer %d, want an error", resp.StatusCode)
			}
			// The refusals' texts are what h2Unprocessed reads: exact. The
			// resets' are only to be told apart from them (a closed
			// connection reads as EOF or, with bytes unread at the
			// server, as a TCP reset).
			if err == nil || tc.unprocessed && err.Error() != tc.want {
				t.Fatalf("Go's transport returned %v,\nwant %s\n(did a Go upgrade change its errors? Update h2Unprocessed in errors.go)", err, tc.want)
			}
			if got := outbound.H2Unprocessed(err); got != tc.unprocessed {
				t.Errorf("h2Unprocessed(%q) = %v, want %v", err, got, tc.unprocessed)
			}
		})
	}
}

// TestH2UnprocessedGoSource: the two texts of the refusals the tests
// cannot bring about at will (a race of Go's transport with a GOAWAY) are
// still Go's: a Go upgrade that changes them fails here.
func TestH2UnprocessedGoSource(t *testing.T) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "src", "net", "http")
	for file, texts := range map[string][]string{
		"transport.go": {`errCannotRewind = errors.New("net/http: cannot rewind body after connection loss")`},
		"h2_bundle.go": {
			`http2errClientConnNotEstablished = errors.New("http2: client conn could not be established")`,
			`http2errClientConnGotGoAway      = errors.New("http2: Transport received Server's graceful shutdown GOAWAY")`,
			`"http2: Transport: cannot retry err [%v] after Request.Body was written; define Request.GetBody to avoid this error"`,
			`fmt.Errorf("http2: Transport received GOAWAY from server ErrCode:%v", cc.goAway.ErrCode)`,
		},
	} {
		src, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatalf("Go's source: %v", err)
		}
		for _, s := range texts {
			if !bytes.Contains(src, []byte(s)) {
				t.Errorf("%s no longer has %s: did a Go upgrade change its errors? Update h2Unprocessed in errors.go", file, s)
			}
		}
	}
}

// TestH2UnprocessedTable: h2Unprocessed on each text, wrapped as the
// sidecar wraps errors, and on near misses.
func TestH2UnprocessedTable(t *testing.T) {
	wrap := func(s string) string {
		return "http2: Transport: cannot retry err [" + s + "] after Request.Body was written; define Request.GetBody to avoid this error"
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errors.New(wrap("stream error: stream ID 1; REFUSED_STREAM; received from peer")), true},
		{errors.New(wrap("stream error: stream ID 2147483647; REFUSED_STREAM; received from peer")), true},
		{errors.New("stream error: stream ID 5; REFUSED_STREAM; received from peer"), true},
		{errors.New(wrap("http2: Transport received Server's graceful shutdown GOAWAY")), true},
		{errors.New("http2: Transport received Server's graceful shutdown GOAWAY"), true},
		{errors.New("http2: Transport received GOAWAY from server ErrCode:PROTOCOL_ERROR"), true},
		{errors.New("http2: client conn could not be established"), true},
		{errors.New("net/http: cannot rewind body after connection loss"), true},
		{fmt.Errorf("try 1: %w", errors.New("net/http: cannot rewind body after connection loss")), true},
		{errors.New(wrap("stream error: stream ID 1; PROTOCOL_ERROR; received from peer")), false},
		{errors.New(wrap("stream error: stream ID 1; REFUSED_STREAM")), false}, // not the peer's
		{errors.New(wrap("stream error: stream ID x; REFUSED_STREAM; received from peer")), false},
		{errors.New(wrap("http2: Transport received Server's graceful shutdown GOAWAY") + "!"), false},
		{errors.New("stream error: stream ID 1; CANCEL; received from peer"), false},
		{errors.New(`http2: server sent GOAWAY and closed the connection; LastStreamID=1, ErrCode=NO_ERROR, debug=""`), false},
		{errors.New("http2: client connection lost"), false},
		{errors.New("http2: client conn is closed"), false},
		{errors.New("ReverseProxy does an invalid Read on closed Body"), false},
		{io.ErrUnexpectedEOF, false},
		{errors.New("upstream said: http2: Transport received Server's graceful shutdown GOAWAY"), false},
	} {
		if got := outbound.H2Unprocessed(tc.err); got != tc.want {
			t.Errorf("h2Unprocessed(%q) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
