package transparent

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// methods are the registered HTTP methods (IANA's HTTP Method Registry)
// and a few extension tokens: every one is HTTP/1.x to detection.
var methods = []string{
	"ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD",
	"LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MKREDIRECTREF", "MKWORKSPACE",
	"MOVE", "OPTIONS", "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND", "PROPPATCH", "PUT", "QUERY", "REBIND",
	"REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK", "UNLOCK", "UPDATE", "UPDATEREDIRECTREF",
	"VERSION-CONTROL", "M-SEARCH", "X_CUSTOM", "purge",
}

func TestClassifyEveryMethod(t *testing.T) {
	for _, m := range methods {
		target := "/a/b?c=d"
		want := HTTP1
		if m == "CONNECT" {
			target, want = "example.com:443", HTTP1Proxy
		}
		line := m + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"
		if p, more := Classify([]byte(line)); p != want || more {
			t.Errorf("%q: got %s more=%v, want %s", line, p, more, want)
		}
		// Every proper prefix of the request line asks for more bytes (a
		// slow client is never decided too early).
		end := strings.Index(line, "\r")
		for i := 1; i <= end; i++ {
			p, more := Classify([]byte(line[:i]))
			if !more {
				t.Errorf("%q: decided %s before the request line was whole", line[:i], p)
			}
		}
	}
}

func TestClassify(t *testing.T) {
	var b strings.Builder
	for _, c := range classifyCases(t) {
		p, more := Classify(c.in)
		sni, _ := clientHelloSNI(c.in)
		if p != TLS {
			sni = ""
		}
		fmt.Fprintf(&b, "%-34s %-12s more=%-5v final=%-12s sni=%q\n", c.name, p, more, Final(c.in), sni)
	}
	golden(t, "testdata/classify.golden", b.String())
}

type classifyCase struct {
	name string
	in   []byte
}

