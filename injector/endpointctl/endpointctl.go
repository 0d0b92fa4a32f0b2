// Package endpointctl feeds the xDS server every Service's endpoints: it
// watches Services and discovery.k8s.io/v1 EndpointSlices (typed
// informers) and hands the whole set, keyed by Service port
// (<name>.<namespace>.svc.cluster.local:<port>), to the sink. Like
// policyctl it is level-triggered: an event only marks its Service
// dirty; the dirty Services are recomputed from what the informers hold
// now, so a missed or reordered event cannot leave a wrong set behind.
//
// Which endpoints, as kube-proxy reads them: the slices labelled
// kubernetes.io/service-name=<name>, whoever wrote them (the
// EndpointSlice controller for Services with a selector, the mirroring
// controller or a person for those without), each Service port matched
// to the slice port of the same name and protocol (TCP; the sidecar
// carries TCP only), the slices of the Service's primary IP family only
// (ServedFamily: a dual-stack Service has a slice per family, each pod in
// both; FQDN ones are left out: not an address), the first address of
// each endpoint, deduplicated across slices. ready (nil: true) is a ready
// endpoint; serving (nil: true) and terminating but not ready is a
// terminating one, for use only when none is ready; the rest are left
// out. Headless Services are served
// too: a client calling one by its name gets every ready pod from DNS and
// picks one itself, which is what the sidecar balancing over the same set
// does; a pod's own name (web-0.geo.shop.svc) is another host and never
// matches. ExternalName Services have no endpoints. A Service whose calls
// kube-proxy routes by a rule of its own (internalTrafficPolicy Local,
// sessionAffinity ClientIP: KubeProxyRouted), or one another proxy owns
// (service.kubernetes.io/service-proxy-name), is served with its ports
// and ClusterIPs and no endpoints, so that the sidecars leave its calls
// to the proxy that programs its ClusterIP.
package endpointctl

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// Sink receives every Service port's endpoints at once, and its
// ClusterIP:port addresses (clusterIPs, keyed by resource name as eps is;
// none for a headless or ExternalName Service): the xDS server, which
// serves what every sidecar takes of them and says what it left out
// (xds.Server.SetServices).
type Sink interface {
	SetServices(eps map[string][]xdsclient.Endpoint, clusterIPs map[string][]netip.AddrPort) (xds.EndpointsServed, error)
}

// DefaultDebounce is how long the controller gathers changes before it
// publishes: a rolling Deployment of 100 replicas writes its slices
// several hundred times in a minute (each pod created, ready,
// terminating, gone), often several in the same few milliseconds, and
// every publish is a push of the whole set to every sidecar. 100 ms is
// short against a pod's start or drain, and turns a burst into one push.
const DefaultDebounce = 100 * time.Millisecond

const byService = "service"

// Controller watches Services and EndpointSlices.
type Controller struct {
	Client kubernetes.Interface
	Sink   Sink
	Log    *slog.Logger
	// Debounce: DefaultDebounce when 0.
	Debounce time.Duration
	// Metrics, if set, gets the served set's size and the Services left
	// out of it (docs/controlplane.md, "Endpoints (EDS)").
	Metrics prometheus.Registerer

	services, slices cache.SharedIndexInformer
	published        atomic.Bool
	metrics          *metrics
	leftOut          string // the last Services left out, as logged
	routedLog        string // the last Services left to kube-proxy, as logged

	mu    sync.Mutex
	dirty map[string]bool                           // namespace/name of Services to recompute
	byKey map[string]map[int32][]xdsclient.Endpoint // namespace/name → Service port → endpoints
	vips  map[string][]netip.Addr                   // namespace/name → ClusterIPs, for the Services in byKey that have some
	// routed are the Services in byKey that kube-proxy balances
	// (KubeProxyRouted), with the reason.
	routed map[string]string
	kick   chan struct{}
}

