package outbound

import (
	"net"
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
	mu    sync.Mutex
	slots map[string]*lbSlot // the Services destinations name
	// known is the latest set of every Service's endpoints, as set got
	// it (not to be written: set's caller handed it over).
	known map[string][]balancer.Target
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

// set replaces every Service's endpoints: those missing from eps have
// none from now on (their requests dial the name again). set keeps eps:
// the caller must not change it afterwards.
func (e *endpoints) set(eps map[string][]balancer.Target) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.known = eps
	for key, s := range e.slots {
		s.lb.Update(eps[key])
	}
}

// EndpointsStatus is one Service port's endpoints, as /debug/endpoints
// shows them.
type EndpointsStatus struct {
	Service   string                    `json:"service"`
	Endpoints []balancer.EndpointStatus `json:"endpoints"`
}

func (e *endpoints) statuses() []EndpointsStatus {
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
