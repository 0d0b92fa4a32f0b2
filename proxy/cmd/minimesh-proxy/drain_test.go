package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestSIGTERMKeepAlivePOSTs: a load of POSTs with bodies on keep-alive
// connections from several goroutines, and SIGTERM in the middle. No
// request that was written on a connection may fail: the only failure
// allowed is "connection refused" on a new connection, once the listener
// has closed (never sent, so safe for the client to retry).
func TestSIGTERMKeepAlivePOSTs(t *testing.T) {
	const (
		rounds    = 4
		workers   = 8
		perWorker = 2000 // bound per worker and round
		warmup    = 150  // requests answered before SIGTERM
	)
	u := newUpstream(t)
	var total, lost, refused int
	var lostErrs []string
	for round := range rounds {
		p := local(t, "--resolve", geo+"="+u.addr(), "--access-log", "off")
		tr := &http.Transport{
			Proxy:               http.ProxyURL(&url.URL{Scheme: "http", Host: p.outbound}),
			MaxIdleConnsPerHost: workers,
		}
		client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
		var (
			answered atomic.Int64
			mu       sync.Mutex
			wg       sync.WaitGroup
		)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for range perWorker {
					body := make([]byte, 1+rng.IntN(64<<10))
					for i := range body {
						body[i] = byte(rng.Uint32())
					}
					sum := sha256.Sum256(body)
					want := fmt.Sprintf("POST %d %s", len(body), hex.EncodeToString(sum[:]))
					got, err := post(client, "http://"+geo+"/echo", body)
					mu.Lock()
					total++
					switch {
					case errors.Is(err, syscall.ECONNREFUSED):
						refused++
						mu.Unlock()
						return // the sidecar is gone: stop, as a client would
					case err != nil:
						lost++
						lostErrs = append(lostErrs, err.Error())
					case got != want:
						lost++
						lostErrs = append(lostErrs, "wrong answer: "+got)
					}
					mu.Unlock()
					answered.Add(1)
				}
			}()
		}
		// SIGTERM in the middle of the load, at a point that varies by round.
		target := int64(warmup + round*37)
		deadline := time.Now().Add(20 * time.Second)
		for answered.Load() < target && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.wait(t, 15*time.Second); code != 0 {
			t.Errorf("round %d: exit status %d, want 0", round, code)
		}
		wg.Wait()
		tr.CloseIdleConnections()
	}
	t.Logf("%d rounds: %d POSTs, %d lost, %d refused on a new connection after the listener closed", rounds, total, lost, refused)
	if lost > 0 {
		if len(lostErrs) > 10 {
			lostErrs = lostErrs[:10]
		}
		t.Errorf("%d of %d POSTs lost during the drain; first errors: %q", lost, total, lostErrs)
	}
	if refused == 0 {
		t.Errorf("no POST was refused: the load did not outlive the drain")
	}
}

// post sends body and returns the answer's body; a non-200 is an error.
func post(c *http.Client, url string, body []byte) (string, error) {
	resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// TestSecondSignalEndsDrain: a SIGTERM (or SIGINT) during the drain ends
// it at once, as the drain timeout would: the kubelet sends SIGTERM again
// when the pod's grace period is shortened, and a second Ctrl-C means now.
// The tunnel still open is closed and recorded (error shutdown), and the
// process exits 0 long before --drain-timeout. (The second signal was
// ignored: the process ran out the whole drain.)
func TestSecondSignalEndsDrain(t *testing.T) {
	echo, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
	for _, second := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(second.String(), func(t *testing.T) {
			p := local(t, "--resolve", geo+"="+echo, "--drain-timeout", "1m")
			c, err := net.DialTimeout("tcp", p.outbound, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(c)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", geo, geo)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
				return strings.Contains(p.log.String(), `"msg":"draining"`)
			}) {
				t.Fatal("no drain after SIGTERM")
			}
			// The tunnel still works during the drain.
			fmt.Fprint(c, "ping\n")
			if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
				t.Fatalf("tunnel during the drain: %q %v", line, err)
			}
			sent := time.Now()
			if err := p.cmd.Process.Signal(second); err != nil {
				t.Fatal(err)
			}
			if code := p.wait(t, 15*time.Second); code != 0 {
				t.Fatalf("exit status %d, want 0", code)
			}
			if took := time.Since(sent); took > 5*time.Second {
				t.Errorf("exit took %v after the second signal, want about 0", took)
			}
			if _, err := br.ReadByte(); err == nil {
				t.Error("the tunnel is still open after the sidecar exited")
			}
			if l := p.log.String(); !strings.Contains(l, `"method":"CONNECT"`) || !strings.Contains(l, `"error":"shutdown"`) {
				t.Error("no access log line of the tunnel with error shutdown")
			}
		})
	}
}
