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

// endpoints holds a balancer per Service port the control plane sent
// endpoints for, keyed as its EDS resources are ("name.ns.svc.cluster.local:port",
// docs/controlplane.md). A destination that names a Service holds its
// Service's balancer from its creation, even before any endpoint is known,
// so that endpoints arriving later need no republishing of destinations:
// an empty balancer picks nothing and the request dials the name, through
// DNS and kube-proxy, as without a control plane.
type endpoints struct {
	mu    sync.Mutex
	slots map[string]*lbSlot
}

type lbSlot struct {
	lb *balancer.Balancer
	// metrics are the handles of the first destination that used the
	// balancer: ejections are counted under its label. Nil while no
	// request went there (nothing is exported for a Service nobody calls).
	metrics atomic.Pointer[telemetry.Destination]
}

func newEndpoints() *endpoints { return &endpoints{slots: map[string]*lbSlot{}} }

// slot returns the balancer of key, made on first use. mu is held.
func (e *endpoints) slot(key string) *lbSlot {
	s := e.slots[key]
	if s == nil {
		s = &lbSlot{lb: balancer.New(balancer.Config{}, nil)}
		s.lb.OnEject = func(string) {
			if m := s.metrics.Load(); m != nil {
				m.Ejected()
			}
		}
		e.slots[key] = s
	}
	return s
}

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
	s := e.slot(key)
	e.mu.Unlock()
	s.metrics.CompareAndSwap(nil, m)
	s.lb.SetConfig(balancerConfig(pol))
	return s.lb
}

// set replaces every Service's endpoints: those missing from eps have
// none from now on (their requests dial the name again).
func (e *endpoints) set(eps map[string][]balancer.Target) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for key, s := range e.slots {
		if _, ok := eps[key]; !ok {
			s.lb.Update(nil)
			if s.metrics.Load() == nil {
				delete(e.slots, key) // nobody calls it: nothing to keep
			}
		}
	}
	for key, ts := range eps {
		e.slot(key).lb.Update(ts)
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
	e.mu.Unlock()
	out := make([]EndpointsStatus, 0, len(keys))
	for i, k := range keys {
		if st := slots[i].lb.Status(); len(st) > 0 {
			out = append(out, EndpointsStatus{Service: k, Endpoints: st})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
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
