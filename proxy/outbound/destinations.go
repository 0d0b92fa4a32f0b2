package outbound

import (
	"fmt"
	"net"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/retry"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// destination is everything the request path needs about where a request
// goes, found with one map read. The authorities of one service share it:
// the breaker and the retry budget of "auth", "auth.ns" and
// "auth.ns.svc.cluster.local" on one port are one. It is never changed
// once published; a reload or a reset publishes a new one.
type destination struct {
	name    string // canonical authority: "nominatim-service:8000"
	policy  *policy.ResiliencePolicy
	breaker *breaker.Breaker // nil past the destination cap (overflowName)
	budget  *retry.Budget    // nil without retries
	metrics *telemetry.Destination
	// lb balances the tries over the Service's endpoints (endpoints.go);
	// nil for a host that is no Service, and empty (Pick gives nil) while
	// the control plane sent none: then the name is dialled.
	lb *balancer.Balancer
}

// maxServices caps how many breakers the sidecar keeps. An app that
// calls many distinct hosts (a crawler, say) must not grow the sidecar
// without bound; destinations past the cap get no breaker.
const maxServices = 4096

// maxAuthorities bounds the authorities remembered; one past it is looked
// up again at each request (the slow path), never kept.
const maxAuthorities = 4 * maxServices

// publishDivisor sets how often authorities added since the last
// publication are merged into the published map: once the slow calls
// (additions, and reads of an authority not yet published) reach
// 1/publishDivisor of its size. Each merge copies the whole map, so a new
// authority costs about publishDivisor entries copied however many are
// known, where copying at each one cost 1.5 ms near maxAuthorities; and
// an authority an app keeps calling is read under mu at most that many
// times before it is read without a lock.
const publishDivisor = 16

// destinations maps a request's authority to its destination. Reads of
// a published authority are lock-free (an immutable map behind an atomic
// pointer); one not yet published is in recent, read under mu on the
// slow path a miss already takes. A policy change publishes a new map.
type destinations struct {
	namespace string
	metrics   *telemetry.Metrics
	eps       *endpoints

	byAuthority atomic.Pointer[map[string]authEntry]

	mu     sync.Mutex
	recent map[string]authEntry // added since byAuthority was published
	slow   int                  // slow calls since then (publishDivisor)
	table  *policy.Table
	// services are the destinations with a breaker, by serviceKey, at
	// most maxServices; over those past the cap (overflowService).
	services map[string]*destination
	over     map[string]*destination
	overflow bool // warned about the cap
	onWarn   func(msg string, args ...any)
}

// authEntry is an authority's destination, with the authority as the map
// holds it: onDefaultPort hands it out instead of making the string.
type authEntry struct {
	authority string
	dst       *destination
}

// maxAuthority is the longest host:port a request may name: a DNS name
// is at most 253 bytes (RFC 1035, as dotted text), then ":" and a port.
// A longer one cannot be dialled; refused at once, it takes no place
// among the authorities and services kept here (a 60 KB Host each
// would otherwise hold up to 16,384 of them, and copy them all at every
// new one).
const maxAuthority = 253 + 1 + 5

// checkAuthority refuses a host:port longer than maxAuthority.
func checkAuthority(authority string) error {
	if len(authority) > maxAuthority {
		return fmt.Errorf("host:port of %d bytes (%s): a DNS name is at most 253 bytes", len(authority), echo.Quote(authority))
	}
	return nil
}

func newDestinations(namespace string, table *policy.Table, m *telemetry.Metrics, warn func(string, ...any)) *destinations {
	d := &destinations{namespace: namespace, metrics: m, eps: newEndpoints(), table: table,
		recent: map[string]authEntry{}, services: map[string]*destination{}, over: map[string]*destination{}, onWarn: warn}
	empty := map[string]authEntry{}
	d.byAuthority.Store(&empty)
	return d
}

// get returns the destination of an authority (host[:port], port
// defaulted by the caller's scheme).
func (d *destinations) get(authority string) *destination {
	if e, ok := (*d.byAuthority.Load())[authority]; ok {
		return e.dst
	}
	return d.add(authority)
}

// onDefaultPort returns host+":80", for a host without a port, and its
// destination if known (else nil: get adds it). The string is the map's
// own once the authority is known: an app calls "http://name/" over and
// over, and each would make it anew.
func (d *destinations) onDefaultPort(host string) (string, *destination) {
	var buf [128]byte
	k := append(append(buf[:0], host...), ":80"...)
	if e, ok := (*d.byAuthority.Load())[string(k)]; ok {
		return e.authority, e.dst
	}
	return string(k), nil
}

func (d *destinations) add(authority string) *destination {
	d.mu.Lock()
	defer d.mu.Unlock()
	published := *d.byAuthority.Load()
	if e, ok := published[authority]; ok {
		return e.dst // published since the caller looked
	}
	if e, ok := d.recent[authority]; ok {
		d.slowCall(len(published))
		return e.dst
	}
	pol := d.table.Lookup(authority)
	name := canonical(authority, d.namespace)
	dst := d.services[serviceKey(name, pol)]
	if dst == nil {
		dst = d.newService(d.services, d.over, name, pol)
	}
	if len(published)+len(d.recent) < maxAuthorities {
		d.recent[authority] = authEntry{authority, dst}
		d.slowCall(len(published))
	}
	return dst
}

// slowCall counts a call that found its authority only in recent, or
// added it, and publishes recent once they are 1/publishDivisor of the
// published map's size; mu is held.
func (d *destinations) slowCall(published int) {
	d.slow++
	if d.slow >= max(1, published/publishDivisor) {
		d.publish()
	}
}

// publish merges recent into a new published map, and returns it; mu is
// held.
func (d *destinations) publish() map[string]authEntry {
	old := *d.byAuthority.Load()
	if len(d.recent) == 0 {
		return old
	}
	next := make(map[string]authEntry, len(old)+len(d.recent))
	for k, v := range old {
		next[k] = v
	}
	for k, v := range d.recent {
		next[k] = v
	}
	d.byAuthority.Store(&next)
	clear(d.recent)
	d.slow = 0
	return next
}

// authorities is every authority known, published first.
func (d *destinations) authorities() map[string]authEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.publish()
}

