//go:build probe

package outbound_test

import (
	"bufio"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestProbeH2_LentStress: many app connections through the lean loop,
// each request with its own path and ID, in the ways that lend a
// request's bundle to the next (keep-alive, pipelining, slow requests
// that get watched, clients that leave); every answer must be its own
// request's. Run with -race.
func TestProbeH2_LentStress(t *testing.T) {
	runLentStress(t, "")
}

// TestProbeH2_LentStressPolicy: the same with a timeout (the fast
// transport's deadlines), retries (a first 503 for some paths) and a
// per-try timeout.
func TestProbeH2_LentStressPolicy(t *testing.T) {
	runLentStress(t, policyDoc("geo", "geo-service", `
timeout: 3s
retries: {attempts: 2, perTryTimeout: 1s, retryOn: [reset, "503"], backoff: {base: 1ms, max: 2ms}}
`))
}

// TestProbeH2_LentStressTraced: the same with every request traced: the
// trace each request's access log line names is the one its tries
// carried upstream.
func TestProbeH2_LentStressTraced(t *testing.T) {
	runLentStress(t, "", func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = "127.0.0.1:1", 1 })
}

func runLentStress(t *testing.T, policy string, opts ...sidecarOpt) {
	var seen sync.Map
	var traces sync.Map // request ID -> traceparent's trace ID
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		if policy != "" && strings.HasSuffix(r.URL.Path, "1") {
			if _, again := seen.LoadOrStore(r.URL.Path+r.Header.Get("X-Request-Id"), true); !again {
				w.WriteHeader(503)
				return
			}
		}
		if strings.Contains(r.URL.Path, "slow") {
			select {
			case <-time.After(150 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		id := r.Header.Get("X-Request-Id")
		if tp := r.Header.Get("Traceparent"); tp != "" {
			if parts := strings.Split(tp, "-"); len(parts) == 4 {
				if old, loaded := traces.LoadOrStore(id, parts[1]); loaded && old != parts[1] {
					t.Errorf("request %s: tries carried traces %s and %s", id, old, parts[1])
				}
			}
		}
		w.Header().Set("X-Echo-Path", r.URL.Path)
		w.Header().Set("X-Echo-Id", id)
		w.Header().Set("X-Echo-Via", strings.Join(r.Header.Values("Via"), ","))
		_, _ = io.WriteString(w, r.URL.Path+"|"+id)
	})
	al := &accessLog{}
	sc := startSidecar(t, policy, resolve(u.Host(), geo), append([]sidecarOpt{withServer(sidecar.ServerLean), withAccessLog(al)}, opts...)...)

	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	fail := func(f string, a ...any) {
		mu.Lock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(f, a...))
		}
		mu.Unlock()
	}
	const workers, rounds = 6, 60
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			var c net.Conn
			var br *bufio.Reader
			redial := func() {
				if c != nil {
					c.Close()
				}
				var err error
				c, err = net.Dial("tcp", sc.Addr)
				if err != nil {
					fail("dial: %v", err)
					return
				}
				br = bufio.NewReader(c)
			}
			redial()
			defer func() { c.Close() }()
			head := func(method, path, id string) string {
				return method + " http://" + geo + path + " HTTP/1.1\r\nHost: " + geo + "\r\nX-Request-Id: " + id + "\r\nUser-Agent: w" + fmt.Sprint(g) + "\r\n\r\n"
			}
			check := func(method, path, id string) bool {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				resp, err := http.ReadResponse(br, &http.Request{Method: method})
				if err != nil {
					fail("w%d %s %s: %v", g, method, path, err)
					return false
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					fail("w%d %s %s: body: %v", g, method, path, err)
					return false
				}
				if resp.StatusCode != 200 || resp.Header.Get("X-Echo-Path") != path || resp.Header.Get("X-Echo-Id") != id || resp.Header.Get("X-Request-Id") != id {
					fail("w%d %s %s id %s: got %d %v body %q", g, method, path, id, resp.StatusCode, resp.Header, body)
					return false
				}
				if method != http.MethodHead && string(body) != path+"|"+id {
					fail("w%d %s %s: body %q", g, method, path, body)
					return false
				}
				if resp.Close {
					redial()
				}
				return true
			}
			for i := 0; i < rounds; i++ {
				p := fmt.Sprintf("/w%d/r%d", g, i)
				id := fmt.Sprintf("id-%d-%d", g, i)
				switch r.Intn(7) {
				case 0, 1: // plain
					_, _ = io.WriteString(c, head("GET", p, id))
					if !check("GET", p, id) {
						redial()
					}
				case 2: // pipelined pair
					p2, id2 := p+"b", id+"b"
					_, _ = io.WriteString(c, head("GET", p, id)+head("HEAD", p2, id2))
					if !check("GET", p, id) || !check("HEAD", p2, id2) {
						redial()
					}
				case 3: // slow: watched
					p = p + "/slow"
					_, _ = io.WriteString(c, head("GET", p, id))
					if !check("GET", p, id) {
						redial()
					}
				case 4: // slow, next head sent while it runs
					p = p + "/slow"
					p2, id2 := p+"/next", id+"n"
					_, _ = io.WriteString(c, head("GET", p, id))
					time.Sleep(120 * time.Millisecond)
					_, _ = io.WriteString(c, head("GET", p2, id2))
					if !check("GET", p, id) || !check("GET", p2, id2) {
						redial()
					}
				case 5: // leaves during a slow request
					_, _ = io.WriteString(c, head("GET", p+"/slow", id))
					time.Sleep(time.Duration(r.Intn(140)) * time.Millisecond)
					redial()
				case 6: // OPTIONS then GET in two writes
					_, _ = io.WriteString(c, head("OPTIONS", p, id))
					if !check("OPTIONS", p, id) {
						redial()
						continue
					}
					_, _ = io.WriteString(c, head("GET", p+"x", id+"x"))
					if !check("GET", p+"x", id+"x") {
						redial()
					}
				}
			}
		}(g)
	}
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	time.Sleep(400 * time.Millisecond)
	for _, e := range al.entries(t) {
		if !strings.HasPrefix(e.Path, "/w") || !strings.HasPrefix(e.RequestID, "id-") {
			t.Errorf("access log entry of another kind: %+v", e)
			continue
		}
		// The path names the worker and round; the ID must be that
		// request's.
		var g, i int
		if _, err := fmt.Sscanf(e.Path, "/w%d/r%d", &g, &i); err != nil {
			t.Errorf("path %q", e.Path)
			continue
		}
		if want := fmt.Sprintf("id-%d-%d", g, i); !strings.HasPrefix(e.RequestID, want) {
			t.Errorf("access log: path %s logged with request ID %s", e.Path, e.RequestID)
		}
		if tr, ok := traces.Load(e.RequestID); ok && e.TraceID != tr {
			t.Errorf("access log: request %s logged with trace %s, its tries carried %s", e.RequestID, e.TraceID, tr)
		}
	}
}