// Run watches until ctx ends. It publishes nothing before both informers
// have synced: an empty set from a controller that has not read the
// cluster would make every sidecar drop its endpoints.
func (c *Controller) Run(ctx context.Context) {
	c.mu.Lock()
	c.dirty, c.byKey, c.vips, c.kick = map[string]bool{}, map[string]map[int32][]xdsclient.Endpoint{}, map[string][]netip.Addr{}, make(chan struct{}, 1)
	c.routed = map[string]string{}
	f := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithTransform(strip))
	c.services = f.Core().V1().Services().Informer()
	c.slices = f.Discovery().V1().EndpointSlices().Informer()
	c.mu.Unlock()
	c.metrics = newMetrics(c.Metrics, c.Log)
	if err := c.slices.AddIndexers(cache.Indexers{byService: func(o any) ([]string, error) {
		if k := sliceService(o); k != "" {
			return []string{k}, nil
		}
		return nil, nil
	}}); err != nil {
		c.Log.Error("endpoint slice index", "err", err)
		return
	}
	_, _ = c.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.mark(key(o)) },
		UpdateFunc: func(_, o any) { c.mark(key(o)) },
		DeleteFunc: func(o any) { c.mark(key(o)) },
	})
	_, _ = c.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) { c.mark(sliceService(o)) },
		UpdateFunc: func(old, o any) {
			c.mark(sliceService(old))
			c.mark(sliceService(o))
		},
		DeleteFunc: func(o any) { c.mark(sliceService(o)) },
	})
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.services.HasSynced, c.slices.HasSynced) {
		return
	}
	c.publish(true)
	wait := c.Debounce
	if wait <= 0 {
		wait = DefaultDebounce
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		// Gather from the first change, not the last: a long roll still
		// publishes every 100 ms.
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		c.publish(false)
	}
}

// Synced reports whether both informers have synced and the first set
// was handed to the sink.
func (c *Controller) Synced() bool { return c.published.Load() }

func (c *Controller) mark(k string) {
	if k == "" {
		return
	}
	c.mu.Lock()
	c.dirty[k] = true
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// publish recomputes the dirty Services (all of them the first time) and
// hands the whole set to the sink.
func (c *Controller) publish(all bool) {
	c.mu.Lock()
	dirty := c.dirty
	c.dirty = map[string]bool{}
	c.mu.Unlock()
	if all {
		for _, k := range c.services.GetStore().ListKeys() {
			dirty[k] = true
		}
	}
	start := time.Now()
	for k := range dirty {
		c.recompute(k)
	}
	out := map[string][]xdsclient.Endpoint{}
	vips := map[string][]netip.AddrPort{}
	n := 0
	for k, ports := range c.byKey {
		ns, name, _ := strings.Cut(k, "/")
		ips := c.vips[k]
		for port, eps := range ports {
			r := wellknown.EndpointName(name, ns, int(port))
			out[r] = eps
			n += len(eps)
			for _, ip := range ips {
				vips[r] = append(vips[r], netip.AddrPortFrom(ip, uint16(port)))
			}
		}
	}
	served, err := c.Sink.SetServices(out, vips)
	if err != nil {
		c.Log.Error("publish endpoints", "err", err)
		if !c.published.Load() {
			// Refused from the start: there is no last set to keep, and a
			// server waiting for the endpoints would hold every sidecar's
			// policies back. Serve none.
			if _, err := c.Sink.SetServices(map[string][]xdsclient.Endpoint{}, nil); err != nil {
				c.Log.Error("publish no endpoints", "err", err)
			}
		}
	} else {
		c.report(served)
	}
	c.reportRouted()
	c.published.Store(true)
	c.Log.Debug("endpoints published", "services_recomputed", len(dirty), "service_ports", len(out), "endpoints", n,
		"served_endpoints", served.Endpoints, "served_bytes", served.Bytes, "services_left_out", len(served.LeftOut), "took", time.Since(start).String())
}

// maxListed bounds the Services and namespaces one log line names: a
// namespace can make thousands of Services, and the metric
// minimesh_eds_services_left_out has the count of each namespace.
const maxListed = 20

// report tells the operator what the server left out of the set, in
// the metrics at every publish and in the log when it changes: a
// Service left out is served by kube-proxy rather than the sidecars'
// balancing (no per-endpoint ejection), which nothing else shows
// (docs/controlplane.md, "Endpoints (EDS)").
func (c *Controller) report(served xds.EndpointsServed) {
	c.metrics.set(served)
	var key strings.Builder
	for _, l := range served.LeftOut {
		key.WriteString(l.Namespace + "/" + l.Service + " " + l.Reason + " " + l.Dropped + "\n")
	}
	if key.String() == c.leftOut {
		return
	}
	c.leftOut = key.String()
	if len(served.LeftOut) == 0 {
		c.Log.Info("endpoints: every Service is served again", "endpoints", served.Endpoints, "bytes", served.Bytes)
		return
	}
	type nsCount struct{ services, endpoints int }
	byNS := map[string]*nsCount{}
	var names []string
	endpoints := 0
	for _, l := range served.LeftOut {
		if len(names) < maxListed {
			names = append(names, l.String())
		}
		n := byNS[l.Namespace]
		if n == nil {
			n = &nsCount{}
			byNS[l.Namespace] = n
		}
		n.services++
		n.endpoints += l.Endpoints
		endpoints += l.Endpoints
	}
	nss := slices.SortedFunc(maps.Keys(byNS), func(a, b string) int { return cmp.Compare(byNS[b].endpoints, byNS[a].endpoints) })
	var namespaces []string
	for _, ns := range nss[:min(len(nss), maxListed)] {
		namespaces = append(namespaces, fmt.Sprintf("%s (%d Services, %d endpoints)", ns, byNS[ns].services, byNS[ns].endpoints))
	}
	c.Log.Warn("endpoints: Services left out of the set every sidecar is served; their callers dial them through kube-proxy, without per-endpoint balancing or ejection",
		"services_left_out", len(served.LeftOut), "endpoints_left_out", endpoints, "namespaces", namespaces,
		"services", names, "services_not_listed", len(served.LeftOut)-len(names),
		"served_endpoints", served.Endpoints, "served_bytes", served.Bytes,
		"bounds", fmt.Sprintf("%d endpoints or %d bytes per Service, %d endpoints and %d bytes in all; past the total the largest Services of the namespace holding the most go first",
			xds.MaxServiceEndpoints, xds.MaxServiceBytes, xdsclient.MaxEndpoints, xdsclient.MaxEndpointBytes))
}

// reportRouted logs the Services left to kube-proxy (KubeProxyRouted)
// when they change: a sidecar's /debug/endpoints shows such a Service
// with its ClusterIPs and no endpoint, as one whose pods are all gone,
// and the operator reads here why. Info, not a warning: it is the
// Service owner's choice, not a bound reached.
func (c *Controller) reportRouted() {
	keys := slices.Sorted(maps.Keys(c.routed))
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + " " + c.routed[k] + "\n")
	}
	if b.String() == c.routedLog {
		return
	}
	c.routedLog = b.String()
	if len(keys) == 0 {
		c.Log.Info("endpoints: no Service is left to kube-proxy any more")
		return
	}
	names := make([]string, 0, min(len(keys), maxListed))
	for _, k := range keys[:min(len(keys), maxListed)] {
		names = append(names, k+" ("+c.routed[k]+")")
	}
	c.Log.Info("endpoints: Services balanced by kube-proxy, not by the sidecars (internalTrafficPolicy Local, sessionAffinity ClientIP; or by another proxy: service.kubernetes.io/service-proxy-name): served with their ClusterIPs and no endpoints, their callers dial the ClusterIP",
		"services", len(keys), "listed", names, "services_not_listed", len(keys)-len(names))
}