// newService makes the breaker and budget of one service and adds it to
// services; past the cap, it is the policy's overflow service, kept in
// over. mu is held.
func (d *destinations) newService(services, over map[string]*destination, name string, pol *policy.ResiliencePolicy) *destination {
	if len(services) >= maxServices {
		return d.overflowService(over, name, pol)
	}
	svc := &destination{name: name, policy: pol, metrics: d.metrics.Destination(name), budget: budgetFor(pol, nil, nil)}
	m := svc.metrics
	svc.lb = d.eps.forService(name, d.namespace, d.table.Lookup(name), m)
	svc.breaker = breaker.New(name, pol.Spec.CircuitBreaker, func(_ string, from, to breaker.State) {
		m.Transition(from.String(), to.String())
	})
	services[serviceKey(name, pol)] = svc
	return svc
}

// overflowService is the service of the destinations past maxServices
// under one policy. It has no breaker (a breaker each would grow the
// sidecar with every host a crawler calls) and one retry budget for the
// policy, so that retries stay bounded however many hosts an app calls,
// but the policy's own timeout and retries: a destination past the cap
// is served as its policy says, not as the policy of whichever
// destination overflowed first. There is one per policy (spec.service is
// unique in a table), bounded by the policies. A Service whose endpoints
// the control plane has sent keeps its balancer, in a destination of its
// own sharing the policy's budget: bounded by the Services with
// endpoints, whose balancers the endpoints keep anyway. mu is held.
func (d *destinations) overflowService(over map[string]*destination, name string, pol *policy.ResiliencePolicy) *destination {
	shared := over[pol.Spec.Service]
	if shared == nil {
		if !d.overflow {
			d.overflow = true
			d.onWarn("too many destinations; new ones get no circuit breaker", "limit", maxServices, "destination", name)
		}
		shared = &destination{name: overflowName, policy: pol, metrics: d.metrics.Destination(telemetry.Other)}
		// At a reload over is the new table's map, still filling, and
		// d.over the previous one: the policy's destinations past the
		// cap keep their budget while its settings stay, or each reload
		// (a SIGHUP, an xDS reconnect, any other policy's change) would
		// hand them a fresh minPerSecond × 10 retries.
		var prevPol *policy.ResiliencePolicy
		var prevBudget *retry.Budget
		if p := d.over[pol.Spec.Service]; p != nil {
			prevPol, prevBudget = p.policy, p.budget
		}
		shared.budget = budgetFor(pol, prevPol, prevBudget)
		over[pol.Spec.Service] = shared
	}
	if !d.eps.has(name, d.namespace) {
		return shared
	}
	// serviceKey holds a NUL, which no spec.service does: the two kinds
	// of keys never meet.
	key := serviceKey(name, pol)
	if svc := over[key]; svc != nil {
		return svc
	}
	svc := *shared
	svc.lb = d.eps.forService(name, d.namespace, d.table.Lookup(name), shared.metrics)
	over[key] = &svc
	return &svc
}

