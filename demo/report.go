package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// outcome is one geocoding request of the tenant.
type outcome struct {
	N       int
	Bakery  string
	At      time.Duration // sent, since the start of the story
	Done    time.Duration // answered, since the start
	Mode    mode          // nominatim's scripted behaviour when it was sent
	SentID  string        // X-Request-ID the tenant sent ("" for none)
	RespID  string        // X-Request-ID of the response
	Status  int
	MeshErr string // X-Minimesh-Error of the response
	Latency time.Duration
	Places  []place
	Err     error // transport error seen by the tenant

	Breaker    *breakerView // right after the response
	BreakerErr error
}

func (o *outcome) fastFail() bool { return o.Err == nil && o.MeshErr == "circuit-open" }

// tracker follows the breaker's state as the demo sees it and announces
// each change. Between two looks the breaker may pass through a state
// unseen; the tracker infers it (open → open with a new openUntil was a
// failed half-open probe).
type tracker struct {
	scr         *screen
	start       time.Time
	openTimeout time.Duration

	mu        sync.Mutex
	last      string
	lastUntil time.Time
	seen      []transition
	everOpen  bool
}

func (t *tracker) observe(v *breakerView) {
	if v == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	state, until := v.State, v.openUntil()
	prev := t.last
	if prev == "" {
		prev = "closed" // a breaker starts closed
	}
	switch {
	case state == "open" && prev == "open":
		if !until.IsZero() && !t.lastUntil.IsZero() && !until.Equal(t.lastUntil) {
			t.add("open", "half-open")
			t.add("half-open", "open")
		}
	case state == prev:
	case prev == "open" && state == "closed":
		t.add("open", "half-open")
		t.add("half-open", "closed")
	case prev == "closed" && state == "half-open":
		t.add("closed", "open")
		t.add("open", "half-open")
	default:
		t.add(prev, state)
	}
	t.last, t.lastUntil = state, until
}

func (t *tracker) add(from, to string) {
	t.seen = append(t.seen, transition{from, to})
	el := time.Since(t.start)
	switch {
	case to == "open" && from == "closed":
		t.everOpen = true
		t.scr.banner(el, red, "breaker OPEN after 5 consecutive failures — requests now fail fast without touching nominatim")
	case to == "open":
		t.everOpen = true
		t.scr.banner(el, red, fmt.Sprintf("a probe failed: breaker OPEN again for %s", t.openTimeout))
	case to == "half-open":
		t.scr.banner(el, yellow, fmt.Sprintf("HALF-OPEN after %s open: letting 2 probes through", t.openTimeout))
	case to == "closed":
		t.scr.banner(el, green, "CLOSED again: 2 probes succeeded, requests flow to nominatim")
	default:
		t.scr.banner(el, magenta, "breaker "+from+" → "+to)
	}
}

func (t *tracker) transitions() []transition {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.seen)
}

// check is one claim of the story, true or not.
type check struct {
	Name   string
	OK     bool
	Detail string
}

// report is what happened in one run.
type report struct {
	Story       story
	Elapsed     time.Duration
	Outcomes    []*outcome
	Hits        [numModes]int   // requests that reached nominatim, by its mode
	Answers     [numAnswers]int // the same, by what it answered
	FinalState  string
	Metrics     map[transition]int // from /metrics
	MetricsErr  error
	Observed    []transition
	EverOpen    bool
	Interrupted bool
	SidecarDied bool
	SidecarExit error // nil: exited 0 after SIGTERM
	SidecarLog  string
	// SidecarStopTook is the time from SIGTERM to the sidecar's exit.
	SidecarStopTook time.Duration
	// LeakedFastFails counts circuit-open answers whose request ID
	// nonetheless reached nominatim (should be 0).
	LeakedFastFails int

	// Filled in by evaluate: what the tenant saw.
	Sent, OK, UpstreamFailed, Timeouts, ConnectFailures int
	OtherMeshErr, FastFailed, ClientErrors              int
	SentWhileFailing, SparedWhileFailing                int // during the outage
	FastFailedAfterRecovery                             int
	WithID, OursSent, OursKept, Minted                  int // request IDs
	MedianUpstream, MedianFastFail, MaxFastFail         time.Duration

	FailuresBeforeFirstFastFail int
	RunOverlapped               bool // requests of that run overlapped: the count is not exact
	FirstFastFailAt             time.Duration
	OpenedByHiccup              bool
	HiccupDone                  bool // nominatim gave all the hiccup's 503s

	Checks []check // the story: any failure fails the demo
	Notes  []check // details of the contract, shown only
}