// metrics are the served set's, for dashboards and alerts.
type metrics struct {
	endpoints, bytes, endpointsLeftOut prometheus.Gauge
	servicesLeftOut                    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, log *slog.Logger) *metrics {
	m := &metrics{
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "minimesh_eds_endpoints",
			Help: "Endpoints served to every sidecar (EDS)."}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "minimesh_eds_bytes",
			Help: "Size of the EDS resources every sidecar is sent at each change, in bytes."}),
		endpointsLeftOut: prometheus.NewGauge(prometheus.GaugeOpts{Name: "minimesh_eds_endpoints_left_out",
			Help: "Endpoints of the Services left out of EDS (bounds: docs/controlplane.md)."}),
		servicesLeftOut: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "minimesh_eds_services_left_out",
			Help: "Services left out of EDS, by namespace and reason (service-cap, cluster-total); the controller's log names them."},
			[]string{"namespace", "reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.endpoints, m.bytes, m.endpointsLeftOut, m.servicesLeftOut} {
			if err := reg.Register(c); err != nil {
				log.Error("endpoint metrics", "err", err)
			}
		}
	}
	return m
}

func (m *metrics) set(served xds.EndpointsServed) {
	m.endpoints.Set(float64(served.Endpoints))
	m.bytes.Set(float64(served.Bytes))
	left := 0
	m.servicesLeftOut.Reset()
	for _, l := range served.LeftOut {
		left += l.Endpoints
		m.servicesLeftOut.WithLabelValues(l.Namespace, l.Reason).Inc()
	}
	m.endpointsLeftOut.Set(float64(left))
}

// recompute brings one Service's entry up to date from the informers.
func (c *Controller) recompute(k string) {
	o, exists, _ := c.services.GetStore().GetByKey(k)
	delete(c.routed, k)
	if !exists {
		delete(c.byKey, k)
		delete(c.vips, k)
		return
	}
	svc := o.(*corev1.Service)
	slices, _ := c.slices.GetIndexer().ByIndex(byService, k)
	ports := Endpoints(svc, slices)
	if len(ports) == 0 {
		delete(c.byKey, k)
		delete(c.vips, k)
		return
	}
	c.byKey[k] = ports
	if why := KubeProxyRouted(svc); why != "" {
		c.routed[k] = why
	}
	if ips := ClusterIPs(svc); len(ips) > 0 {
		c.vips[k] = ips
	} else {
		delete(c.vips, k)
	}
}