// setTable applies new policies. A service whose breaker settings did not
// change keeps its breaker, state and counts included, so a reload never
// closes an open breaker by accident; the others start closed. Which
// service was "the same" before is decided by predecessors, from the
// destination, not from the policy's name or spelling.
func (d *destinations) setTable(t *policy.Table) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.table = t
	old := d.publish()
	wanted := make(map[string]string, len(d.services)) // serviceKey → name
	for authority, e := range old {
		if e.dst.name != overflowName {
			name := canonical(authority, d.namespace)
			wanted[serviceKey(name, t.Lookup(authority))] = name
		}
	}
	prevOf := d.predecessors(wanted)
	services := make(map[string]*destination, len(d.services))
	over := map[string]*destination{}
	next := make(map[string]authEntry, len(old))
	for authority, e := range old {
		pol := t.Lookup(authority)
		name := canonical(authority, d.namespace)
		if e.dst.name == overflowName {
			// Past the cap it stays: rebuilt while the new map fills,
			// it would take a breaker of its own, more at each reload.
			next[authority] = authEntry{authority, d.overflowService(over, name, pol)}
			continue
		}
		key := serviceKey(name, pol)
		svc := services[key]
		if svc == nil {
			prev := prevOf[key]
			if prev != nil && reflect.DeepEqual(prev.policy.Spec.CircuitBreaker, pol.Spec.CircuitBreaker) {
				svc = &destination{name: name, policy: pol, breaker: prev.breaker, metrics: prev.metrics,
					lb: d.eps.forService(name, d.namespace, t.Lookup(name), prev.metrics), budget: budgetFor(pol, prev.policy, prev.budget)}
				services[key] = svc
			} else {
				svc = d.newService(services, over, name, pol)
				// A new breaker is no reason for a new budget: a fresh
				// one releases minPerSecond × 10 retries at once, at
				// each such reload during a retry storm. svc is not
				// published yet; past the cap it is the shared one,
				// whose budget overflowService kept.
				if prev != nil && svc.breaker != nil {
					svc.budget = budgetFor(pol, prev.policy, prev.budget)
				}
			}
		}
		next[authority] = authEntry{authority, svc}
	}
	closeDropped(d.services, services)
	d.services = services
	d.over = over
	d.byAuthority.Store(&next)
}

