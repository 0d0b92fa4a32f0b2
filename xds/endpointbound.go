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
// Service over it is left out whatever the total: its callers dial its
// name through kube-proxy, which spreads over every pod as before the
// mesh, and one Deployment scaled to thousands of pods cannot crowd the
// cluster's other Services out of the set (docs/controlplane.md,
// "Endpoints (EDS)").
const (
	MaxServiceEndpoints = xdsclient.MaxEndpoints / 4
	MaxServiceBytes     = xdsclient.MaxEndpointBytes / 4
)

// Why a Service is left out (LeftOut.Reason).
const (
	// ReasonServiceCap: the Service alone is over MaxServiceEndpoints or
	// MaxServiceBytes.
	ReasonServiceCap = "service-cap"
	// ReasonTotal: the cluster is over the bound, and the Service is the
	// largest of the namespace that held the most when it was left out.
	ReasonTotal = "cluster-total"
)

// LeftOut is a Service whose endpoints are not served (every port of
// it): sidecars that call it dial its name, through kube-proxy, rather
// than balance over its pods.
type LeftOut struct {
	Namespace, Service string
	// Endpoints and Bytes are what serving it would have cost: its
	// endpoints, and its resources' bytes in the EDS response.
	Endpoints, Bytes int
	Reason           string
}

// EndpointsServed is what SetEndpoints serves, and what it left out,
// for the controller's log and metrics.
type EndpointsServed struct {
	// ServicePorts, Endpoints and Bytes are the served set's resources,
	// endpoints and encoded size (the EDS response's resources).
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

// svcCost is one Service's share of the set: its resources, endpoints
// and bytes, and why it is left out ("" while served).
type svcCost struct {
	ns, name         string
	resources        []string
	endpoints, bytes int
	out              string
}

// bound chooses the Services to leave out so that what is served is
// within what every sidecar takes, and says so in each one's out: first
// each Service over its own bound, then, while the total is over
// xdsclient.MaxEndpoints and then MaxEndpointBytes, the largest Service
// of the namespace that holds the most. A namespace therefore loses
// nothing while another holds more than it does: one namespace's excess
// is taken from it first, down to the size of the next-largest, and a
// rolling Deployment elsewhere keeps reaching every sidecar (the whole
// set refused instead kept the last one for every Service of the
// cluster: sidecars sent requests to pods long gone).
func bound(svcs []*svcCost) {
	var endpoints, bytes int
	for _, c := range svcs {
		if c.endpoints > MaxServiceEndpoints || c.bytes > MaxServiceBytes {
			c.out = ReasonServiceCap
			continue
		}
		endpoints += c.endpoints
		bytes += c.bytes
	}
	trim(svcs, func() bool { return endpoints > xdsclient.MaxEndpoints }, func(c *svcCost) int { return c.endpoints }, func(c *svcCost) {
		endpoints -= c.endpoints
		bytes -= c.bytes
	})
	trim(svcs, func() bool { return bytes > xdsclient.MaxEndpointBytes }, func(c *svcCost) int { return c.bytes }, func(c *svcCost) {
		endpoints -= c.endpoints
		bytes -= c.bytes
	})
}

// trim leaves Services out while over() holds, each time the largest
// (by size) of the namespace whose served Services are largest in all,
// ties going by name so that the same cluster leaves out the same
// Services; drop is told of each.
func trim(svcs []*svcCost, over func() bool, size func(*svcCost) int, drop func(*svcCost)) {
	if !over() {
		return
	}
	byNS := map[string]*nsQueue{}
	var q nsHeap
	for _, c := range svcs {
		if c.out != "" {
			continue
		}
		n := byNS[c.ns]
		if n == nil {
			n = &nsQueue{ns: c.ns}
			byNS[c.ns] = n
			q = append(q, n)
		}
		n.svcs = append(n.svcs, c)
		n.size += size(c)
	}
	for _, n := range q {
		slices.SortFunc(n.svcs, func(a, b *svcCost) int {
			return cmp.Or(cmp.Compare(size(b), size(a)), cmp.Compare(a.name, b.name))
		})
	}
	heap.Init(&q)
	for over() && q.Len() > 0 {
		n := q[0]
		c := n.svcs[n.next]
		n.next++
		n.size -= size(c)
		c.out = ReasonTotal
		drop(c)
		if n.next == len(n.svcs) {
			heap.Pop(&q)
		} else {
			heap.Fix(&q, 0)
		}
	}
}

// nsQueue is a namespace's served Services, largest first, and their
// size in all.
type nsQueue struct {
	ns   string
	svcs []*svcCost
	next int
	size int
}

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
	return fmt.Sprintf("%s/%s (%d endpoints, %d bytes, %s)", l.Namespace, l.Service, l.Endpoints, l.Bytes, l.Reason)
}