func (r *report) totalHits() int {
	n := 0
	for _, h := range r.Hits {
		n += h
	}
	return n
}

// ok says whether the story happened.
func (r *report) ok() bool {
	if r.Interrupted || len(r.Checks) == 0 {
		return false
	}
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

// evaluate counts the outcomes and checks the story.
func (r *report) evaluate() {
	slices.SortFunc(r.Outcomes, func(a, b *outcome) int { return a.N - b.N })
	var upstreamLat, fastLat []time.Duration
	// Failures in a row before the first fast-fail: only meaningful when
	// each request was sent after the previous one had its answer.
	run, firstFastFailSeen := 0, false
	var prev *outcome
	for _, o := range r.Outcomes {
		r.Sent++
		if o.Mode.outage() {
			r.SentWhileFailing++
		}
		if o.Mode == hiccup && o.Breaker != nil && o.Breaker.State != "closed" {
			r.OpenedByHiccup = true
		}
		switch {
		case o.Err != nil:
			r.ClientErrors++
		case o.fastFail():
			r.FastFailed++
			fastLat = append(fastLat, o.Latency)
			if o.Mode.outage() {
				r.SparedWhileFailing++
			} else {
				r.FastFailedAfterRecovery++
			}
		case o.MeshErr == "timeout":
			r.Timeouts++
		case o.MeshErr == "connect-failure":
			r.ConnectFailures++
		case o.MeshErr != "":
			r.OtherMeshErr++
		case o.Status == 200:
			r.OK++
			upstreamLat = append(upstreamLat, o.Latency)
		default:
			r.UpstreamFailed++
			upstreamLat = append(upstreamLat, o.Latency)
		}
		if !firstFastFailSeen {
			switch {
			case o.fastFail():
				firstFastFailSeen = true
				r.FailuresBeforeFirstFastFail = run
				r.FirstFastFailAt = o.At
			case o.Err == nil && o.Status >= 500:
				run++
				if prev != nil && o.At < prev.At+prev.Latency {
					r.RunOverlapped = true
				}
			default:
				run, r.RunOverlapped = 0, false
			}
		}
		prev = o
		if o.Err == nil {
			if o.RespID != "" {
				r.WithID++
			}
			if o.SentID != "" {
				r.OursSent++
				if o.RespID == o.SentID {
					r.OursKept++
				}
			} else if o.RespID != "" {
				r.Minted++
			}
		}
	}
	r.MedianUpstream = median(upstreamLat)
	r.MedianFastFail = median(fastLat)
	if len(fastLat) > 0 {
		r.MaxFastFail = slices.Max(fastLat)
	}
	if r.Interrupted {
		return
	}

	opened := r.EverOpen || r.Metrics[transition{"closed", "open"}] > 0
	detail := "never"
	if opened {
		detail = "seen on /debug/breakers"
		if r.FastFailed > 0 {
			detail = fmt.Sprintf("first fast-fail at %.2fs", r.FirstFastFailAt.Seconds())
		}
	}
	r.Checks = append(r.Checks, check{"the breaker opened", opened, detail})

	expectedHits := r.Sent - r.FastFailed - r.ConnectFailures
	hitsOK := r.totalHits() == expectedHits || (r.ClientErrors > 0 && r.totalHits() <= expectedHits)
	detail = fmt.Sprintf("%d fast-fails; nominatim saw none of their request IDs; nominatim hits %d = %d sent − %d fast-failed",
		r.FastFailed, r.totalHits(), r.Sent, r.FastFailed)
	if r.ConnectFailures > 0 {
		detail += fmt.Sprintf(" − %d connect failures", r.ConnectFailures)
	}
	switch {
	case r.FastFailed == 0:
		detail = "no request was fast-failed"
	case r.LeakedFastFails > 0:
		detail = fmt.Sprintf("%d of %d fast-failed requests reached nominatim anyway", r.LeakedFastFails, r.FastFailed)
	case !hitsOK:
		detail = fmt.Sprintf("nominatim hits %d, expected %d (sent %d − fast-failed %d − connect failures %d)",
			r.totalHits(), expectedHits, r.Sent, r.FastFailed, r.ConnectFailures)
	}
	r.Checks = append(r.Checks, check{"fast-fails never reached nominatim",
		r.FastFailed > 0 && r.LeakedFastFails == 0 && hitsOK, detail})

	hiccupOK := r.HiccupDone && !r.OpenedByHiccup
	detail = fmt.Sprintf("nominatim answered %d×503 in a row, then 200; the breaker stayed closed", hiccupFailures)
	switch {
	case !r.HiccupDone:
		detail = "the hiccup did not happen: too few requests reached nominatim after it began"
	case r.OpenedByHiccup:
		detail = "the breaker left the closed state during the hiccup"
	}
	r.Checks = append(r.Checks, check{fmt.Sprintf("%d failures in a row did not open the breaker", hiccupFailures), hiccupOK, detail})

	closed := opened && r.FinalState == "closed"
	detail = "final state: " + r.FinalState
	if r.FinalState == "" {
		detail = "final state unknown"
	}
	r.Checks = append(r.Checks, check{"the breaker closed again", closed, detail})

	detail = fmt.Sprintf("exit status 0, %s after SIGTERM", fmtLatency(r.SidecarStopTook))
	if r.SidecarExit != nil {
		detail = r.SidecarExit.Error()
	}
	r.Checks = append(r.Checks, check{"the sidecar ran throughout and stopped cleanly", r.SidecarExit == nil && !r.SidecarDied, detail})

	// Notes: the contract's details, shown but not fatal.
	r.Notes = append(r.Notes,
		check{"every response carries an X-Request-ID, the tenant's own kept",
			r.WithID == r.Sent-r.ClientErrors && r.OursKept == r.OursSent,
			fmt.Sprintf("%d/%d responses with an ID; %d/%d of the tenant's kept; %d minted by the sidecar",
				r.WithID, r.Sent-r.ClientErrors, r.OursKept, r.OursSent, r.Minted)},
		check{"fast-fails are sub-millisecond",
			r.FastFailed > 0 && r.MedianFastFail < time.Millisecond,
			fmt.Sprintf("median %s, max %s", fmtLatency(r.MedianFastFail), fmtLatency(r.MaxFastFail))},
		sixth(r),
	)
}

// sixth checks the contract's "the 6th request of a failing run fails
// fast" (the breaker opens on the 5th failure, not after it).
func sixth(r *report) check {
	c := check{Name: "the 6th request of a failing run fails fast", OK: r.FailuresBeforeFirstFastFail == 5,
		Detail: fmt.Sprintf("the first fast-fail came after %d failures in a row", r.FailuresBeforeFirstFastFail)}
	if !c.OK && r.RunOverlapped {
		c.OK = true
		c.Detail += "; inconclusive: those requests overlapped (busy machine)"
	}
	return c
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

var transitionOrder = []transition{
	{"closed", "open"}, {"open", "half-open"}, {"half-open", "open"}, {"half-open", "closed"},
}

func fmtTransitions(m map[transition]int) string {
	var parts []string
	for _, t := range transitionOrder {
		if m[t] > 0 {
			parts = append(parts, fmt.Sprintf("%s→%s ×%d", t.From, t.To, m[t]))
		}
	}
	for t, n := range m {
		if !slices.Contains(transitionOrder, t) && n > 0 {
			parts = append(parts, fmt.Sprintf("%s→%s ×%d", t.From, t.To, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " · ")
}

func fmtPath(ts []transition) string {
	if len(ts) == 0 {
		return "none"
	}
	parts := []string{ts[0].From}
	for _, t := range ts {
		parts = append(parts, t.To)
	}
	return strings.Join(parts, " → ")
}

// summary prints the report.
func summary(scr *screen, r *report) {
	row := func(label string, value any, note string) {
		scr.printf("  %-48s %6v  %s\n", label, value, scr.paint(dim, note))
	}
	title := fmt.Sprintf("summary after %.1fs", r.Elapsed.Seconds())
	if r.Interrupted {
		title += " (interrupted)"
	}
	scr.printf("\n%s\n", scr.paint(bold, "── "+title+" ──"))
	row("requests sent by the tenant", r.Sent, fmt.Sprintf("one every %s", interval))
	row("  200 from nominatim", r.OK, "")
	row("  503 from nominatim (passed through)", r.UpstreamFailed, "nominatim was reached and failed")
	if r.Timeouts > 0 {
		row("  504 timeout from the sidecar", r.Timeouts, "nominatim was reached and never answered; the policy cut it at 2s")
	}
	if r.ConnectFailures > 0 {
		row("  502 connect-failure from the sidecar", r.ConnectFailures, "")
	}
	if r.OtherMeshErr > 0 {
		row("  other X-Minimesh-Error answers", r.OtherMeshErr, "")
	}
	row("  503 circuit-open: fast-failed by the breaker", r.FastFailed, "answered by the sidecar alone")
	if r.ClientErrors > 0 {
		row("  transport errors in the tenant", r.ClientErrors, "")
	}
	row("requests that reached nominatim", r.totalHits(), fmt.Sprintf("counted by nominatim itself: %d answered 200, %d answered 503, %d left hanging",
		r.Answers[answered200], r.Answers[answered503], r.Answers[leftHanging]))
	row("sent while nominatim was down", r.SentWhileFailing,
		fmt.Sprintf("only %d reached it", r.Hits[overloaded]+r.Hits[hanging]))
	row("  spared from the failing nominatim", r.SparedWhileFailing, "fast-failed instead of piling onto it")
	row("  fast-failed after it had recovered", r.FastFailedAfterRecovery, "until the half-open probes showed it healthy (the price of openTimeout)")
	row("median latency, answered by nominatim", fmtLatency(r.MedianUpstream), "")
	row("median latency, fast-fail", fmtLatency(r.MedianFastFail), fmt.Sprintf("max %s", fmtLatency(r.MaxFastFail)))
	if r.MetricsErr != nil {
		row("breaker transitions (/metrics)", "?", r.MetricsErr.Error())
	} else if r.Metrics != nil {
		scr.printf("  %-48s %s\n", "breaker transitions (/metrics)", fmtTransitions(r.Metrics))
	}
	scr.printf("  %-48s %s\n", "breaker states seen by the demo", fmtPath(r.Observed))
	if r.SidecarLog != "" {
		scr.printf("  sidecar output (last lines):\n%s", indent(r.SidecarLog))
	}
	scr.printf("\n")
	for _, n := range r.Notes {
		mark := scr.paint(green, "✓")
		if !n.OK {
			mark = scr.paint(yellow, "!")
		}
		scr.printf("  %s %s %s\n", mark, n.Name, scr.paint(dim, "("+n.Detail+")"))
	}
	for _, c := range r.Checks {
		mark := scr.paint(green, "✓")
		if !c.OK {
			mark = scr.paint(red, "✗")
		}
		d := ""
		if c.Detail != "" {
			d = scr.paint(dim, "("+c.Detail+")")
		}
		scr.printf("  %s %s %s\n", mark, c.Name, d)
	}
	switch {
	case r.Interrupted:
		scr.printf("\n%s\n", scr.paint(yellow, "interrupted: the sidecar was stopped"))
	case r.ok():
		scr.printf("\n%s\n", scr.paint(green+";"+bold, "the story happened: minimesh protected the tenant without a line of resilience code in it"))
	default:
		scr.printf("\n%s\n", scr.paint(red+";"+bold, "the story did NOT happen (see ✗ above)"))
	}
}