func classifyCases(t *testing.T) []classifyCase {
	hello := clientHello(t, "api.example.com")
	noSNI := clientHello(t, "")
	return []classifyCase{
		{"empty", nil},
		{"get origin-form", []byte("GET /x HTTP/1.1\r\n")},
		{"get lf only", []byte("GET /x HTTP/1.0\n")},
		{"options asterisk", []byte("OPTIONS * HTTP/1.1\r\n")},
		{"get absolute-form", []byte("GET http://a.b/ HTTP/1.1\r\n")},
		{"connect", []byte("CONNECT a.b:443 HTTP/1.1\r\n")},
		{"get partial", []byte("GET /x HTT")},
		{"get http/2 version", []byte("GET / HTTP/2.0\r\n")},
		{"get http/0.9", []byte("GET /\r\n")},
		{"get two spaces", []byte("GET  / HTTP/1.1\r\n")},
		{"get version junk", []byte("GET / HTTP/1.x\r\n")},
		{"get version no eol", []byte("GET / HTTP/1.1 ")},
		{"method too long", []byte(strings.Repeat("A", 25) + " / HTTP/1.1\r\n")},
		{"method too long partial", []byte(strings.Repeat("A", 25))},
		{"h2 preface", []byte(h2Preface)},
		{"h2 preface and settings", append([]byte(h2Preface), 0, 0, 0, 4, 0, 0, 0, 0, 0)},
		{"h2 preface partial", []byte(h2Preface[:10])},
		{"h2 preface wrong", []byte("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")},
		{"tls hello sni", hello},
		{"tls hello no sni", noSNI},
		{"tls hello 3 bytes", hello[:3]},
		{"tls hello half", hello[:len(hello)/2]},
		{"tls hello two records", splitHello(hello, 40)},
		{"tls hello two records partial", splitHello(hello, 40)[:60]},
		{"tls server hello", serverHelloLike(hello)},
		{"tls bad version", []byte{0x16, 0x02, 0x00, 0x00, 0x10}},
		{"tls zero-length record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}},
		{"redis inline", []byte("SET k v\r\n")},
		{"redis resp", []byte("*1\r\n$4\r\nPING\r\n")},
		{"ssh banner", []byte("SSH-2.0-OpenSSH_9.6\r\n")},
		{"smtp helo", []byte("HELO mail.example.com\r\n")},
		{"postgres startup", []byte{0, 0, 0, 8, 4, 210, 22, 47}},
		{"binary junk", []byte{0xff, 0x00, 0x13, 0x37}},
		{"control char in target", []byte("GET /\x01 HTTP/1.1\r\n")},
	}
}

func TestFinal(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Protocol
	}{
		{"", NoData},
		{"GET /", Unknown},
		{"PRI * HT", Unknown},
		{"\x16\x03\x01\x02\x00\x01", TLS},
		{"GET / HTTP/1.1\r\n", HTTP1},
		{"junk", Unknown},
	} {
		if got := Final([]byte(c.in)); got != c.want {
			t.Errorf("Final(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

// TestDetectTiming runs Detect over a pipe in a synctest bubble, where
// time is virtual: bytes that arrive slowly, silence, and an early end.
func TestDetectTiming(t *testing.T) {
	hello := clientHello(t, "slow.example")
	longLine := "GET /" + strings.Repeat("a", 2*firstPeek) + " HTTP/1.1\r\nHost: a\r\n\r\n"
	var alpn []string
	for i := range 20 {
		alpn = append(alpn, fmt.Sprintf("%03d", i)+strings.Repeat("p", 150))
	}
	bigHello := clientHelloConfig(t, &tls.Config{ServerName: "big.example", NextProtos: alpn})
	const timeout = time.Second
	cases := []struct {
		name    string
		writes  []string
		gaps    time.Duration
		close   bool
		want    Protocol
		sni     string
		elapsed time.Duration // how long detection took
	}{
		{name: "http at once", writes: []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n"}, want: HTTP1},
		{name: "http byte by byte", writes: split("GET /x HTTP/1.1\r\n", 1), gaps: 50 * time.Millisecond, want: HTTP1, elapsed: 15 * 50 * time.Millisecond},
		{name: "http too slow", writes: split("GET /x HTTP/1.1\r\n", 1), gaps: 100 * time.Millisecond, want: Unknown, elapsed: timeout},
		{name: "silence", want: NoData, elapsed: timeout},
		{name: "partial then silence", writes: []string{"GET /"}, want: Unknown, elapsed: timeout},
		{name: "closed without data", close: true, want: NoData},
		{name: "partial then closed", writes: []string{"GET /"}, close: true, want: Unknown},
		{name: "tls in two parts", writes: []string{string(hello[:50]), string(hello[50:])}, gaps: 200 * time.Millisecond, want: TLS, sni: "slow.example", elapsed: 200 * time.Millisecond},
		{name: "tls cut short", writes: []string{string(hello[:50])}, want: TLS, elapsed: timeout},
		{name: "h2 preface in parts", writes: split(h2Preface, 8), gaps: 10 * time.Millisecond, want: HTTP2, elapsed: 20 * time.Millisecond},
		{name: "junk", writes: []string{"\x00\x01"}, want: Unknown},
		// Past detection's first, small buffer (firstPeek), in one write
		// and across the point where it fills.
		{name: "long request line", writes: []string{longLine}, want: HTTP1},
		{name: "long request line in parts", writes: split(longLine, firstPeek-3), gaps: 10 * time.Millisecond, want: HTTP1, elapsed: 20 * time.Millisecond},
		{name: "tls hello past the first buffer", writes: []string{string(bigHello)}, want: TLS, sni: "big.example"},
	}
	if len(bigHello) <= firstPeek {
		t.Fatalf("the big hello is %d bytes, not past firstPeek", len(bigHello))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				app, sidecar := net.Pipe()
				defer app.Close()
				written := strings.Join(c.writes, "")
				done := make(chan struct{})
				go func() {
					defer close(done)
					for i, w := range c.writes {
						if i > 0 {
							time.Sleep(c.gaps)
						}
						if _, err := app.Write([]byte(w)); err != nil {
							return
						}
					}
					if c.close {
						app.Close()
					}
				}()
				start := time.Now()
				p, sni, peeked := Detect(sidecar, timeout)
				if elapsed := time.Since(start); elapsed != c.elapsed {
					t.Errorf("detection took %v, want %v", elapsed, c.elapsed)
				}
				if p != c.want || sni != c.sni {
					t.Errorf("got %s sni %q, want %s sni %q", p, sni, c.want, c.sni)
				}
				if !strings.HasPrefix(written, string(peeked)) {
					t.Fatalf("peeked %q, written %q", peeked, written)
				}
				if !c.close {
					// The read deadline is cleared for the connection's next
					// owner, and the bytes not peeked follow the peeked ones.
					time.Sleep(2 * timeout)
					go func() { <-done; _, _ = app.Write([]byte("z")) }()
					rest := make([]byte, len(written)-len(peeked)+1)
					if _, err := io.ReadFull(sidecar, rest); err != nil || string(peeked)+string(rest) != written+"z" {
						t.Errorf("after detection read %q, %v; want the rest of %q", rest, err, written)
					}
				}
				sidecar.Close()
				<-done
			})
		})
	}
}

// TestSilentDetectionHoldsLittle checks that a connection waiting in
// detection without a byte holds detection's small first buffer, not a
// whole TLS record's: at the inbound listener's cap of 1,024, waiting
// for up to 10 s each, that was 16 MiB of a sidecar's memory.
func TestSilentDetectionHoldsLittle(t *testing.T) {
	const n = 256
	synctest.Test(t, func(t *testing.T) {
		apps := make([]net.Conn, n)
		done := make(chan Protocol, n)
		// Detection's buffers pooled by earlier tests would hide what
		// these take: two collections empty the pools.
		runtime.GC()
		runtime.GC()
		var before, during runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range apps {
			app, sidecar := net.Pipe()
			apps[i] = app
			go func() { p, _, _ := Detect(sidecar, 10*time.Second); done <- p }()
		}
		synctest.Wait() // every detection is waiting for its first byte
		runtime.ReadMemStats(&during)
		if grew, limit := int64(during.HeapAlloc)-int64(before.HeapAlloc), int64(n*8192); grew > limit {
			t.Errorf("%d silent connections in detection took %d bytes of heap, want at most %d (%d each)", n, grew, limit, limit/n)
		}
		for _, app := range apps {
			app.Close()
		}
		for range apps {
			if p := <-done; p != NoData {
				t.Errorf("a connection closed without a byte detected as %s, want %s", p, NoData)
			}
		}
	})
}

// TestConnReadsPeekedFirst checks that the bytes read for detection come
// first, then the rest of the stream.
func TestConnReadsPeekedFirst(t *testing.T) {
	app, sidecar := net.Pipe()
	defer app.Close()
	go func() {
		_, _ = app.Write([]byte("GET / HTTP/1.1\r\n"))
		_, _ = app.Write([]byte("Host: a\r\n\r\n"))
		app.Close()
	}()
	p, _, peeked := Detect(sidecar, time.Second)
	if p != HTTP1 {
		t.Fatalf("got %s", p)
	}
	c := &Conn{Conn: sidecar, peeked: peeked}
	all, _ := io.ReadAll(c)
	if string(all) != "GET / HTTP/1.1\r\nHost: a\r\n\r\n" {
		t.Fatalf("read %q", all)
	}
}

// TestConnReadsPeekedFirstLazily: ReadLazy, as Read, gives the bytes
// read for detection first, then the connection's.
func TestConnReadsPeekedFirstLazily(t *testing.T) {
	app, sidecar := net.Pipe()
	defer app.Close()
	go func() {
		_, _ = app.Write([]byte("Host: a\r\n\r\n"))
		app.Close()
	}()
	c := &Conn{Conn: sidecar, peeked: []byte("GET / HTTP/1.1\r\n")}
	var all []byte
	for {
		b, n, err := c.ReadLazy(newBufs{})
		all = append(all, b[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if string(all) != "GET / HTTP/1.1\r\nHost: a\r\n\r\n" {
		t.Fatalf("read %q", all)
	}
}

func TestParsePorts(t *testing.T) {
	p, err := ParsePorts(DefaultOpaquePorts)
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{25, 587, 3306, 4444, 5432, 6379, 9300, 11211} {
		if !p.Has(port) {
			t.Errorf("default list lacks %d", port)
		}
	}
	if p.Has(80) || p.Has(0) || p.Has(65535) {
		t.Error("default list has ports it should not")
	}
	r, err := ParsePorts(" 8000-8002 ,65535")
	if err != nil || !r.Has(8000) || !r.Has(8001) || !r.Has(8002) || r.Has(8003) || !r.Has(65535) {
		t.Errorf("ranges: %v", err)
	}
	if e, err := ParsePorts(""); err != nil || e.Has(25) {
		t.Errorf("empty list: %v", err)
	}
	var none *Ports
	if none.Has(25) {
		t.Error("nil set has a port")
	}
	for _, bad := range []string{"0", "65536", "x", "10-5", "1-", "-3", "25,,x"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "port") {
			t.Errorf("%q: error names no port: %v", bad, err)
		}
	}
}

// TestOriginalDstNotRedirected: a connection made to the listener itself
// has no original destination, or conntrack's is the listener's address.
func TestOriginalDstNotRedirected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	orig, err := OriginalDst(c)
	if err == nil && !isSelf(orig, c.LocalAddr()) {
		t.Fatalf("a direct connection has original destination %v (listener %v)", orig, c.LocalAddr())
	}
}

// clientHello returns the first flight of crypto/tls's client: one
// ClientHello record.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	return clientHelloConfig(t, &tls.Config{ServerName: serverName, InsecureSkipVerify: serverName == ""})
}

// clientHelloConfig is the first record a client with cfg sends.
func clientHelloConfig(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	app, server := net.Pipe()
	defer server.Close()
	go func() {
		c := tls.Client(app, cfg)
		_ = c.Handshake()
		c.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(server, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(server, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// splitHello puts the handshake message of a one-record hello into two
// records, the first holding at bytes of it.
func splitHello(hello []byte, at int) []byte {
	msg := hello[5:]
	rec := func(b []byte) []byte { return append([]byte{0x16, 3, 1, byte(len(b) >> 8), byte(len(b))}, b...) }
	return append(rec(msg[:at]), rec(msg[at:])...)
}

func serverHelloLike(hello []byte) []byte {
	b := bytes.Clone(hello)
	b[5] = 2
	return b
}

func split(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// newBufs lends a new buffer each time, and drops what comes back.
type newBufs struct{}

func (newBufs) Get() []byte { return make([]byte, 64) }
func (newBufs) Put([]byte)  {}
