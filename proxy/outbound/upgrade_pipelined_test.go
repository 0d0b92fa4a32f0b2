package outbound_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// upgradeUpstream is a raw keep-alive HTTP/1.1 server: it serves the
// requests of each connection in turn, answering each with answer's
// status. A 101 switches the connection: the upstream then reads the
// tunnel's first bytes (as many as want, or until the connection ends),
// records them and echoes them back. It records every request it read,
// with the number of its connection.
type upgradeUpstream struct {
	mu       sync.Mutex
	requests []string // "conn N: METHOD PATH body=..."
	tunnel   chan tunnelRead
}

type tunnelRead struct {
	data string
	err  error
}

func (u *upgradeUpstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.requests...)
}

func newUpgradeUpstream(t *testing.T, want int, answer func(r *http.Request) (code int, upgrade string)) (*upgradeUpstream, string) {
	t.Helper()
	u := &upgradeUpstream{tunnel: make(chan tunnelRead, 4)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var open []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			open = append(open, c)
			n := len(open)
			u.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					u.mu.Lock()
					u.requests = append(u.requests, fmt.Sprintf("conn %d: %s %s body=%s", n, req.Method, req.URL.Path, body))
					u.mu.Unlock()
					code, upgrade := answer(req)
					if code != http.StatusSwitchingProtocols {
						fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nno", code, http.StatusText(code))
						continue
					}
					fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", upgrade)
					buf := make([]byte, want)
					k, err := io.ReadFull(br, buf)
					u.tunnel <- tunnelRead{string(buf[:k]), err}
					_, _ = c.Write(buf[:k])
					return
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		for _, c := range open { // kept alive by the sidecar's pool
			c.Close()
		}
		u.mu.Unlock()
		wg.Wait()
	})
	return u, ln.Addr().String()
}

// readUntilEOF reads what the sidecar sends on c until it closes it. The
// deadline only bounds a failing test: a connection left open is the
// failure (its garbage kept for a next request).
func readUntilEOF(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("the sidecar left the app's connection open after the answer (%v); got %q", err, b)
	}
	return string(b)
}

// TestUpgradePipelinedBytes: bytes an app sends right behind an Upgrade
// request's head, before the upstream answered, reach the upstream only
// after its 101, as the switched connection's first bytes (Go's
// ReverseProxy dropped those its server had read ahead); after any other
// answer they are never read as a further request (request smuggling:
// the second request reached the upstream and its answer the app), and
// the app's connection closes. On both HTTP/1 servers, with and without a
// request body, for WebSocket and another protocol (an upgrade to h2c
// is none: TestH2CUpgradeServedPlain).
func TestUpgradePipelinedBytes(t *testing.T) {
	const behind = "GET http://" + geo + "/smuggled HTTP/1.1\r\nHost: " + geo + "\r\n\r\n"
	type tc struct {
		name     string
		upgrade  string // the app's Upgrade
		body     string
		code     int    // the upstream's answer to it
		switchTo string // the 101's Upgrade
	}
	var cases []tc
	for _, up := range []string{"websocket", "echo/1"} { // not h2c: TestH2CUpgradeServedPlain
		for _, body := range []string{"", "hello"} {
			cases = append(cases,
				tc{up + "/101", up, body, 101, up},
				tc{up + "/400", up, body, 400, ""},
				tc{up + "/200", up, body, 200, ""},
				tc{up + "/101-other-protocol", up, body, 101, "something-else"},
			)
		}
	}
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		for _, c := range cases {
			name := server + "/" + c.name
			if c.body != "" {
				name += "/body"
			}
			t.Run(name, func(t *testing.T) {
				u, addr := newUpgradeUpstream(t, len(behind), func(r *http.Request) (int, string) {
					if r.Header.Get("Upgrade") == "" {
						return 200, "" // the smuggled request, should it arrive
					}
					return c.code, c.switchTo
				})
				sc := startSidecar(t, "", resolve(addr, geo), withServer(server))
				conn, err := net.Dial("tcp", sc.Addr)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				head := fmt.Sprintf("GET http://%s/up HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\n", geo, geo, c.upgrade)
				if c.body != "" {
					head = strings.Replace(head, "GET", "POST", 1) + fmt.Sprintf("Content-Length: %d\r\n", len(c.body))
				}
				if _, err := io.WriteString(conn, head+"\r\n"+c.body+behind); err != nil {
					t.Fatal(err)
				}
				method := "GET"
				if c.body != "" {
					method = "POST"
				}
				first := fmt.Sprintf("conn 1: %s /up body=%s", method, c.body)

				if c.code == 101 && c.switchTo == c.upgrade {
					br := bufio.NewReader(conn)
					_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
					resp, err := http.ReadResponse(br, nil)
					if err != nil || resp.StatusCode != 101 {
						t.Fatalf("answer %v %v, want the 101", resp, err)
					}
					select {
					case got := <-u.tunnel:
						if got.data != behind || got.err != nil {
							t.Fatalf("the switched connection's first bytes: %q (%v), want %q", got.data, got.err, behind)
						}
					case <-time.After(5 * time.Second):
						t.Fatal("the upstream never got the bytes the app sent behind the handshake")
					}
					echo := make([]byte, len(behind))
					if _, err := io.ReadFull(br, echo); err != nil || string(echo) != behind {
						t.Fatalf("echo %q, %v", echo, err)
					}
					if got := u.seen(); len(got) != 1 || got[0] != first {
						t.Fatalf("upstream requests %q, want [%q]", got, first)
					}
					return
				}
				got := readUntilEOF(t, conn)
				resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
				if err != nil {
					t.Fatalf("answer %q: %v", got, err)
				}
				rest, _ := io.ReadAll(resp.Body)
				wantCode := c.code
				if c.code == 101 { // a switch to a protocol nobody asked for
					wantCode = http.StatusBadGateway
				}
				if resp.StatusCode != wantCode || !resp.Close {
					t.Errorf("answer %d (Connection %q), want %d with Connection: close", resp.StatusCode, resp.Header.Values("Connection"), wantCode)
				}
				if strings.Contains(got[len(got)-len(rest):], "HTTP/1.1") || bytes.Count([]byte(got), []byte("HTTP/1.1 ")) != 1 {
					t.Errorf("the app got more than one answer: %q", got)
				}
				if seen := u.seen(); len(seen) != 1 || seen[0] != first {
					t.Errorf("upstream requests %q, want only [%q]: the bytes behind the Upgrade were read as a request", seen, first)
				}
				if c.code == 101 {
					// The switched upstream connection is closed, not
					// left open (nor, ever, reused).
					select {
					case got := <-u.tunnel:
						if got.data != "" || !errors.Is(got.err, io.ErrUnexpectedEOF) && !errors.Is(got.err, io.EOF) {
							t.Errorf("the switched upstream connection got %q (%v), want it closed with nothing sent", got.data, got.err)
						}
					case <-time.After(5 * time.Second):
						t.Error("the switched upstream connection was left open")
					}
				}
			})
		}
	}
}

