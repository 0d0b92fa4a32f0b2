package outbound

import (
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// endpoints holds the control plane's endpoints of every Service port,
// keyed as its EDS resources are ("name.ns.svc.cluster.local:port",
// docs/controlplane.md), and a balancer for each Service port a
// destination names. A destination that names a Service holds its
// Service's balancer from its creation, even before any endpoint is known,
// so that endpoints arriving later need no republishing of destinations:
// an empty balancer picks nothing and the request dials the name, through
// DNS and kube-proxy, as without a control plane.
//
// Only the Services the app calls get a balancer. The control plane sends
// every Service of the cluster to every sidecar (wildcard EDS), and a
// balancer's endpoint (its estimate, warm-up samples, counters) is about
// 240 bytes: a balancer for each, made as the endpoints arrived, cost a
// sidecar 4.7 MB of heap at 20,000 endpoints (xdsclient.MaxEndpoints),
// four times the decoded list, for Services it never called. The others'
// endpoints are kept as sent (about 40 bytes each) until a destination
// names them.
type endpoints struct {
	// vips are the Services' own addresses (ClusterIP:port), read on
	// every redirected request without a lock (serviceAt).
	vips atomic.Pointer[vipTable]

	mu    sync.Mutex
	slots map[string]*lbSlot // the Services destinations name
	// known is the latest set of every Service's endpoints, as set got
	// it (not to be written: set's caller handed it over).
	known map[string][]balancer.Target
	// retire, set by New, takes the kept connections to the addresses
	// that left every Service's endpoints (removed), and to those back in
	// one (back), out of the upstream pools (dialer.retirer).
	retire func(removed, back []netip.AddrPort)
}

type lbSlot struct {
	lb *balancer.Balancer
	// metrics are the handles of the first destination that used the
	// balancer: ejections are counted under its label.
	metrics atomic.Pointer[telemetry.Destination]
}

func newEndpoints() *endpoints { return &endpoints{slots: map[string]*lbSlot{}} }

// forService is the balancer of destination name (canonical, with port)
// in namespace ns, configured from pol; nil when name is no Service. The
// Service's spellings share it: pol is the policy of its canonical name
// for all of them, so that which spelling was built last does not decide
// its ejection settings.
func (e *endpoints) forService(name, ns string, pol *policy.ResiliencePolicy, m *telemetry.Destination) *balancer.Balancer {
	key, ok := endpointKey(name, ns)
	if !ok {
		return nil
	}
	e.mu.Lock()
	s := e.slots[key]
	if s == nil {
		s = &lbSlot{lb: balancer.New(balancerConfig(pol), nil)}
		s.lb.OnEject = func(string) {
			if m := s.metrics.Load(); m != nil {
				m.Ejected()
			}
		}
		// Under mu, so that no set can come between the look-up and the
		// update and be overwritten by an older list.
		s.lb.Update(e.known[key])
		e.slots[key] = s
	}
	e.mu.Unlock()
	s.metrics.CompareAndSwap(nil, m)
	s.lb.SetConfig(balancerConfig(pol))
	return s.lb
}

// has reports whether destination name (canonical, with port) in
// namespace ns is a Service the control plane has sent endpoints of, or
// one with a balancer already: whether forService would give it one
// worth keeping.
func (e *endpoints) has(name, ns string) bool {
	key, ok := endpointKey(name, ns)
	if !ok {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.known[key]) > 0 || e.slots[key] != nil
}

// set replaces every Service's endpoints: those missing from eps have
// none from now on (their requests dial the name again). set keeps eps:
// the caller must not change it afterwards.
//
// The connections kept to an address that is in no Service's endpoints
// any more are retired after the balancers stopped picking it
// (dialer.retirer): an address two Services share stays while either
// has it. Under mu, so that a removal and a re-add in quick succession
// reach the pools in their order.
func (e *endpoints) set(eps map[string][]balancer.Target) {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.known
	e.known = eps
	for key, s := range e.slots {
		s.lb.Update(eps[key])
	}
	if e.retire != nil {
		if removed, back := addrChanges(old, eps); len(removed) > 0 || len(back) > 0 {
			e.retire(removed, back)
		}
	}
}

// addrChanges compares two sets of every Service's endpoints: removed
// are the addresses in old's that are in none of next's, back those a
// Service has in next that it did not have in old (an address that
// moved from one Service to another is in both lists' candidates and in
// neither result but back, where it is harmless: retire only undoes a
// removal there). Only the Services whose endpoints changed are
// compared; next is read whole only when one lost an address.
func addrChanges(old, next map[string][]balancer.Target) (removed, back []netip.AddrPort) {
	var gone map[string]bool
	for key, ts := range old {
		nt := next[key]
		if sameAddrs(ts, nt) {
			continue
		}
		in := make(map[string]bool, len(nt))
		for _, t := range nt {
			in[t.Addr] = true
		}
		for _, t := range ts {
			if !in[t.Addr] {
				if gone == nil {
					gone = map[string]bool{}
				}
				gone[t.Addr] = true
			}
		}
	}
	for key, nt := range next {
		ts := old[key]
		if sameAddrs(ts, nt) {
			continue
		}
		had := make(map[string]bool, len(ts))
		for _, t := range ts {
			had[t.Addr] = true
		}
		for _, t := range nt {
			if !had[t.Addr] {
				if ap, err := netip.ParseAddrPort(t.Addr); err == nil {
					back = append(back, unmapped(ap))
				}
			}
		}
	}
	if len(gone) > 0 {
		for _, nt := range next {
			for _, t := range nt {
				delete(gone, t.Addr) // still another Service's
			}
		}
		for a := range gone {
			if ap, err := netip.ParseAddrPort(a); err == nil {
				removed = append(removed, unmapped(ap))
			}
		}
	}
	return removed, back
}

// sameAddrs reports whether a and b list the same addresses in the same
// order: an unchanged Service, as most of an update's are.
func sameAddrs(a, b []balancer.Target) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Addr != b[i].Addr {
			return false
		}
	}
	return true
}

