package webhook

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/minimesh/minimesh/internal/connlimit"
)

// from is a dialer whose connections come from the loopback address ip,
// as from one peer (the whole of 127.0.0.0/8 is loopback on Linux).
func from(ip string) *net.Dialer {
	return &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
}

// TestIdleHoldersLetAdmissionsIn is the review probe's shape: 128
// keep-alive HTTPS clients made one cheap request each and keep their
// connection idle (a pod could refresh them every < 30 s); the API
// server's next connection must still be served. Before, the webhook's
// cap reset it, its admission failed and failurePolicy applied (Ignore:
// pods without a sidecar).
func TestIdleHoldersLetAdmissionsIn(t *testing.T) {
	for _, tt := range []struct {
		name       string
		addrs, per int // holders' peer addresses, connections each
	}{
		{"4 addresses holding their share", 4, DefaultMaxConnectionsPerSource},
		{"128 addresses holding one each", DefaultMaxConnections, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, w, a := serverWith(t, func(*Server) {})
			var trs []*http.Transport
			defer func() {
				for _, tr := range trs {
					tr.CloseIdleConnections()
				}
			}()
			for i := range tt.addrs {
				for range tt.per {
					tr := &http.Transport{
						DialContext:     from(fmt.Sprintf("127.0.%d.%d", 1+i/200, 2+i%200)).DialContext,
						TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 1,
					}
					trs = append(trs, tr)
					resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + w.String() + "/healthz")
					if err != nil {
						t.Fatalf("holder %d: %v", len(trs), err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			if n := s.webhookLn.Open(); n != DefaultMaxConnections {
				t.Fatalf("the holders hold %d connections, want every place (%d)", n, DefaultMaxConnections)
			}
			// The API server: a new client from its own address, which
			// keeps its connection (one eviction).
			body := review(t, "opted", admissionv1.Create, "Pod", pod(nil))
			tr := &http.Transport{DialContext: from("127.0.0.1").DialContext, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
			defer tr.CloseIdleConnections()
			for i := range 3 {
				resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("https://"+w.String()+"/inject", "application/json", bytes.NewReader(body))
				if err != nil {
					t.Fatalf("admission %d with every place held idle: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("admission %d: %d", i, resp.StatusCode)
				}
			}
			m := metrics(t, a)
			for _, want := range []string{"minimesh_injector_connections_evicted_total 1\n", "minimesh_injector_connections_refused_total 0\n"} {
				if !strings.Contains(m, want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
			if n := s.webhookLn.Open(); n > DefaultMaxConnections {
				t.Errorf("the listener holds %d connections, over its cap %d", n, DefaultMaxConnections)
			}
		})
	}
}

// TestConnStateUnderTLS: the webhook's ConnState hook reaches the
// listener's *connlimit.Conn under the *tls.Conn net/http hands it, so
// that Share tells an idle connection (to evict first) from a busy one.
// connlimit finds its Conn through Unwrap; a *tls.Conn has NetConn.
func TestConnStateUnderTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.New(ln.(*net.TCPListener), 1)
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hook := connState(l)
	for _, st := range []http.ConnState{http.StateActive, http.StateIdle} {
		hook(tls.Server(nc, &tls.Config{}), st)
		if got := nc.(*connlimit.Conn).State(); got != st {
			t.Errorf("after the hook saw %v under TLS, the connection's state is %v", st, got)
		}
	}
}

// TestAdminTimeBounds: the admin port closes a connection left idle after
// its answer at the idle timeout, and one whose request never finishes
// at the read timeout (short here). Before, it had neither: 2,000
// connections each after one GET /healthz stayed open for good.
func TestAdminTimeBounds(t *testing.T) {
	const limit = 200 * time.Millisecond
	_, _, a := serverWith(t, func(s *Server) { s.adminIdle, s.adminRead = limit, limit })
	for _, tt := range []struct {
		name, request string
		answered      bool
	}{
		{"idle after an answer", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"a body that never comes", "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", a.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			io.WriteString(c, tt.request)
			br := bufio.NewReader(c)
			if tt.answered {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			// Whatever else comes (an answer to the unfinished request),
			// then the close: EOF, not our 5 s deadline.
			_, err = io.Copy(io.Discard, br)
			if err != nil {
				if errors.Is(err, net.ErrClosed) || isTimeout(err) {
					t.Fatalf("the connection was still open after %v: %v", time.Since(start), err)
				}
			}
			if d := time.Since(start); d < limit {
				t.Errorf("closed after %v, before the %v limit", d, limit)
			}
		})
	}
}

// TestAdminShare: the admin port holds at most 64 connections, 16 from
// one peer address; with every place held idle (the probe's 2,000
// connections, here 64 from 4 addresses), the kubelet's probe from
// another address is answered, and one more from a holder's address is
// reset.
func TestAdminShare(t *testing.T) {
	s, _, a := serverWith(t, func(*Server) {})
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	get := func(d *net.Dialer) (net.Conn, error) { return heldHealthz(d, a.String()) }
	for i := range adminMaxConnections {
		c, err := get(from(fmt.Sprintf("127.0.0.%d", 2+i/adminMaxConnectionsPerSource)))
		if err != nil {
			t.Fatalf("holder %d: %v", i, err)
		}
		held = append(held, c)
	}
	if c, err := get(from("127.0.0.2")); err == nil {
		c.Close()
		t.Error("a 17th connection from one address was served, want it reset")
	}
	for i := range 3 {
		c, err := get(from("127.0.0.100"))
		if err != nil {
			t.Fatalf("probe %d with every place held: %v", i, err)
		}
		c.Close()
	}
	if n := s.adminLn.Open(); n > adminMaxConnections {
		t.Errorf("the admin listener holds %d connections, over its cap %d", n, adminMaxConnections)
	}
	// Each probe closes its connection; the next may find its place
	// free, or not yet.
	if ev, ref := s.adminLn.Evicted(), s.adminLn.Refused(); ev < 1 || ev > 3 || ref != 1 {
		t.Errorf("evicted %d, refused %d; want 1 to 3, and 1", ev, ref)
	}
}

// heldHealthz dials addr with d, is answered one GET /healthz on the
// connection, and returns it open: a connection held by a peer that
// waits (idle after its answer).
func heldHealthz(d *net.Dialer, addr string) (net.Conn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	resp.Body.Close()
	return c, nil
}
