package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