// budgetFor is the retry budget of a service under pol that succeeds one
// under prevPol with budget prev (nil, nil for a new service): prev while
// the budget's settings are the same, so that its retries spent stay
// spent; a new one when they changed; none without retries.
func budgetFor(pol, prevPol *policy.ResiliencePolicy, prev *retry.Budget) *retry.Budget {
	r := pol.Spec.Retries
	if r == nil || r.Attempts <= 0 {
		return nil
	}
	if prev != nil && prevPol != nil && prevPol.Spec.Retries != nil && prevPol.Spec.Retries.Budget == r.Budget {
		return prev
	}
	return retry.NewBudget(r.Budget.Ratio, r.Budget.MinPerSecond)
}

// closeDropped retires each breaker of old that no service of next
// keeps: a reload that drops an open breaker closes the destination's
// circuit as POST /debug/breakers/reset does (reset), and
// minimesh_circuit_breaker_transitions_total must show the circuit
// leaving open as it showed it opening, and then nothing more of that
// breaker: a probe it let through that fails after the reload would
// count half-open → open for a destination whose breaker is closed
// (breaker.Retire). mu is held.
func closeDropped(old, next map[string]*destination) {
	kept := make(map[*breaker.Breaker]bool, len(next))
	for _, svc := range next {
		kept[svc.breaker] = true
	}
	for _, svc := range old {
		if svc.breaker != nil && !kept[svc.breaker] {
			svc.breaker.Retire()
		}
	}
}

// predecessors finds, for each service a new table needs (wanted:
// serviceKey → destination name), the service in force now that it
// succeeds, if any; mu is held. A service succeeds the one of the same
// destination governed by a policy of the same spec.service, whatever
// the policy's metadata (its name is for display, docs/policy.md). Else,
// when one destination had one service with a breaker that no new one
// took and has one new service that found none, the two are the same
// service under another policy: a policy renamed, its service spelled
// another way (geo and geo.<ns>.svc.cluster.local), or a destination
// that moved between its own policy and "*". Where a destination has
// several of either, which is which is a guess, and the new ones start
// with breakers of their own: two policies in force never share one.
func (d *destinations) predecessors(wanted map[string]string) map[string]*destination {
	prev := make(map[string]*destination, len(wanted))
	type pair struct {
		olds []*destination
		news []string
	}
	unmatched := map[string]*pair{} // by destination name
	for key, name := range wanted {
		if p := d.services[key]; p != nil {
			prev[key] = p
			continue
		}
		u := unmatched[name]
		if u == nil {
			u = &pair{}
			unmatched[name] = u
		}
		u.news = append(u.news, key)
	}
	if len(unmatched) == 0 {
		return prev
	}
	for key, p := range d.services {
		if _, taken := wanted[key]; taken || p.breaker == nil {
			continue
		}
		if u := unmatched[p.name]; u != nil {
			u.olds = append(u.olds, p)
		}
	}
	for _, u := range unmatched {
		if len(u.olds) == 1 && len(u.news) == 1 {
			prev[u.news[0]] = u.olds[0]
		}
	}
	return prev
}

// reset closes a destination's breaker by publishing the destination
// again with a new breaker. It takes the name /debug/breakers shows or any
// spelling an app's requests share that breaker under (a Service's longer
// names, upper case, no port for :80), and returns the name it reset.
func (d *destinations) reset(spelling string) (string, bool) {
	authority := spelling
	if _, _, err := net.SplitHostPort(authority); err != nil {
		authority += ":80" // as get's callers default a plain http:// host
	}
	name := canonical(authority, d.namespace)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, svc := range d.services {
		if svc.name == spelling { // the name shown, as it is
			name = spelling
		}
	}
	replaced := map[*destination]*destination{}
	for key, svc := range d.services {
		if svc.name != name || svc.breaker == nil {
			continue
		}
		m := svc.metrics
		fresh := *svc
		fresh.breaker = breaker.New(name, svc.policy.Spec.CircuitBreaker, func(_ string, from, to breaker.State) {
			m.Transition(from.String(), to.String())
		})
		svc.breaker.Retire() // counts its move to closed, then nothing (closeDropped)
		replaced[svc] = &fresh
		d.services[key] = &fresh
	}
	if len(replaced) == 0 {
		return "", false
	}
	old := d.publish()
	next := make(map[string]authEntry, len(old))
	for k, v := range old {
		if fresh, ok := replaced[v.dst]; ok {
			v.dst = fresh
		}
		next[k] = v
	}
	d.byAuthority.Store(&next)
	return name, true
}

