package xds

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/minimesh/minimesh/xds/xdsclient"
)

// The bound on one Service: no Service takes more than a quarter of what
// a sidecar takes in all (xdsclient.MaxEndpoints, MaxEndpointBytes). A
// Service over it has its endpoints left out whatever the total: its
// callers dial its ClusterIP or name through kube-proxy, which spreads
// over every pod as before the mesh, and one Deployment scaled to
// thousands of pods cannot crowd the cluster's other Services out of the
// set (docs/controlplane.md, "Endpoints (EDS)").
const (
	MaxServiceEndpoints = xdsclient.MaxEndpoints / 4
	MaxServiceBytes     = xdsclient.MaxEndpointBytes / 4
)

// Why a Service's endpoints are left out (LeftOut.Reason), or its
// resources altogether (LeftOut.Dropped).
const (
	// ReasonServiceCap: the Service alone is over MaxServiceEndpoints or
	// MaxServiceBytes.
	ReasonServiceCap = "service-cap"
	// ReasonTotal: the cluster is over the bound, and the Service is the
	// largest of the namespace that held the most when it was left out.
	ReasonTotal = "cluster-total"
)

// LeftOut is a Service whose endpoints are not served (every port of
// it): sidecars that call it dial its ClusterIP or name, through
// kube-proxy, rather than balance over its pods. Its resources are still
// sent, with its ClusterIPs and no endpoints, as a Service kube-proxy
// routes is (docs/controlplane.md, "Services the sidecars do not
// balance"): a redirected connection to its ClusterIP keeps the
// Service's name, policy, breaker and metrics. Left out of the set
// instead, it was named by its address, and a Service at the edge of the
// bound flipped between the two names as a roll's pods came and went,
// splitting its breaker and metrics. Only when even those resources do
// not fit (Dropped) is nothing of it sent.
type LeftOut struct {
	Namespace, Service string
	// Endpoints and Bytes are what serving it whole would have cost: its
	// endpoints, and its resources' bytes in the EDS response.
	Endpoints, Bytes int
	// Reason is why its endpoints are left out.
	Reason string
	// Dropped is why its resources are not sent at all, ClusterIPs
	// included ("" while they are sent without endpoints): the byte
	// bound (ReasonTotal) or, for a Service whose ports alone pass
	// MaxServiceBytes, its own (ReasonServiceCap).
	Dropped string
}

// EndpointsServed is what SetEndpoints serves, and what it left out,
// for the controller's log and metrics.
type EndpointsServed struct {
	// ServicePorts, Endpoints and Bytes are the served set's resources,
	// endpoints and encoded size (the EDS response's resources), the
	// resources of the Services whose endpoints are left out included.
	ServicePorts, Endpoints, Bytes int
	// LeftOut, by namespace and name.
	LeftOut []LeftOut
}

// resourceBytes is what a resource whose encoding is n bytes adds to a
// state-of-the-world DiscoveryResponse: a google.protobuf.Any (type URL
// and value) in the repeated field 2.
func resourceBytes(n int) int {
	anyLen := protowire.SizeTag(1) + protowire.SizeBytes(len(endpointType)) + protowire.SizeTag(2) + protowire.SizeBytes(n)
	return protowire.SizeTag(2) + protowire.SizeBytes(anyLen)
}

// serviceOfName is the namespace and name of the Service whose port an
// EDS resource name (xdsclient.EndpointName) is.
func serviceOfName(resource string) (ns, name string) {
	host, _, _ := strings.Cut(resource, ":")
	name, rest, _ := strings.Cut(strings.TrimSuffix(host, ".svc.cluster.local"), ".")
	return rest, name
}

// svcCost is one Service's share of the set: its endpoints and bytes
// served whole, its resources' bytes with its ClusterIPs and no
// endpoints (bare), and what of it is left out and why.
type svcCost struct {
	ns, name         string
	endpoints, bytes int
	bare             int
	out              string // its endpoints left out ("" while served)
	dropped          string // its resources too
}

// sent is what of c is served: its endpoints, and its resources' bytes.
func (c *svcCost) sent() (endpoints, bytes int) {
	switch {
	case c.dropped != "":
		return 0, 0
	case c.out != "":
		return 0, c.bare
	}
	return c.endpoints, c.bytes
}

