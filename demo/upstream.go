package main

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"sync"
	"time"
)

// mode is how the stand-in for Nominatim behaves at a given moment.
type mode int

const (
	healthy    mode = iota // answers 200 with a result
	overloaded             // answers 503 at once
	hanging                // accepts the request and never answers
	hiccup                 // answers 503 to the next hiccupFailures requests, then 200
	numModes
)

// hiccupFailures is fewer than the policy's consecutiveFailures: a hiccup
// must not open the breaker.
const hiccupFailures = 3

func (m mode) String() string {
	switch m {
	case overloaded:
		return "503"
	case hanging:
		return "hangs"
	case hiccup:
		return fmt.Sprintf("%d×503", hiccupFailures)
	}
	return "healthy"
}

// outage says whether the mode is nominatim being down (as opposed to
// healthy, or a hiccup the breaker should ride out).
func (m mode) outage() bool { return m == overloaded || m == hanging }

// answer is what nominatim did with a request that reached it.
type answer int

const (
	answered200 answer = iota
	answered503
	leftHanging
	numAnswers
)

// phase is one step of the upstream's script: from At (since the start of
// the story) on, it behaves as Mode.
type phase struct {
	At     time.Duration
	Mode   mode
	Banner string
}

// story is the timeline of the demo, scaled to its duration.
type story struct {
	Duration    time.Duration
	OpenTimeout time.Duration // the breaker's, in the policy
	Phases      []phase
}

// searchTime is the least time the stand-in takes to answer a search.
const searchTime = 30 * time.Millisecond

// baseDuration is the length of the story as designed; other durations
// scale every moment of it, and the breaker's open timeout with it.
const baseDuration = 50 * time.Second

// minDuration keeps the scaled phases long enough for the breaker's fixed
// numbers (5 failures, one request every 300 ms, a 2 s timeout).
const minDuration = 20 * time.Second

// newStory lays out the script for a run of duration d (at 50 s):
//
//	 0 s  healthy
//	 6 s  503 to everything       → 5 failures open the breaker (~7.5 s),
//	                                 half-open probes fail and re-open it
//	18 s  hangs without answering → the half-open probe meets the 2 s timeout
//	24 s  healthy again           → the next probes succeed, breaker closes (~30 s)
//	40 s  a hiccup: three 503s    → fewer than 5 in a row: the breaker stays closed
//	50 s  stop
func newStory(d time.Duration) story {
	s := float64(d) / float64(baseDuration)
	at := func(sec float64) time.Duration {
		return time.Duration(sec * s * float64(time.Second)).Round(100 * time.Millisecond)
	}
	return story{
		Duration:    d,
		OpenTimeout: at(5),
		Phases: []phase{
			{0, healthy, "nominatim is healthy: the tenant registers bakeries, the sidecar passes requests through"},
			{at(6), overloaded, "nominatim is overloaded: it answers 503 to every request"},
			{at(18), hanging, "nominatim hangs: it accepts requests and never answers (the policy's 2s timeout cuts them)"},
			{at(24), healthy, "nominatim has recovered: it answers 200 again"},
			{at(40), hiccup, fmt.Sprintf("nominatim hiccups: its next %d answers are 503 (fewer than 5 in a row: the breaker should stay closed)", hiccupFailures)},
		},
	}
}

// modeAt is the script's mode at elapsed time t.
func (st story) modeAt(t time.Duration) mode {
	m := healthy
	for _, p := range st.Phases {
		if t >= p.At {
			m = p.Mode
		}
	}
	return m
}

// nominatim is the flaky stand-in for nominatim-service:8000. It answers
// GET /search?q=... like Nominatim's JSON format (a small array of places),
// follows the story's script, and counts every request that reaches it, so
// that the demo can prove which requests never left the sidecar.
type nominatim struct {
	story story
	srv   *http.Server
	addr  string

	mu         sync.Mutex
	start      time.Time // zero until begin: healthy before the story starts
	hiccupLeft int
	hits       [numModes]int   // requests that reached it, by the script's mode
	answers    [numAnswers]int // the same, by what it answered
	seenID     map[string]bool // X-Request-ID of every request that arrived
}

func startNominatim(st story) (*nominatim, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n := &nominatim{story: st, addr: ln.Addr().String(), seenID: map[string]bool{}, hiccupLeft: hiccupFailures}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /search", n.search)
	n.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go n.srv.Serve(ln)
	return n, nil
}

// begin starts the script's clock.
func (n *nominatim) begin(t time.Time) {
	n.mu.Lock()
	n.start = t
	n.mu.Unlock()
}

func (n *nominatim) close() { n.srv.Close() }

func (n *nominatim) search(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	m := healthy
	if !n.start.IsZero() {
		m = n.story.modeAt(time.Since(n.start))
	}
	n.hits[m]++
	if id := r.Header.Get("X-Request-ID"); id != "" {
		n.seenID[id] = true
	}
	a := answered200
	switch {
	case m == overloaded:
		a = answered503
	case m == hanging:
		a = leftHanging
	case m == hiccup && n.hiccupLeft > 0:
		n.hiccupLeft--
		a = answered503
	}
	n.answers[a]++
	n.mu.Unlock()

	switch a {
	case answered503:
		time.Sleep(5 * time.Millisecond) // a quick refusal
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, `{"error":"nominatim overloaded, try again later"}`)
		return
	case leftHanging:
		// Never answer; give up only when the caller does (the sidecar's
		// timeout closes the connection) or the demo shuts down.
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
		return
	}
	q := r.URL.Query().Get("q")
	h := fnv.New32a()
	h.Write([]byte(q))
	v := h.Sum32()
	// A search takes a while, like a real geocoder's: 30–50 ms.
	time.Sleep(searchTime + time.Duration(v%20)*time.Millisecond)
	lat := 40.38 + float64(v%1000)/10000 // somewhere in Madrid
	lon := -3.74 + float64(v/1000%1000)/10000
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode([]map[string]any{{
		"place_id":     v,
		"lat":          fmt.Sprintf("%.5f", lat),
		"lon":          fmt.Sprintf("%.5f", lon),
		"display_name": q,
		"type":         "bakery",
	}})
}

// counts returns the requests that reached nominatim so far, by the
// script's mode and by what it answered.
func (n *nominatim) counts() ([numModes]int, [numAnswers]int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hits, n.answers
}

// hiccupDone reports whether nominatim gave all its hiccup's 503s.
func (n *nominatim) hiccupDone() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hiccupLeft == 0
}

// saw reports whether a request with this X-Request-ID reached nominatim.
func (n *nominatim) saw(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seenID[id]
}
