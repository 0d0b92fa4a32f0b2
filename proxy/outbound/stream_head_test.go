package outbound_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// pieceWait bounds the upstream's wait for the app to have read a piece
// of the body before it sends the next: only a failing test waits it.
const pieceWait = 5 * time.Second

// pacedBody is a response body the upstream sends in pieces, each after
// the app has read the one before (read), so that a piece can reach the
// app only if the sidecar passed on the ones it had: an upstream that
// waited pieceWait in vain notes it (held) and sends the rest.
type pacedBody struct {
	pieces []string
	read   chan int
	held   atomic.Int32 // 1 + the index of the piece the app never got in time; 0: none
}

func newPacedBody(pieces ...string) *pacedBody {
	return &pacedBody{pieces: pieces, read: make(chan int, len(pieces))}
}

func (b *pacedBody) length() int {
	n := 0
	for _, p := range b.pieces {
		n += len(p)
	}
	return n
}

// next waits for the app to have read piece i-1, unless a wait has
// failed already: what the sidecar held, the app will never read before
// the rest is sent.
func (b *pacedBody) next(i int) {
	if b.held.Load() != 0 {
		return
	}
	select {
	case <-b.read:
	case <-time.After(pieceWait):
		b.held.Store(int32(i))
	}
}

// readPieces reads the pieces from body one by one, telling the upstream
// of each, and fails the test if one is not what was sent or was held.
func (b *pacedBody) readPieces(t *testing.T, body io.Reader) {
	t.Helper()
	for i, want := range b.pieces {
		got := make([]byte, len(want))
		if _, err := io.ReadFull(body, got); err != nil {
			t.Fatalf("piece %d: %v", i, err)
		}
		if string(got) != want {
			t.Fatalf("piece %d is %q, want %q", i, got, want)
		}
		b.read <- i
	}
	if n, err := body.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after the body: %d bytes, %v; want its end", n, err)
	}
	if i := b.held.Load(); i != 0 {
		t.Errorf("the sidecar held the status and piece %d of the body until the rest came: the app had not read them %v after the upstream sent them", i-1, pieceWait)
	}
}

// TestResponseHeadNotHeld: the status and the body's bytes that have
// arrived reach the app while the rest of a body of known length is on
// its way: the upstream sends each piece only once the app has read the
// one before, on every path (both servers, both transports, a request
// with a body, HTTP/2). Before, a body of known length was held whole in
// the server's 4 KiB buffer, the status with it, until it ended.
func TestResponseHeadNotHeld(t *testing.T) {
	hundred := strings.Repeat("0123456789", 10)
	type shape struct {
		name   string
		pieces []string
		h2     bool
		post   bool // a chunked request body: never the fast path
	}
	shapes := []shape{
		{name: "first piece with the head", pieces: []string{"hello", "world"}},
		{name: "several small pieces", pieces: []string{hundred, hundred, hundred, hundred, hundred[:5]}},
		{name: "a request with a body", pieces: []string{"hello", "world"}, post: true},
		{name: "HTTP/2", pieces: []string{"hello", "world"}, h2: true},
		{name: "HTTP/2, several small pieces", pieces: []string{hundred, hundred, hundred}, h2: true},
	}
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		for _, std := range []bool{false, true} {
			for _, sh := range shapes {
				name := fmt.Sprintf("%s server/std transport %v/%s", server, std, sh.name)
				t.Run(name, func(t *testing.T) {
					b := newPacedBody(sh.pieces...)
					transport := withFastTransport()
					if std {
						transport = withStdTransport()
					}
					if sh.h2 {
						headHeldH2(t, b, withServer(server), transport)
						return
					}
					headHeldH1(t, b, sh.post, withServer(server), transport)
				})
			}
		}
	}
}

func headHeldH1(t *testing.T, b *pacedBody, post bool, opts ...sidecarOpt) {
	up, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", b.length(), b.pieces[0])
		for i, p := range b.pieces[1:] {
			b.next(i + 1)
			io.WriteString(c, p)
		}
	})
	sc := startSidecar(t, "", resolve(up, geo), opts...)
	c, err := net.Dial("tcp", sc.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * pieceWait)) // bounds a failing test only
	if post {
		fmt.Fprintf(c, "POST http://%s/x HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", geo, geo)
	} else {
		fmt.Fprintf(c, "GET http://%s/x HTTP/1.1\r\nHost: %s\r\n\r\n", geo, geo)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(b.length()) {
		t.Fatalf("got %d with Content-Length %d, want the upstream's 200 and %d", resp.StatusCode, resp.ContentLength, b.length())
	}
	b.readPieces(t, resp.Body)
}

func headHeldH2(t *testing.T, b *pacedBody, opts ...sidecarOpt) {
	up := startH2CUpstream(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(b.length()))
		io.WriteString(w, b.pieces[0])
		w.(http.Flusher).Flush()
		for i, p := range b.pieces[1:] {
			b.next(i + 1)
			io.WriteString(w, p)
			w.(http.Flusher).Flush()
		}
	})
	sc := startSidecar(t, "", resolve(up, geo), opts...)
	req, _ := http.NewRequest(http.MethodGet, "http://"+sc.Addr+"/x", nil)
	req.Host = geo
	resp, err := h2cClient(t).Transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK || resp.ContentLength != int64(b.length()) {
		t.Fatalf("got HTTP/%d %d with Content-Length %d, want HTTP/2, the upstream's 200 and %d", resp.ProtoMajor, resp.StatusCode, resp.ContentLength, b.length())
	}
	b.readPieces(t, resp.Body)
}