// BreakerStatus is one destination's breaker, as /debug/breakers shows it.
type BreakerStatus struct {
	Destination string         `json:"destination"`
	Policy      string         `json:"policy"`
	State       string         `json:"state"`
	Counts      breaker.Counts `json:"counts"`
	OpenUntil   *time.Time     `json:"openUntil,omitempty"`
	// OpenedBecause is the rule that opened it, while it is not closed
	// (its counts start again at zero as it opens).
	OpenedBecause string `json:"openedBecause,omitempty"`
}

func (d *destinations) statuses() []BreakerStatus {
	d.mu.Lock()
	svcs := make([]*destination, 0, len(d.services))
	for _, s := range d.services {
		if s.breaker != nil {
			svcs = append(svcs, s)
		}
	}
	d.mu.Unlock()
	out := make([]BreakerStatus, 0, len(svcs))
	for _, s := range svcs {
		st := BreakerStatus{Destination: s.name, Policy: policyName(s.policy), State: s.breaker.State().String(), Counts: s.breaker.Counts(), OpenedBecause: s.breaker.Why()}
		if t := s.breaker.OpenUntil(); !t.IsZero() {
			st.OpenUntil = &t
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	return out
}

func policyName(p *policy.ResiliencePolicy) string {
	if p.Metadata.Name != "" {
		return p.Metadata.Name
	}
	return p.Spec.Service
}

// overflowName is the service of destinations past maxServices.
const overflowName = "other"

// serviceKey identifies a service: its canonical name and the
// spec.service of its policy (normalized, and one policy per spec.service
// in a table). Two spellings of one service with a policy each (say
// auth-service and auth-service.ns.svc.cluster.local) keep a breaker each,
// so the policy in force never depends on which spelling was called first.
// The policy's name is left out: it is for display, and a renamed policy
// must find its service's breaker at a reload.
func serviceKey(name string, pol *policy.ResiliencePolicy) string {
	return name + "\x00" + pol.Spec.Service
}

// lowerHost lowercases a host name. One that is not UTF-8 has only its
// ASCII lowered: strings.ToLower would turn its invalid bytes into
// U+FFFD, making a valid label of it (its own series, where
// docs/metrics.md counts such names as "other") and giving hosts that
// differ only in those bytes one breaker.
func lowerHost(host string) string {
	if utf8.ValidString(host) {
		return strings.ToLower(host)
	}
	i := strings.IndexFunc(host, func(r rune) bool { return 'A' <= r && r <= 'Z' })
	if i < 0 {
		return host
	}
	var b strings.Builder
	b.Grow(len(host))
	b.WriteString(host[:i])
	for ; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// canonical names a service the way a person reads it: lowercase, no
// trailing dot, and without the cluster suffixes that address the same
// service from the sidecar's namespace, so that "auth:80",
// "auth.ns:80" and "auth.ns.svc.cluster.local:80" share one breaker.
func canonical(authority, namespace string) string {
	host, port, err := net.SplitHostPort(authority)
	if err != nil {
		host, port = authority, ""
	}
	host = strings.TrimSuffix(lowerHost(host), ".")
	host = strings.TrimSuffix(host, ".cluster.local")
	host = strings.TrimSuffix(host, ".svc")
	if namespace != "" {
		// Only a Service's own name: a StatefulSet pod's name
		// (pod-0.db.<ns>.svc.cluster.local) kept as pod-0.db would name
		// the Service pod-0 of namespace db (endpointKey).
		if name, ok := strings.CutSuffix(host, "."+namespace); ok && !strings.Contains(name, ".") {
			host = name
		}
	}
	if port == "" {
		return host
	}
	return net.JoinHostPort(host, port)
}
