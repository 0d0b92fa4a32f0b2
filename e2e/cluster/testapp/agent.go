package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// agent is an app whose calls the test makes over HTTP on addr:
//
//	/ready                       200
//	/get?url=U[&direct=1]        one GET of U through $HTTP_PROXY (direct:
//	                             without it, e.g. the sidecar's loopback
//	                             admin port); answers a result
//	/load?url=U&rps=N&seconds=S  GETs of U through $HTTP_PROXY at N a
//	                             second for S seconds (N ≤ 2,000, S ≤ 30);
//	                             answers the counts
//	/spread?…                    calls from one HTTP/1.1 keep-alive client
//	                             or one gRPC channel, counted by the pod
//	                             that answered (spread.go)
//
// At start it GETs base/start once, without retrying, and logs the answer
// ("start: 200"): the sidecar must be serving before the app starts. On
// SIGTERM it GETs base/term/$HOSTNAME once on a new connection, logs the
// answer ("term: 200") and exits: the sidecar must still be serving while
// the app terminates.
func agent(base, addr string) {
	proxied := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64}}
	direct := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

	r := do(proxied, base+"/start")
	fmt.Printf("start: %d %s\n", r.Status, r.Error)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		host, _ := os.Hostname()
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment, DisableKeepAlives: true}}
		r := do(c, base+"/term/"+host)
		fmt.Printf("term: %d %s\n", r.Status, r.Error)
		os.Exit(0)
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/get", func(w http.ResponseWriter, req *http.Request) {
		c := proxied
		if req.URL.Query().Get("direct") == "1" {
			c = direct
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(do(c, req.URL.Query().Get("url")))
	})
	mux.HandleFunc("/load", func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		rps, _ := strconv.Atoi(q.Get("rps"))
		secs, _ := strconv.Atoi(q.Get("seconds"))
		if rps < 1 || rps > 2000 || secs < 1 || secs > 30 {
			http.Error(w, "rps 1-2000, seconds 1-30", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(load(proxied, q.Get("url"), rps, time.Duration(secs)*time.Second))
	})
	mux.HandleFunc("/spread", serveSpread)
	fmt.Fprintln(os.Stderr, http.ListenAndServe(addr, mux))
	os.Exit(1)
}

func do(c *http.Client, url string) result {
	r := result{Time: time.Now(), Calls: 1}
	resp, err := c.Get(url)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r.Status, r.Headers, r.Body = resp.StatusCode, resp.Header, string(b)
	if r.Status == http.StatusOK {
		r.OK = 1
	}
	return r
}

type loadResult struct {
	Sent    int64   `json:"sent"`
	OK      int64   `json:"ok"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
}

// load sends rps GETs a second for d, from a few workers that take a
// ticket each 1/rps; a ticket that finds every worker busy is dropped (not
// queued), so the load stays bounded in count and time.
func load(c *http.Client, url string, rps int, d time.Duration) loadResult {
	var res loadResult
	tickets := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tickets {
				atomic.AddInt64(&res.Sent, 1)
				resp, err := c.Get(url)
				if err != nil {
					atomic.AddInt64(&res.Errors, 1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					atomic.AddInt64(&res.OK, 1)
				} else {
					atomic.AddInt64(&res.Errors, 1)
				}
			}
		}()
	}
	t0 := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rps))
	for n := 0; n < rps*int(d/time.Second) && time.Since(t0) < d+time.Second; n++ {
		<-tick.C
		select {
		case tickets <- struct{}{}:
		default:
		}
	}
	tick.Stop()
	close(tickets)
	wg.Wait()
	res.Seconds = time.Since(t0).Seconds()
	return res
}