// vipTable is the control plane's ClusterIP:port of each Service port
// (xdsclient.ClusterIPName), never changed once published.
type vipTable struct {
	// byAddr names each address's Service port by its EDS resource name
	// ("reviews.shop.svc.cluster.local:8080"), an authority that
	// destinations take like any spelling of the Service.
	byAddr map[netip.AddrPort]string
	// named are the resource names that have an address in byAddr.
	named map[string]bool
}

// SetClusterIPs replaces the Services' own addresses the control plane
// sent, ClusterIP:port → EDS resource name (xdsclient.Client's
// ApplyClusterIPs): from the next request on, a redirected connection to
// one of them is that Service's (docs/interception.md, "HTTP/1.x"). An
// empty or nil map (a control plane that sends none) restores the Host
// rule. The map is kept: the caller must not change it afterwards.
func (h *Handler) SetClusterIPs(ips map[netip.AddrPort]string) { h.dests.eps.setClusterIPs(ips) }

func (e *endpoints) setClusterIPs(ips map[netip.AddrPort]string) {
	t := &vipTable{byAddr: ips, named: make(map[string]bool, len(ips))}
	for _, name := range ips {
		t.named[name] = true
	}
	e.vips.Store(t)
}

// authority names a redirected request's destination: the one
// place that decides which Service a redirected request is for (the
// explicit proxy's requests are named by their URL's host alone). orig
// is the original destination the app connected to (origText its
// string), host the Host header's name without its port ("" without
// Host), port orig's port as text, ns the sidecar's namespace.
//
//  1. orig is a Service's ClusterIP:port: that Service, whatever Host
//     says (an app that calls $REVIEWS_SERVICE_HOST, a hard-coded IP).
//  2. Host names a Service that has a ClusterIP, but orig is none of
//     them (a pod of it, a gateway, an egress proxy): the original
//     destination as it is, by its address, as Linkerd does; the
//     Service's name is only taken at the Service's own address, so its
//     breaker, balancing and metrics are the Service's calls alone.
//  3. Otherwise (a host that is no Service, a headless Service, a
//     control plane that sends no ClusterIP) Host names it on orig's
//     port, as before there were ClusterIPs; without Host, the address.
//
// v is nil before the control plane sent any. Rule 1 costs one map
// read; rules 2 and 3 make the name.
func (v *vipTable) authority(orig netip.AddrPort, origText, host, port, ns string) string {
	a, _ := v.name(orig, origText, host, port, ns)
	return a
}