// bound chooses what to leave out so that what is served is within what
// every sidecar takes, and says so in each Service's out and dropped.
// Leaving a Service out takes its endpoints and keeps its resources with
// its ClusterIPs (bare), which cost bytes and no endpoint: first each
// Service over its own bound, then, while the total is over
// xdsclient.MaxEndpoints, the endpoints of the largest Service of the
// namespace that holds the most; then, while over MaxEndpointBytes, the
// same by bytes, where a namespace with no endpoints left to take gives
// up its Services' resources whole, largest first. A namespace therefore
// loses nothing while another holds more than it does: one namespace's
// excess is taken from it first, down to the size of the next-largest,
// and a rolling Deployment elsewhere keeps reaching every sidecar (the
// whole set refused instead kept the last one for every Service of the
// cluster: sidecars sent requests to pods long gone).
func bound(svcs []*svcCost) {
	var endpoints, bytes int
	for _, c := range svcs {
		if c.endpoints > MaxServiceEndpoints || c.bytes > MaxServiceBytes {
			c.out = ReasonServiceCap
			if c.bare > MaxServiceBytes {
				c.dropped = ReasonServiceCap
			}
		}
		e, b := c.sent()
		endpoints += e
		bytes += b
	}
	// leave takes c's endpoints (or, whole, its resources) out of the
	// totals; the sizes trim reads follow.
	leave := func(c *svcCost, whole bool) {
		e, b := c.sent()
		if c.out == "" {
			c.out = ReasonTotal
		}
		if whole {
			c.dropped = ReasonTotal
		}
		e2, b2 := c.sent()
		endpoints -= e - e2
		bytes -= b - b2
	}
	trim(svcs, func() bool { return endpoints > xdsclient.MaxEndpoints }, func(c *svcCost) int { e, _ := c.sent(); return e }, false, leave)
	trim(svcs, func() bool { return bytes > xdsclient.MaxEndpointBytes }, func(c *svcCost) int { _, b := c.sent(); return b }, true, leave)
}

// trim leaves Services out while over() holds, each time from the
// namespace whose served Services are largest (by size) in all: the
// endpoints of its largest Service that still has some, then, with
// whole, once none has, its largest Service's resources whole. Ties go
// by name, so that the same cluster leaves out the same Services; leave
// is told of each.
func trim(svcs []*svcCost, over func() bool, size func(*svcCost) int, whole bool, leave func(c *svcCost, whole bool)) {
	if !over() {
		return
	}
	byNS := map[string]*nsQueue{}
	var q nsHeap
	for _, c := range svcs {
		if c.dropped != "" {
			continue
		}
		n := byNS[c.ns]
		if n == nil {
			n = &nsQueue{ns: c.ns}
			byNS[c.ns] = n
			q = append(q, n)
		}
		if c.out == "" && c.endpoints > 0 {
			n.svcs = append(n.svcs, c)
		}
		if whole {
			n.whole = append(n.whole, c)
		}
		n.size += size(c)
	}
	for _, n := range q {
		bySize := func(a, b *svcCost) int { return cmp.Or(cmp.Compare(size(b), size(a)), cmp.Compare(a.name, b.name)) }
		slices.SortFunc(n.svcs, bySize)
		// Taken once every endpoint of the namespace is: each one's size
		// is then its bare resources'.
		slices.SortFunc(n.whole, func(a, b *svcCost) int { return cmp.Or(cmp.Compare(b.bare, a.bare), cmp.Compare(a.name, b.name)) })
	}
	q = slices.DeleteFunc(q, func(n *nsQueue) bool { return n.done() })
	heap.Init(&q)
	for over() && q.Len() > 0 {
		n := q[0]
		var c *svcCost
		all := n.next == len(n.svcs)
		if all {
			c = n.whole[n.nextWhole]
			n.nextWhole++
		} else {
			c = n.svcs[n.next]
			n.next++
		}
		before := size(c)
		leave(c, all)
		n.size -= before - size(c)
		if n.done() {
			heap.Pop(&q)
		} else {
			heap.Fix(&q, 0)
		}
	}
}

// nsQueue is a namespace's served Services: those whose endpoints may
// be taken, largest first, then those whose resources may be, and their
// size in all.
type nsQueue struct {
	ns              string
	svcs, whole     []*svcCost
	next, nextWhole int
	size            int
}

func (n *nsQueue) done() bool { return n.next == len(n.svcs) && n.nextWhole == len(n.whole) }

// nsHeap puts the namespace of the largest size on top.
type nsHeap []*nsQueue

func (h nsHeap) Len() int { return len(h) }
func (h nsHeap) Less(i, j int) bool {
	return h[i].size > h[j].size || h[i].size == h[j].size && h[i].ns < h[j].ns
}
func (h nsHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *nsHeap) Push(x any)   { *h = append(*h, x.(*nsQueue)) }
func (h *nsHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// String names a left-out Service in a log line.
func (l LeftOut) String() string {
	if l.Dropped != "" {
		return fmt.Sprintf("%s/%s (%d endpoints, %d bytes, %s; not even its ClusterIPs: %s)", l.Namespace, l.Service, l.Endpoints, l.Bytes, l.Reason, l.Dropped)
	}
	return fmt.Sprintf("%s/%s (%d endpoints, %d bytes, %s)", l.Namespace, l.Service, l.Endpoints, l.Bytes, l.Reason)
}
