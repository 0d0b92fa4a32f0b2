package policy

import (
	"slices"
	"strings"
)

// Table finds the policy of a request's destination. It is built once
// per policy set and then only read, so it is safe for concurrent use.
type Table struct {
	hosts    map[string]*hostEntry
	def      *ResiliencePolicy
	policies []*ResiliencePolicy
}

// hostEntry holds the policies of one host spelling: at most one that
// applies on any port and one per named port.
type hostEntry struct {
	any   rankedPolicy
	ports []portPolicy // few per host: a scan beats a map
}

type portPolicy struct {
	port string
	rankedPolicy
}

// rankedPolicy settles two policies that claim the same spelling, such
// as auth-service and auth-service.<ns> on auth-service.<ns>.svc: the
// one written like the authority wins, then the most qualified one.
type rankedPolicy struct {
	p    *ResiliencePolicy
	rank int
}

const exactRank = 1000

// NewTable indexes policies for the sidecar of a pod in namespace (""
// means "default"), under every spelling a client may use for each
// destination, so that Lookup is a map access. When two policies have
// the same service the first wins; Load never returns such a pair.
func NewTable(policies []*ResiliencePolicy, namespace string) *Table {
	ns := strings.ToLower(namespace)
	if ns == "" {
		ns = "default"
	}
	t := &Table{hosts: map[string]*hostEntry{}}
	seen := map[string]bool{}
	for _, p := range policies {
		svc := p.Spec.Service
		if seen[svc] {
			continue
		}
		seen[svc] = true
		t.policies = append(t.policies, p)
		if svc == DefaultService {
			t.def = p
			continue
		}
		hosts, port := Spellings(svc, ns)
		for _, h := range hosts {
			t.add(h.Host, port, rankedPolicy{p, h.Rank})
		}
	}
	slices.SortStableFunc(t.policies, func(a, b *ResiliencePolicy) int {
		switch {
		case a.Spec.Service == DefaultService:
			return 1
		case b.Spec.Service == DefaultService:
			return -1
		}
		return strings.Compare(a.Spec.Service, b.Spec.Service)
	})
	if t.def == nil {
		t.def = BuiltinDefault()
		t.policies = append(t.policies, t.def)
	}
	return t
}

// Spelling is a host under which a policy is found, and how strongly it
// claims that host against another policy's claim on the same host and
// port: the higher Rank wins.
type Spelling struct {
	Host string
	Rank int
}

// Spellings lists the hosts under which the policy of service (host or
// host:port; not "*") is found for a pod in namespace ns, and the port
// it names ("": any): every spelling of a Kubernetes Service (aliases),
// ranked as Lookup settles two claims on one host, the spelling written
// like the Host header first, then the most qualified. The Envoy export
// gives each virtual host domain to the policy that ranks highest here,
// so that it routes as the sidecar matches.
func Spellings(service, ns string) (hosts []Spelling, port string) {
	ns = strings.ToLower(ns)
	if ns == "" {
		ns = "default"
	}
	host, port, _ := strings.Cut(service, ":")
	qualified := strings.Count(host, ".") + 1
	for _, alias := range aliases(host, ns) {
		rank := qualified
		if alias == host {
			rank += exactRank
		}
		hosts = append(hosts, Spelling{alias, rank})
	}
	return hosts, port
}

func (t *Table) add(host, port string, rp rankedPolicy) {
	e := t.hosts[host]
	if e == nil {
		e = &hostEntry{}
		t.hosts[host] = e
	}
	if port == "" {
		if rp.rank > e.any.rank {
			e.any = rp
		}
		return
	}
	for i := range e.ports {
		if e.ports[i].port == port {
			if rp.rank > e.ports[i].rank {
				e.ports[i].rankedPolicy = rp
			}
			return
		}
	}
	e.ports = append(e.ports, portPolicy{port, rp})
}

// aliases lists the spellings of host that reach the same destination
// from a pod in namespace ns. A host of the shape name, name.ns,
// name.ns.svc or name.ns.svc.cluster.local is taken for a Kubernetes
// Service; any other host only matches itself.
func aliases(host, ns string) []string {
	name, svcNS, ok := serviceOf(host, ns)
	if !ok || strings.Contains(host, ":") {
		return []string{host}
	}
	var out []string
	if svcNS == ns {
		out = append(out, name)
	}
	return append(out,
		name+"."+svcNS,
		name+"."+svcNS+".svc",
		name+"."+svcNS+".svc.cluster.local",
	)
}

// Lookup returns the policy for a request's authority (host[:port], as
// in the Host header or a proxy request's URL): the policy of that host
// and port, else of that host on any port, else the "*" policy, else the
// built-in default. It never returns nil. It runs on every request and
// does not allocate unless the authority has upper-case letters.
func (t *Table) Lookup(authority string) *ResiliencePolicy {
	if hasUpper(authority) {
		authority = strings.ToLower(authority)
	}
	host, port := splitAuthority(authority)
	if e := t.hosts[host]; e != nil {
		if port != "" {
			for i := range e.ports {
				if e.ports[i].port == port {
					return e.ports[i].p
				}
			}
		}
		if e.any.p != nil {
			return e.any.p
		}
	}
	return t.def
}

// Policies returns the table's policies sorted by service, the default
// ("*" or the built-in one) last: the order /debug/config shows them in.
func (t *Table) Policies() []*ResiliencePolicy { return slices.Clone(t.policies) }

// splitAuthority slices host and port out of an authority, dropping the
// brackets of an IPv6 literal and a trailing dot of a fully qualified
// name, which DNS ignores too.
func splitAuthority(a string) (host, port string) {
	if strings.HasPrefix(a, "[") {
		end := strings.IndexByte(a, ']')
		if end < 0 {
			return a, ""
		}
		host, rest := a[1:end], a[end+1:]
		if strings.HasPrefix(rest, ":") {
			port = rest[1:]
		}
		return host, port
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 && strings.IndexByte(a, ':') == i {
		host, port = a[:i], a[i+1:]
	} else {
		host = a
	}
	return strings.TrimSuffix(host, "."), port
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}
