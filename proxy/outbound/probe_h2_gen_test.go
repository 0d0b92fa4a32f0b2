//go:build probe

package outbound_test

import (
	"bufio"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// genHead makes a random request head from pieces that touch what the
// lean loop and the fast path treat specially.
func genHead(r *rand.Rand) string {
	methods := []string{"GET", "GET", "GET", "HEAD", "OPTIONS", "DELETE"}
	targets := []string{"/a", "/a?b=c", "/a%20b", "http://" + geo + "/x", "HTTP://GEO-SERVICE:8000/x", "/a?x=%zz", "/a;p?q", "/é", "//x/y", "/a?b?c", "http://" + geo, "/a*b", "/a'b", "/a(b)"}
	names := []string{"X-A", "x-a", "X-a", "Via", "via", "X-Request-Id", "x-request-id", "X-Request-ID", "User-Agent", "user-agent", "Connection", "connection", "Te", "TE", "Keep-Alive", "Proxy-Connection", "Forwarded", "X-Forwarded-For", "Pragma", "Cache-Control", "Content-Length", "Accept", "Traceparent", "Trailer", "Proxy-Authorization", "X_Under", "X-Drop"}
	values := []string{"1", "", " 1", "1 ", "\t1", "a, b", "close", "keep-alive", "X-Drop", "x-drop, X-A", "trailers", "trailers, deflate", "no-cache", "1.1 other", "0", "abc-123", "a\tb", "\xc3\xa9", "Te", "Via", "X-Request-Id", "Host", "Forwarded", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	var b strings.Builder
	m := methods[r.Intn(len(methods))]
	b.WriteString(m + " " + targets[r.Intn(len(targets))] + " HTTP/1.1\r\n")
	hostAt := r.Intn(4)
	n := r.Intn(7)
	cl := false
	for i := 0; i < n; i++ {
		if i == hostAt {
			b.WriteString("Host: " + geo + "\r\n")
		}
		name := names[r.Intn(len(names))]
		v := values[r.Intn(len(values))]
		if strings.EqualFold(name, "Content-Length") {
			if cl {
				continue
			}
			cl, v = true, "0"
		}
		sep := ": "
		switch r.Intn(5) {
		case 0:
			sep = ":"
		case 1:
			sep = ":  "
		}
		b.WriteString(name + sep + v + "\r\n")
	}
	if hostAt >= n {
		b.WriteString("Host: " + geo + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// roundTripOn writes head on c and reads one response; it returns the
// response as bytes (re-serialised) or the error.
func roundTripOn(c net.Conn, br *bufio.Reader, head, method string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	var hb strings.Builder
	resp.Header.Del("Date")
	_ = resp.Header.Write(&hb)
	return fmt.Sprintf("%d %v close=%v\n%s\n%q %v", resp.StatusCode, resp.ContentLength, resp.Close, hb.String(), body, err), nil
}

// TestProbeH2_GenHeads: random heads, one connection each side kept
// alive across them; answers and what the upstream saw must agree.
func TestProbeH2_GenHeads(t *testing.T) { genHeads(t) }

// TestProbeH2_GenHeadsTraced: the same with tracing on (every request
// recorded): the trace fields go with the app's lines.
func TestProbeH2_GenHeadsTraced(t *testing.T) {
	genHeads(t, func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = "127.0.0.1:1", 1 })
}

var hexRE = regexp.MustCompile(`\b[0-9a-f]{16}\b|\b[0-9a-f]{32}\b`)

func genHeads(t *testing.T, opts ...sidecarOpt) {
	p := startDiffPair(t, "", opts...)
	r := rand.New(rand.NewSource(int64(time.Now().Nanosecond())))
	dial := func(addr string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c, bufio.NewReader(c)
	}
	lc, lbr := dial(p.lean.Addr)
	sc, sbr := dial(p.std.Addr)
	defer func() { lc.Close(); sc.Close() }()
	fails := 0
	for i := 0; i < 400 && fails < 8; i++ {
		head := genHead(r)
		method, _, _ := strings.Cut(head, " ")
		la, lerr := roundTripOn(lc, lbr, head, method)
		sa, serr := roundTripOn(sc, sbr, head, method)
		la, sa = probeNorm(la), probeNorm(sa)
		time.Sleep(5 * time.Millisecond)
		ul, us := probeNorm(strings.Join(p.ulean.take(), "\n--\n")), probeNorm(strings.Join(p.ustd.take(), "\n--\n"))
		if len(opts) > 0 {
			ul, us = hexRE.ReplaceAllString(ul, "HEX"), hexRE.ReplaceAllString(us, "HEX")
		}
		if la != sa || (lerr == nil) != (serr == nil) || ul != us {
			fails++
			t.Errorf("head %q\nlean answer (%v): %q\nstd answer  (%v): %q\nlean upstream: %q\nstd upstream:  %q", head, lerr, la, serr, sa, ul, us)
		}
		if lerr != nil || strings.Contains(la, "close=true") {
			lc.Close()
			lc, lbr = dial(p.lean.Addr)
		}
		if serr != nil || strings.Contains(sa, "close=true") {
			sc.Close()
			sc, sbr = dial(p.std.Addr)
		}
	}
}

// mutate changes a few bytes of head.
func mutate(r *rand.Rand, head string) string {
	b := []byte(head)
	bytesOf := []byte{'\r', '\n', ' ', '\t', 0, ':', 0x7f, 0xff, 'a', ',', '/', '?', '%', '#', '@', '"'}
	for k := r.Intn(3) + 1; k > 0 && len(b) > 0; k-- {
		i := r.Intn(len(b))
		switch r.Intn(3) {
		case 0:
			b[i] = bytesOf[r.Intn(len(bytesOf))]
		case 1:
			b = append(b[:i], append([]byte{bytesOf[r.Intn(len(bytesOf))]}, b[i:]...)...)
		case 2:
			b = append(b[:i], b[i+1:]...)
		}
	}
	return string(b)
}

// TestProbeH2_GenMutated: mutated heads, sometimes two in one write,
// each on a new connection to both sidecars.
func TestProbeH2_GenMutated(t *testing.T) {
	p := startDiffPair(t, "")
	seed := int64(time.Now().Nanosecond())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewSource(seed))
	fails := 0
	for i := 0; i < 150 && fails < 6; i++ {
		raw := mutate(r, genHead(r))
		if r.Intn(3) == 0 {
			raw += genHead(r)
		}
		var lean, std string
		var lc, sc bool
		done := make(chan struct{})
		go func() { lean, lc = probeExchangeQuick(t, p.lean.Addr, raw); close(done) }()
		std, sc = probeExchangeQuick(t, p.std.Addr, raw)
		<-done
		lean, std = probeNorm(lean), probeNorm(std)
		time.Sleep(20 * time.Millisecond)
		ul, us := probeNorm(strings.Join(p.ulean.take(), "\n--\n")), probeNorm(strings.Join(p.ustd.take(), "\n--\n"))
		if lean != std || lc != sc || ul != us {
			fails++
			t.Errorf("raw %q\nlean (closed %v): %q\nstd  (closed %v): %q\nupstream lean: %q\nupstream std:  %q", raw, lc, lean, sc, std, ul, us)
		}
	}
}

func probeExchangeQuick(t *testing.T, addr, raw string) (string, bool) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return "", false
	}
	defer c.Close()
	_, _ = io.WriteString(c, raw)
	var got []byte
	buf := make([]byte, 8192)
	for {
		_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			ne, ok := err.(net.Error)
			return string(got), !(ok && ne.Timeout())
		}
	}
}
