package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// spreadResult is what /spread measured: which pods answered, how often,
// and the calls' latency as the app saw it.
type spreadResult struct {
	Start        time.Time           `json:"start"`
	Seconds      float64             `json:"seconds"`
	Calls        int                 `json:"calls"`
	OK           int                 `json:"ok"`
	Errors       int                 `json:"errors"`
	Statuses     map[string]int      `json:"statuses"`
	ErrorSamples []string            `json:"errorSamples,omitempty"`
	Pods         map[string]*podStat `json:"pods"`
	P50Ms        float64             `json:"p50Ms"`
	P90Ms        float64             `json:"p90Ms"`
	P99Ms        float64             `json:"p99Ms"`
	MaxMs        float64             `json:"maxMs"`
}

// podStat is one pod's part of a spread: its answers (any status), those
// that were 200 or OK, the first and last of them, and their mean latency.
type podStat struct {
	Count  int       `json:"count"`
	OK     int       `json:"ok"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
	MeanMs float64   `json:"meanMs"`
}

type spreadOptions struct {
	grpc, direct, newConn bool
	target                string // a URL, or host:port for gRPC
	via                   string // the sidecar's address for gRPC (default from HTTP_PROXY)
	n, conc, rps          int
	d                     time.Duration
}

// serveSpread is /spread: calls to one destination from one client, either
//
//	url=U            GETs of U with one net/http client: one keep-alive
//	                 connection per worker, through $HTTP_PROXY (the
//	                 sidecar) unless direct=1; newconn=1: a new connection
//	                 for every call
//	grpc=1&target=T  calls of testapp.Who/Name on one grpc-go channel (one
//	                 HTTP/2 connection), to the sidecar's outbound address
//	                 (host:port of $HTTP_PROXY, or via=ADDR) with :authority
//	                 T (h2c with prior knowledge, docs/grpc.md), or to T
//	                 itself when direct=1
//
// n=N calls (at most 200,000) or seconds=S (at most 60), whichever comes
// first when both are given, from conc=C
// workers (default 1: one call after the other), at most rps=R calls a
// second in all (default: as fast as they come back). Each call has 5 s.
// It answers a spreadResult: each pod (the backend's X-Pod header, or its
// gRPC answer) with its count, first and last answer, and the latency
// percentiles of all calls.
func serveSpread(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	o := spreadOptions{grpc: q.Get("grpc") == "1", direct: q.Get("direct") == "1", newConn: q.Get("newconn") == "1",
		target: q.Get("url"), via: q.Get("via"), conc: 1}
	if o.grpc {
		o.target = q.Get("target")
	}
	atoi := func(name string, lo, hi int, into *int) bool {
		if v := q.Get(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < lo || n > hi {
				http.Error(w, fmt.Sprintf("%s: %d-%d", name, lo, hi), http.StatusBadRequest)
				return false
			}
			*into = n
		}
		return true
	}
	var secs int
	if !atoi("n", 1, 200000, &o.n) || !atoi("seconds", 1, 60, &secs) || !atoi("conc", 1, 64, &o.conc) || !atoi("rps", 1, 10000, &o.rps) {
		return
	}
	o.d = time.Duration(secs) * time.Second
	if o.target == "" || (o.n == 0 && o.d == 0) {
		http.Error(w, "url (or grpc=1&target) and n, seconds or both", http.StatusBadRequest)
		return
	}
	if o.d == 0 {
		o.d = 60 * time.Second
	}
	if o.n == 0 {
		o.n = 1 << 30
	}
	call, closeFn, err := o.caller()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	defer closeFn()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(spread(o, call))
}

// a caller makes one call and returns the pod that answered (or ""), the
// outcome's name ("200", "503", "OK", "Unavailable", "error") and whether
// it succeeded.
type caller func(ctx context.Context) (pod, outcome string, ok bool, err error)

func (o spreadOptions) caller() (caller, func(), error) {
	if !o.grpc {
		tr := &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: o.conc, DisableKeepAlives: o.newConn}
		if o.direct {
			tr.Proxy = nil
		}
		c := &http.Client{Transport: tr}
		return func(ctx context.Context) (string, string, bool, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.target, nil)
			if err != nil {
				return "", "error", false, err
			}
			resp, err := c.Do(req)
			if err != nil {
				return "", "error", false, err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.Header.Get(podHeader), strconv.Itoa(resp.StatusCode), resp.StatusCode == http.StatusOK, nil
		}, tr.CloseIdleConnections, nil
	}
	addr, opts := o.target, []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy()}
	if !o.direct {
		addr = o.via
		if addr == "" {
			addr = sidecarAddr()
		}
		if addr == "" {
			return nil, nil, fmt.Errorf("no HTTP_PROXY for the sidecar's address, and no via")
		}
		opts = append(opts, grpc.WithAuthority(o.target))
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context) (string, string, bool, error) {
		pod, err := callWho(ctx, cc)
		if err != nil {
			return pod, status.Code(err).String(), false, err
		}
		return pod, "OK", true, nil
	}, func() { cc.Close() }, nil
}

// sidecarAddr is host:port of $HTTP_PROXY.
func sidecarAddr() string {
	for _, k := range []string{"HTTP_PROXY", "http_proxy"} {
		if v := os.Getenv(k); v != "" {
			if u, err := url.Parse(v); err == nil {
				return u.Host
			}
		}
	}
	return ""
}

func spread(o spreadOptions, call caller) spreadResult {
	res := spreadResult{Start: time.Now(), Statuses: map[string]int{}, Pods: map[string]*podStat{}}
	var mu sync.Mutex
	var lat []float64
	sums := map[string]float64{}
	end := res.Start.Add(o.d)
	var tick <-chan time.Time
	if o.rps > 0 {
		t := time.NewTicker(time.Second / time.Duration(o.rps))
		defer t.Stop()
		tick = t.C
	}
	tickets := make(chan struct{})
	go func() {
		defer close(tickets)
		for i := 0; i < o.n && time.Now().Before(end); i++ {
			if tick != nil {
				<-tick
			}
			tickets <- struct{}{}
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < o.conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tickets {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				t0 := time.Now()
				pod, outcome, ok, err := call(ctx)
				t1 := time.Now()
				cancel()
				ms := float64(t1.Sub(t0).Microseconds()) / 1000
				mu.Lock()
				res.Calls++
				lat = append(lat, ms)
				res.Statuses[outcome]++
				if ok {
					res.OK++
				} else {
					res.Errors++
					if len(res.ErrorSamples) < 5 {
						s := outcome
						if err != nil {
							s += ": " + err.Error()
						}
						res.ErrorSamples = append(res.ErrorSamples, s+" (pod "+pod+")")
					}
				}
				if pod != "" {
					p := res.Pods[pod]
					if p == nil {
						p = &podStat{First: t1}
						res.Pods[pod] = p
					}
					p.Count++
					if ok {
						p.OK++
					}
					p.Last = t1
					sums[pod] += ms
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(res.Start).Seconds()
	for pod, p := range res.Pods {
		p.MeanMs = sums[pod] / float64(p.Count)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	res.P50Ms, res.P90Ms, res.P99Ms, res.MaxMs = pct(0.50), pct(0.90), pct(0.99), pct(1)
	return res
}