// ClusterIPs are svc's virtual IPs, spec.clusterIPs (spec.clusterIP
// for an object written before dual-stack), each family once, in order:
// none for a headless Service ("None") or an ExternalName one, and none
// that does not parse. A sidecar names a redirected connection to one of
// them, on a Service port, by the Service (docs/interception.md).
func ClusterIPs(svc *corev1.Service) []netip.Addr {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	list := svc.Spec.ClusterIPs
	if len(list) == 0 && svc.Spec.ClusterIP != "" {
		list = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range list {
		ip, err := netip.ParseAddr(s) // "None" and "" do not parse
		if err != nil || ip.Zone() != "" || slices.Contains(out, ip.Unmap()) {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out
}

// Why kube-proxy, not the sidecars, balances a Service's calls
// (KubeProxyRouted).
const (
	// RoutedLocal: spec.internalTrafficPolicy Local, a call goes to an
	// endpoint on the caller's node (a node's OTel collector, log
	// shipper, DNS cache) or nowhere.
	RoutedLocal = "internal-traffic-policy-local"
	// RoutedClientIP: spec.sessionAffinity ClientIP, a caller's calls
	// stay on one endpoint.
	RoutedClientIP = "session-affinity-client-ip"
	// RoutedOtherProxy: the label service.kubernetes.io/service-proxy-name
	// (any value), which makes kube-proxy skip the Service: another
	// proxy programs its ClusterIP (a multus secondary network's, a
	// CNI's own), and its slices may hold addresses of a network that
	// not every pod is on.
	RoutedOtherProxy = "service-proxy-name"
)

// LabelServiceProxyName on a Service makes kube-proxy skip it, whatever
// its value (kube-proxy watches Services with a selector of
// !service.kubernetes.io/service-proxy-name).
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// KubeProxyRouted says why svc's calls are left to kube-proxy (or to
// the proxy that owns svc), "" when the sidecars balance them: the one rule of which Services they
// balance (Endpoints applies it). internalTrafficPolicy Local and
// sessionAffinity ClientIP are rules kube-proxy applies on the caller's
// node at the ClusterIP; the sidecar balancing over every pod (the same
// set for every sidecar, whatever its node) broke both, sending a node's
// calls to other nodes and a caller's calls to every pod. Left to
// kube-proxy, the sidecar dials the ClusterIP (or the name) from the
// caller's own network namespace, its source address the pod's, and
// kube-proxy keeps both rules. A Service labelled
// service.kubernetes.io/service-proxy-name is no kube-proxy's at all:
// the proxy that owns it programs its ClusterIP, in the caller's network
// namespace where the sidecar dials it, by rules of its own (which
// network, which pods) that balancing over its slices would bypass. A
// headless Service has no ClusterIP and kube-proxy ignores it: its
// callers get every pod from DNS, which is what the sidecar balances
// over, so it stays balanced whatever its fields and labels say.
// trafficDistribution and topology hints are not read (they prefer, and
// never forbid, an endpoint elsewhere).
func KubeProxyRouted(svc *corev1.Service) string {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return ""
	}
	switch {
	case hasLabel(svc, LabelServiceProxyName):
		// First: kube-proxy applies neither field to a Service it skips.
		return RoutedOtherProxy
	case ptrOr(svc.Spec.InternalTrafficPolicy, corev1.ServiceInternalTrafficPolicyCluster) == corev1.ServiceInternalTrafficPolicyLocal:
		return RoutedLocal
	case svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP:
		return RoutedClientIP
	}
	return ""
}

func hasLabel(svc *corev1.Service, l string) bool {
	_, ok := svc.Labels[l]
	return ok
}

// ServedFamily is the address type of svc's slices that Endpoints
// serves: one family, so that each pod is one endpoint. Kubernetes'
// EndpointSlice controller writes a slice per IP family of a dual-stack
// Service, each pod in both by its two addresses; served both, a pod
// was two endpoints (a retry that avoids the tried endpoint landed on
// the same pod by its other address, half of a broken pod was ejected,
// the per-Service cap was reached at half the pods). The family is svc's
// primary one, spec.ipFamilies[0] (that of spec.clusterIP), as
// kube-proxy balances a ClusterIP over its own family's slices only and
// ignores the others: a hand-written IPv6 slice of an IPv4-only Service
// is served by neither. The pod network of a dual-stack cluster has both
// families, so the primary one is dialable from every pod. Without
// spec.ipFamilies (an object written before the field, which the API
// server sets now): the family of its first ClusterIP when it has one,
// else IPv4 if any slice is IPv4, else IPv6.
func ServedFamily(svc *corev1.Service, slcs []any) discoveryv1.AddressType {
	if len(svc.Spec.IPFamilies) > 0 {
		switch svc.Spec.IPFamilies[0] {
		case corev1.IPv4Protocol:
			return discoveryv1.AddressTypeIPv4
		case corev1.IPv6Protocol:
			return discoveryv1.AddressTypeIPv6
		}
	}
	if ips := ClusterIPs(svc); len(ips) > 0 {
		if ips[0].Is4() {
			return discoveryv1.AddressTypeIPv4
		}
		return discoveryv1.AddressTypeIPv6
	}
	for _, o := range slcs {
		if o.(*discoveryv1.EndpointSlice).AddressType == discoveryv1.AddressTypeIPv4 {
			return discoveryv1.AddressTypeIPv4
		}
	}
	return discoveryv1.AddressTypeIPv6
}

// Endpoints are the endpoints of svc's TCP ports from its slices, keyed
// by the Service's port number (what the resource name carries), each
// sorted by address, from the slices of one family (ServedFamily). A
// port without endpoints is served with none: the Service exists (its
// ClusterIPs, of every family, still name its connections), and a
// sidecar with no endpoint to pick dials it as without a control plane.
// A Service kube-proxy routes (KubeProxyRouted) has its ports with no
// endpoints: its resources
// still carry its ClusterIPs, so that a redirected connection to one is
// named by the Service (its policy, breaker, metrics), and the sidecar,
// with no endpoint to pick, dials the ClusterIP as the app did (the name,
// through DNS, for the explicit proxy), where kube-proxy applies its rule.
// A sidecar treats a Service with no endpoints and one not served the
// same way; the ClusterIPs are what serving it adds.
func Endpoints(svc *corev1.Service, slcs []any) map[int32][]xdsclient.Endpoint {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	routed := KubeProxyRouted(svc) != ""
	family := ServedFamily(svc, slcs)
	out := map[int32][]xdsclient.Endpoint{}
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		if routed {
			out[sp.Port] = nil
			continue
		}
		at := map[netip.AddrPort]int{}
		var eps []xdsclient.Endpoint
		for _, o := range slcs {
			s := o.(*discoveryv1.EndpointSlice)
			if s.AddressType != family {
				continue
			}
			var port int32
			for _, p := range s.Ports {
				if p.Port != nil && ptrOr(p.Name, "") == sp.Name && ptrOr(p.Protocol, corev1.ProtocolTCP) == corev1.ProtocolTCP {
					port = *p.Port
				}
			}
			if port < 1 || port > 65535 {
				continue
			}
			for _, e := range s.Endpoints {
				if len(e.Addresses) == 0 {
					continue
				}
				ip, err := netip.ParseAddr(e.Addresses[0])
				// An address not of the slice's family (an IPv4-mapped
				// one in an IPv6 slice), which the API server refuses
				// but an older one may have stored, would bring the other
				// family back: a pod twice.
				if err != nil || ip.Unmap().Is4() != (family == discoveryv1.AddressTypeIPv4) {
					continue
				}
				ready := ptrOr(e.Conditions.Ready, true)
				if !ready && !(ptrOr(e.Conditions.Serving, true) && ptrOr(e.Conditions.Terminating, false)) {
					continue
				}
				ep := xdsclient.Endpoint{Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port)), Terminating: !ready, Zone: ptrOr(e.Zone, "")}
				if i, dup := at[ep.Addr]; dup {
					eps[i].Terminating = eps[i].Terminating && ep.Terminating
					continue
				}
				at[ep.Addr] = len(eps)
				eps = append(eps, ep)
			}
		}
		slices.SortFunc(eps, func(a, b xdsclient.Endpoint) int { return a.Addr.Compare(b.Addr) })
		out[sp.Port] = eps
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// key is an object's namespace/name, tombstones included.
func key(o any) string {
	k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o)
	if err != nil {
		return ""
	}
	return k
}

// sliceService is the namespace/name of the Service a slice belongs to.
func sliceService(o any) string {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	s, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return ""
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return ""
	}
	return s.Namespace + "/" + name
}

// strip drops what the controller never reads before the informers store
// an object (managed fields, annotations such as kubectl's
// last-applied-configuration): a cluster's Services and slices are held
// for as long as it runs.
func strip(o any) (any, error) {
	if m, ok := o.(metav1.Object); ok {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	return o, nil
}