// TestUpgradePipelinedBytesTransparent: the same on a redirected
// connection (interception), which the handler serves as a proxy
// request's.
func TestUpgradePipelinedBytesTransparent(t *testing.T) {
	const behind = "GET /smuggled HTTP/1.1\r\nHost: geo\r\n\r\n"
	for _, code := range []int{101, 403} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			u, addr := newUpgradeUpstream(t, len(behind), func(r *http.Request) (int, string) {
				if r.Header.Get("Upgrade") == "" {
					return 200, ""
				}
				return code, "websocket"
			})
			rig := newRig(t, "", 0)
			conn, err := net.Dial("tcp", rig.redirectedServer(addr))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			io.WriteString(conn, "GET /up HTTP/1.1\r\nHost: geo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"+behind)
			if code == 101 {
				select {
				case got := <-u.tunnel:
					if got.data != behind || got.err != nil {
						t.Fatalf("the switched connection's first bytes: %q (%v), want %q", got.data, got.err, behind)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the upstream never got the bytes the app sent behind the handshake")
				}
				return
			}
			got := readUntilEOF(t, conn)
			if n := strings.Count(got, "HTTP/1.1 "); n != 1 || !strings.HasPrefix(got, "HTTP/1.1 403") || !strings.Contains(got, "Connection: close") {
				t.Errorf("the app got %q, want one 403 with Connection: close", got)
			}
			if seen := u.seen(); len(seen) != 1 {
				t.Errorf("upstream requests %q, want only the Upgrade", seen)
			}
		})
	}
}

// TestUnaskedSwitchPipelined: a 101 to a request that asked for no
// upgrade is the upstream's failure (502 reset) on both transports; the
// upstream's connection is closed, never reused with the switched bytes,
// and the app's next pipelined request, a legitimate one, is served
// apart on a new connection.
func TestUnaskedSwitchPipelined(t *testing.T) {
	for _, tr := range []struct {
		name string
		opt  sidecarOpt
	}{{"fast", withFastTransport()}, {"std", withStdTransport()}} {
		t.Run(tr.name, func(t *testing.T) {
			u, addr := newUpgradeUpstream(t, 1, func(r *http.Request) (int, string) {
				if r.URL.Path == "/first" {
					return 101, "websocket"
				}
				return 200, ""
			})
			sc := startSidecar(t, "", resolve(addr, geo), tr.opt)
			conn, err := net.Dial("tcp", sc.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, "GET http://"+geo+"/first HTTP/1.1\r\nHost: "+geo+"\r\n\r\nGET http://"+geo+"/second HTTP/1.1\r\nHost: "+geo+"\r\n\r\n")
			br := bufio.NewReader(conn)
			for i, want := range []int{http.StatusBadGateway, http.StatusOK} {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != want {
					t.Fatalf("answer %d: %d, want %d", i, resp.StatusCode, want)
				}
			}
			select {
			case got := <-u.tunnel:
				if got.data != "" || !errors.Is(got.err, io.EOF) {
					t.Errorf("the switched upstream connection got %q (%v), want it closed with nothing sent", got.data, got.err)
				}
			case <-time.After(5 * time.Second):
				t.Error("the switched upstream connection was left open")
			}
			if seen := u.seen(); len(seen) != 2 || !strings.HasPrefix(seen[1], "conn 2: GET /second") {
				t.Errorf("upstream requests %q, want /second on a connection of its own", seen)
			}
		})
	}
}