// name is authority, and whether Host named the destination (rule 3 with
// a Host): only then can orig be one of the named Service's endpoints,
// which the request's tries then keep to (pinned); a ClusterIP (rule 1)
// never is one, and an address (rule 2) names no Service.
func (v *vipTable) name(orig netip.AddrPort, origText, host, port, ns string) (string, bool) {
	if v != nil {
		if a, ok := v.byAddr[netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())]; ok {
			return a, false
		}
	}
	if host == "" {
		return origText, false
	}
	a := net.JoinHostPort(host, port)
	if v != nil && len(v.named) > 0 {
		if key, ok := endpointKey(canonical(a, ns), ns); ok && v.named[key] {
			return origText, false
		}
	}
	return a, true
}

// pinned is the endpoint of lb at orig (text: orig.String()), nil when
// orig is none of lb's endpoints or lb is nil. A redirected connection
// whose Host (or SNI) names a Service and whose original destination is
// one of that Service's pods chose that pod (a headless Service's
// StatefulSet leader, a shard's owner): every try of its requests goes
// there, counted at that endpoint, never balanced, retried elsewhere or
// moved by an ejection, as Istio's ORIGINAL_DST and Linkerd do
// (docs/interception.md, "HTTP/1.x"). Only requests whose Host named
// them ask (vipTable.name): one atomic load and one map read.
//
// direct: orig is none of the endpoints and of an address family none of
// them has. The control plane sends a dual-stack Service's endpoints in
// its primary family only, so an app that resolved a headless Service's
// AAAA record and connected to a pod's IPv6 address matches no endpoint:
// it chose that pod all the same, and every try goes to orig, unbalanced,
// as to a Service without endpoints.
func pinned(lb *balancer.Balancer, orig netip.AddrPort, text string) (ep *balancer.Endpoint, direct bool) {
	if lb == nil {
		return nil, false
	}
	if orig.Addr().Is4In6() {
		text = unmapped(orig).String() // the control plane's spelling; rare
	}
	return lb.Endpoint(text, orig.Addr())
}

// EndpointsStatus is one Service port's endpoints, as /debug/endpoints
// shows them.
type EndpointsStatus struct {
	Service string `json:"service"`
	// ClusterIPs are the Service port's own addresses (ClusterIP:port,
	// each family), as the control plane sent them: a redirected
	// connection to one is named by Service, whatever its protocol
	// (vipTable.authority). They are shown so that an operator can tell
	// why a connection to 10.96.x.y is counted as the Service. None for
	// a headless Service, or from a control plane that sends none.
	ClusterIPs []string                  `json:"clusterIPs,omitempty"`
	Endpoints  []balancer.EndpointStatus `json:"endpoints"`
}

// byService is v's addresses by Service port (EDS resource name), each
// list sorted (IPv4 before IPv6); nil for a nil v. For /debug/endpoints:
// made anew at each call, never on a request's path.
func (v *vipTable) byService() map[string][]string {
	if v == nil || len(v.byAddr) == 0 {
		return nil
	}
	addrs := make(map[string][]netip.AddrPort, len(v.named))
	for a, name := range v.byAddr {
		addrs[name] = append(addrs[name], a)
	}
	out := make(map[string][]string, len(addrs))
	for name, as := range addrs {
		sort.Slice(as, func(i, j int) bool { return as[i].Compare(as[j]) < 0 })
		s := make([]string, len(as))
		for i, a := range as {
			s[i] = a.String()
		}
		out[name] = s
	}
	return out
}

