// Command testapp is the application of the cluster end-to-end test, in an
// image of its own (static, no shell):
//
//	testapp serve ADDR [GRPC_ADDR]
//	                         answers every request with a JSON echo of it
//	                         naming its pod, and, on GRPC_ADDR, a gRPC
//	                         service that answers its pod's name (grpc.go);
//	                         on SIGTERM it serves 3 s more, then closes
//	                         its connections as they go idle (what an app
//	                         does for restarts without errors: endpoints
//	                         take a moment to forget a terminating pod)
//	testapp call URL ADDR    GETs URL twice a second through $HTTP_PROXY,
//	                         like an unmodified app in a pod; on ADDR, /ready
//	                         is 200 once the last call succeeded and /last
//	                         shows that call
//	testapp once URL         GETs URL through $HTTP_PROXY until it answers
//	                         200 (30 s at most), then exits: a Job
//	testapp agent URL ADDR   an app driven over HTTP (agent.go): calls
//	                         URL/start once at start, URL/term/$HOSTNAME
//	                         on SIGTERM, and on ADDR makes calls on request
//
// serve also has switchable failures and delay, and a hit counter
// (backend.go); the agent counts which pods answered a run of calls
// (spread.go).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: testapp serve ADDR [GRPC_ADDR] | call URL ADDR | once URL | agent URL ADDR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		grpcAddr := ""
		if len(os.Args) > 3 {
			grpcAddr = os.Args[3]
		}
		serve(os.Args[2], grpcAddr)
	case "agent":
		if len(os.Args) != 4 {
			os.Exit(2)
		}
		agent(os.Args[2], os.Args[3])
	case "once":
		once(os.Args[2])
	case "call":
		if len(os.Args) != 4 {
			os.Exit(2)
		}
		call(os.Args[2], os.Args[3])
	default:
		os.Exit(2)
	}
}

type result struct {
	Time    time.Time   `json:"time"`
	Status  int         `json:"status"`
	Error   string      `json:"error,omitempty"`
	Headers http.Header `json:"headers,omitempty"`
	Body    string      `json:"body,omitempty"`
	Calls   int         `json:"calls"`
	OK      int         `json:"ok"`
}

func once(url string) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			fmt.Printf("once: %d\n", resp.StatusCode)
			if resp.StatusCode == http.StatusOK {
				os.Exit(0)
			}
		} else {
			fmt.Printf("once: %v\n", err)
		}
		if time.Now().After(deadline) {
			os.Exit(1)
		}
	}
}

func call(url, addr string) {
	var mu sync.Mutex
	var last result
	go func() {
		client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
		for n := 1; ; n++ {
			r := result{Time: time.Now(), Calls: n}
			resp, err := client.Get(url)
			if err != nil {
				r.Error = err.Error()
			} else {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
				r.Status, r.Headers, r.Body = resp.StatusCode, resp.Header, string(b)
			}
			mu.Lock()
			r.OK = last.OK
			if r.Status == http.StatusOK {
				r.OK++
			}
			last = r
			mu.Unlock()
			fmt.Printf("call %d: %d %s\n", n, r.Status, r.Error)
			time.Sleep(500 * time.Millisecond)
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if last.Status != http.StatusOK {
			http.Error(w, fmt.Sprintf("last call: %d %s", last.Status, last.Error), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/last", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(last)
	})
	fmt.Fprintln(os.Stderr, http.ListenAndServe(addr, mux))
	os.Exit(1)
}
