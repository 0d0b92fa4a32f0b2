package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// destinations the clients call, with their share of the requests (in
// percent) and what they do.
var destinations = []struct {
	host  string
	share int
}{
	{"svc-ok:8000", 30},      // answers
	{"svc-turn:8000", 30},    // ok, reset, hang, slow, refused in turn
	{"svc-slow:8000", 10},    // slow body
	{"svc-reset:8000", 10},   // reset mid-response
	{"svc-hang:8000", 10},    // headers, then nothing
	{"svc-refused:8000", 10}, // nothing listens
}

// tally counts what the clients sent and what they got.
type tally struct {
	started atomic.Int64 // requests begun
	wrote   atomic.Int64 // tries whose headers were written (a retry on a new connection counts again)

	mu         sync.Mutex
	outcomes   map[string]int // "200", "502 connect-failure", "truncated", "cancelled", "transport error"
	answered   int            // responses with a status, cut bodies included
	okWhole    int            // 2xx read to their end
	failures   int            // responses with a status >= 400
	truncated  int            // 2xx whose body ended in an error, not cancelled by the client
	unanswered int            // no status: cancelled or a transport error
	violations []string       // answers that break the contract (first 20)
	nViolation int
}

func newTally() *tally { return &tally{outcomes: map[string]int{}} }

func (t *tally) violation(format string, args ...any) {
	t.nViolation++
	if len(t.violations) < 20 {
		t.violations = append(t.violations, fmt.Sprintf(format, args...))
	}
}

// mix is the error mix, most frequent first.
func (t *tally) mix() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([]string, 0, len(t.outcomes))
	for k := range t.outcomes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return t.outcomes[keys[i]] > t.outcomes[keys[j]] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %d; ", k, t.outcomes[k])
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// contractKinds is, by status, the X-Minimesh-Error values the sidecar's
// own answers may carry (docs/operations.md).
var contractKinds = map[int]string{
	400: "bad-request", 403: "forbidden", 408: "bad-request", 413: "bad-request",
	502: "connect-failure reset", 503: "circuit-open", 504: "timeout", 508: "loop",
}

// client is one app worker: its own keep-alive connections to the
// sidecar, and its own random sequence.
type client struct {
	http *http.Client
	tr   *http.Transport
	rnd  *rand.Rand
	t    *tally
}

func newClient(proxy string, seed uint64, t *tally) *client {
	u := &url.URL{Scheme: "http", Host: proxy}
	tr := &http.Transport{Proxy: http.ProxyURL(u), MaxIdleConnsPerHost: 4, DisableCompression: true}
	return &client{
		http: &http.Client{Transport: tr, Timeout: 15 * time.Second},
		tr:   tr,
		rnd:  rand.New(rand.NewPCG(seed, seed*7919+1)),
		t:    t,
	}
}

// slowBody sends n bytes in 5 pieces, 20 ms apart.
type slowBody struct {
	left, piece int
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(20 * time.Millisecond)
	n := min(len(p), b.piece, b.left)
	for i := range n {
		p[i] = 's'
	}
	b.left -= n
	return n, nil
}

// one sends one request, chosen at random, and records its outcome.
func (c *client) one(ctx context.Context) {
	r := c.rnd
	dest := pick(r)
	method := http.MethodGet
	var body io.Reader
	var length int64
	if r.IntN(100) < 40 {
		method = http.MethodPost
		length = int64(512 + r.IntN(64<<10))
		if r.IntN(100) < 20 {
			body = &slowBody{left: int(length), piece: int(length/5) + 1}
		} else {
			body = bytes.NewReader(bytes.Repeat([]byte("b"), int(length)))
		}
	}
	if r.IntN(100) < 10 {
		// The app gives up after 20 to 300 ms, mid-request or mid-body.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(20+r.IntN(280))*time.Millisecond)
		defer cancel()
	}
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: func() { c.t.wrote.Add(1) }})
	req, err := http.NewRequestWithContext(ctx, method, "http://"+dest+"/soak/"+strconv.Itoa(r.IntN(1000)), body)
	if err != nil {
		panic(err)
	}
	if body != nil {
		req.ContentLength = length
		if r.IntN(2) == 0 {
			req.Header.Set("Idempotency-Key", strconv.FormatUint(r.Uint64(), 16))
		}
	}
	c.t.started.Add(1)
	resp, err := c.http.Do(req)
	t := c.t
	if err != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.unanswered++
		switch {
		case ctx.Err() != nil:
			t.outcomes["cancelled"]++
		case cuts[dest] && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)):
			// An upstream response cut before the sidecar had flushed
			// any of it ends the connection without an answer
			// (docs/operations.md, "A response that fails after its
			// headers").
			t.outcomes["no answer (cut before flush)"]++
		default:
			t.outcomes["transport error"]++
			t.violation("%s %s: no answer: %v", method, dest, err)
		}
		return
	}
	data, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	kind := resp.Header.Get("X-Minimesh-Error")
	t.mu.Lock()
	defer t.mu.Unlock()
	t.answered++
	key := strconv.Itoa(resp.StatusCode)
	if kind != "" {
		key += " " + kind
	}
	switch {
	case rerr != nil && ctx.Err() != nil:
		t.outcomes["cancelled (body)"]++
	case rerr != nil:
		t.outcomes[key+" truncated"]++
		if resp.StatusCode < 400 {
			t.truncated++
		}
	default:
		t.outcomes[key]++
	}
	if resp.StatusCode >= 400 {
		t.failures++
	} else if rerr == nil {
		t.okWhole++
	}
	if resp.Header.Get("X-Request-ID") == "" {
		t.violation("%s %s: %s without X-Request-ID", method, dest, resp.Status)
	}
	if kind != "" {
		if !strings.Contains(contractKinds[resp.StatusCode], kind) {
			t.violation("%s %s: status %d with X-Minimesh-Error %s is not in the contract", method, dest, resp.StatusCode, kind)
		}
		var e struct {
			Error     string `json:"error"`
			RequestID string `json:"requestId"`
		}
		if rerr != nil || json.Unmarshal(data, &e) != nil || e.Error != kind || e.RequestID != resp.Header.Get("X-Request-ID") {
			t.violation("%s %s: sidecar answer %s with body %q", method, dest, resp.Status, data)
		}
	} else if resp.Header.Get("X-Upstream") == "" {
		t.violation("%s %s: %s from neither the sidecar nor an upstream: %q", method, dest, resp.Status, data)
	}
}

// cuts are the destinations that may cut a response short.
var cuts = map[string]bool{"svc-reset:8000": true, "svc-turn:8000": true}

func pick(r *rand.Rand) string {
	n := r.IntN(100)
	for _, d := range destinations {
		if n < d.share {
			return d.host
		}
		n -= d.share
	}
	return destinations[0].host
}

// runLoad sends requests from the clients until budget requests have
// been started or stop ends; requests in flight then finish.
func runLoad(stop context.Context, clients []*client, budget int64) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for stop.Err() == nil && next.Add(1) <= budget {
				c.one(context.Background())
			}
		}()
	}
	wg.Wait()
}