// statuses is /debug/endpoints: every Service port with endpoints or a
// ClusterIP, by name. A Service with ClusterIPs and no endpoint (none
// ready, or a Service without selector) is listed too, its endpoints
// empty: a connection to its ClusterIP is still named by it.
func (e *endpoints) statuses() []EndpointsStatus {
	vips := e.vips.Load().byService()
	e.mu.Lock()
	keys := make([]string, 0, len(e.slots))
	slots := make([]*lbSlot, 0, len(e.slots))
	for k, s := range e.slots {
		keys = append(keys, k)
		slots = append(slots, s)
	}
	// The Services nobody called: their endpoints as sent, with no
	// numbers of their own.
	var out []EndpointsStatus
	for k, ts := range e.known {
		if _, called := e.slots[k]; called || len(ts) == 0 {
			continue
		}
		st := make([]balancer.EndpointStatus, len(ts))
		for i, t := range ts {
			st[i] = balancer.EndpointStatus{Addr: t.Addr, Terminating: t.Terminating}
		}
		out = append(out, EndpointsStatus{Service: k, Endpoints: st})
	}
	e.mu.Unlock()
	for i, k := range keys {
		if st := slots[i].lb.Status(); len(st) > 0 {
			out = append(out, EndpointsStatus{Service: k, Endpoints: st})
		}
	}
	for i := range out {
		out[i].ClusterIPs = vips[out[i].Service]
		delete(vips, out[i].Service)
	}
	for k, ips := range vips { // ClusterIPs without endpoints
		out = append(out, EndpointsStatus{Service: k, ClusterIPs: ips, Endpoints: []balancer.EndpointStatus{}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	if out == nil {
		out = []EndpointsStatus{}
	}
	return out
}

// counts are minimesh_endpoints' values: the Services that were called.
func (e *endpoints) counts() []telemetry.EndpointCount {
	e.mu.Lock()
	slots := make([]*lbSlot, 0, len(e.slots))
	for _, s := range e.slots {
		slots = append(slots, s)
	}
	e.mu.Unlock()
	var out []telemetry.EndpointCount
	for _, s := range slots {
		m := s.metrics.Load()
		if m == nil {
			continue
		}
		var n [3]int // ready, terminating, ejected
		st := s.lb.Status()
		if len(st) == 0 {
			continue
		}
		for _, ep := range st {
			switch {
			case ep.EjectedUntil != nil:
				n[2]++
			case ep.Terminating:
				n[1]++
			default:
				n[0]++
			}
		}
		for i, state := range telemetry.EndpointStates {
			out = append(out, telemetry.EndpointCount{Destination: m.Label(), State: state, N: n[i]})
		}
	}
	return out
}

// endpointKey is the EDS resource name of destination name (host:port,
// canonical) seen from namespace ns.
func endpointKey(name, ns string) (string, bool) {
	host, port, err := net.SplitHostPort(name)
	if err != nil || port == "" {
		return "", false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return "", false // an IP literal (IPv6 ones have no dot) names no Service
	}
	fqdn, ok := policy.ServiceFQDN(strings.ToLower(host), ns)
	if !ok {
		return "", false
	}
	return fqdn + ":" + port, true
}

func balancerConfig(p *policy.ResiliencePolicy) balancer.Config {
	od := p.Spec.OutlierDetection
	if od == nil {
		return balancer.Config{}
	}
	return balancer.Config{
		ConsecutiveFailures: od.ConsecutiveFailures,
		BaseEjectionTime:    od.BaseEjectionTime,
		MaxEjectionTime:     od.MaxEjectionTime,
		MaxEjectionPercent:  od.MaxEjectionPercent,
	}
}
