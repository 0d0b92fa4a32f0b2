// Package xdsclient is the sidecar's side of the control plane: it follows
// the ADS stream of minimesh controller, turns clusters back into
// policies and ClusterLoadAssignments into endpoints. It is a package of
// its own so that the sidecar links only what it decodes, not the
// server's cache and every xDS service. It links no Envoy type and no
// google.golang.org/grpc either: the few messages it reads and writes are
// decoded and encoded field by field (wire.go), and the stream is
// internal/grpcwire's, on net/http's HTTP/2. Measured (issue 16), the
// generated types and grpc-go were about 4 MB of the sidecar's idle RSS
// (docs/benchmarks.md, "Memory at idle and under load").
package xdsclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/minimesh/minimesh/internal/grpcwire"
	"github.com/minimesh/minimesh/internal/textcut"
	"github.com/minimesh/minimesh/policy"
)

// clusterType is CDS's type URL (go-control-plane's resource package has
// it, and links every xDS type with it).
const clusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

// NamespaceKey is the node metadata field that names the sidecar's
// namespace: the server serves each namespace its own snapshot.
const NamespaceKey = "namespace"

// DefaultKeepalive is how the client pings a quiet stream (Client.Keepalive):
// a control plane gone without a reset (its node lost, a network that drops
// packets) is noticed within 35 s of its last frame, where TCP took
// minutes (keepalive probes of an idle connection: 30 s, then 9 probes
// 15 s apart; retransmissions of data not acknowledged: about 15 min),
// and the client reconnects, keeping its last good policies. The server must permit a ping every 20 s on a stream: minimesh
// controller's EnforcementPolicy.MinTime is 10 s, half of it (grpc-go's
// default, 5 min, ends the connection with GOAWAY "too_many_pings").
var DefaultKeepalive = grpcwire.Keepalive{Time: 20 * time.Second, Timeout: 15 * time.Second}

// MaxNackMessage bounds the message of a NACK, which joins the errors of
// every resource of a response refused: a response of many bad clusters
// made a NACK of megabytes, over the server's bound on a request (256 KiB,
// xds.MaxRequestBytes), which ended the stream for every NACK sent.
const MaxNackMessage = 4 << 10

// adsMethod is the ADS stream's gRPC method.
const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

// Client keeps a sidecar's policies (and, with ApplyEndpoints, the
// Services' endpoints) in step with the control plane. It ACKs a
// response when every resource in it decodes and validates, and
// otherwise refuses it with the reason (NACK), each type on its own. A
// refused EDS response changes nothing; a CDS response whose only faults
// are clusters of their own is applied without them, as Envoy does
// (applyClusters). When the server is gone it keeps serving the last
// good policies and endpoints and reconnects with jittered exponential
// backoff.
type Client struct {
	Addr string
	Node *NodeInfo
	// Apply installs the policies of a response; its error NACKs it. A
	// response with clusters refused one by one comes without them (each
	// with its last good policy, if any, in its place) and is NACKed
	// after Apply took it.
	Apply func(pols []*policy.ResiliencePolicy, version string) error
	// ApplyEndpoints, when set, asks for every Service's endpoints too
	// (EDS, wildcard) and installs those of a response, keyed by
	// EndpointName; its error NACKs it. Nil: no endpoints are asked for.
	ApplyEndpoints func(eps map[string][]Endpoint, version string) error
	// ApplyClusterIPs, when set with ApplyEndpoints, gets the Services'
	// own addresses (ClusterIPName) of every EDS response that
	// ApplyEndpoints took: ClusterIP:port → the EDS resource name of
	// that Service port. An address two resources claim is in neither.
	// A control plane that sends none gives an empty map.
	ApplyClusterIPs func(ips map[netip.AddrPort]string)
	// Refused, when set, hears of every response refused (NACK), once
	// per content refused ("policies" or "endpoints", and the reason
	// sent in the NACK), whether the response did not decode or Apply or
	// ApplyEndpoints refused it: a NACK that only the decoder saw reaches
	// neither Apply nor ApplyEndpoints, so without this it showed in the
	// log and nowhere else (no metric, not /debug/config).
	Refused func(what string, err error)
	Log     *slog.Logger
	// Backoff bounds between reconnects (defaults 250 ms and 30 s): no
	// wait is shorter or longer (see jitter).
	MinBackoff, MaxBackoff time.Duration
	// HTTPClient carries the stream (nil: an HTTP/2 cleartext client of
	// its own, grpcwire.NewKeepaliveClient with Keepalive).
	HTTPClient *http.Client
	// Keepalive of the client's own HTTPClient (zero: DefaultKeepalive).
	Keepalive grpcwire.Keepalive

	// randN replaces rand.Int64N in the backoff (tests).
	randN func(n int64) int64
	// skewLogged are the unknown policy fields already logged
	// (logSkew), at most maxSkewLogged.
	skewLogged map[string]bool
	// lastGood is the policy of each cluster name in the last set Apply
	// took: a cluster of a later response that is refused keeps it.
	lastGood map[string]*policy.ResiliencePolicy
	// partial is the CDS content last applied in part on this stream:
	// the same content again (a control plane answering the NACK with
	// it) is refused again without being decoded or applied again, which
	// would count a load each time and clear the refusal /debug/config
	// shows until Refused set it again, which it does once per content.
	partial struct {
		hash string
		n    int
		err  error
	}
}

// Run follows the server until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	lo, hi := c.MinBackoff, c.MaxBackoff
	if lo <= 0 {
		lo = 250 * time.Millisecond
	}
	if hi <= 0 {
		hi = 30 * time.Second
	}
	randN := c.randN
	if randN == nil {
		randN = rand.Int64N
	}
	nominal := lo
	for {
		got, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			nominal = lo
		}
		wait := jitter(nominal, lo, hi, randN)
		c.Log.Warn("xds: stream ended; keeping the last good policies and endpoints", "addr", c.Addr, "err", err, "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		nominal = min(2*nominal, hi)
	}
}

// jitter draws the wait before a reconnect within ±20 % of the nominal
// delay, as gRPC's connection backoff does: the sidecars a restarting
// control plane cut off all at once do not come back all at once. Where
// that range crosses lo or hi it is narrowed to them, rather than its
// draws moved onto them, so that every wait stays within the bounds and
// none is shared by half the sidecars: 250 to 300 ms first by default, 24
// to 30 s once the nominal delay reaches the 30 s cap.
func jitter(nominal, lo, hi time.Duration, randN func(int64) int64) time.Duration {
	from, to := max(lo, nominal-nominal/5), min(hi, nominal+nominal/5)
	if to <= from {
		return from
	}
	return from + time.Duration(randN(int64(to-from)+1))
}

// typeState is one resource type on the stream: what was last acked,
// and the refusal of the same content again, which waits.
type typeState struct {
	url string
	// apply applies a response; hash identifies its content, for the
	// refusal of the same content again (lastNack).
	apply func(resp *discoveryResponse) (hash string, n int, err error)
	what  string // "policies", "endpoints": for the log
	// acked is the version_info of the last response applied: a NACK
	// carries it, as the protocol asks.
	acked string
	// A NACK carries the last accepted version, so a snapshot cache
	// answers it at once with the same refused content: without a pause
	// the two would spin. The same content is refused again only after a
	// growing wait (1 s to 5 s, which is also the most a fix pushed during
	// the wait is delayed); new content is judged at once. The wait is a
	// timer, not a sleep: the other type's responses go on meanwhile.
	lastNack string // the hash of the content last refused
	nackWait time.Duration
	timer    *time.Timer
}

// session runs one ADS stream for every type the client follows
// (clusters, and endpoints when ApplyEndpoints is set): one stream per
// sidecar, so the server's stream count is its sidecar count and the
// types of one snapshot come over one ordered stream. got says whether a
// response arrived.
func (c *Client) session(ctx context.Context) (got bool, err error) {
	hc := c.HTTPClient
	if hc == nil {
		k := c.Keepalive
		if k.Time <= 0 {
			k = DefaultKeepalive
		}
		hc = grpcwire.NewKeepaliveClient(10*time.Second, k)
		defer hc.CloseIdleConnections()
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := grpcwire.NewStream(sctx, hc, c.Addr, adsMethod)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer stream.Close()
	c.partial.hash = "" // as lastNack: judged afresh on a new stream
	states := map[string]*typeState{clusterType: {url: clusterType, apply: c.applyClusters, what: "policies"}}
	if c.ApplyEndpoints != nil {
		states[endpointType] = &typeState{url: endpointType, apply: c.applyEndpoints, what: "endpoints"}
	}
	send := func(st *typeState, nonce string, detail *string) error {
		req := discoveryRequest{node: c.Node, typeURL: st.url,
			versionInfo: st.acked, nonce: nonce, errorDetail: detail}
		return stream.Send(req.marshal())
	}
	// Clusters first: the order Envoy asks in, and the server's.
	for _, url := range []string{clusterType, endpointType} {
		if st := states[url]; st != nil {
			if err := send(st, "", nil); err != nil {
				return false, fmt.Errorf("connect: %w", err)
			}
		}
	}
	defer func() {
		for _, st := range states {
			if st.timer != nil {
				st.timer.Stop()
			}
		}
	}()

	type received struct {
		resp *discoveryResponse
		err  error
	}
	recvd := make(chan received)
	go func() {
		for {
			var resp *discoveryResponse
			b, err := stream.Recv()
			if err == nil {
				resp = new(discoveryResponse)
				if err = resp.unmarshal(b); err != nil {
					err = fmt.Errorf("a DiscoveryResponse that does not decode: %w", err)
				}
			}
			select {
			case recvd <- received{resp, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	type delayed struct {
		st    *typeState
		nonce string
		msg   string
	}
	due := make(chan delayed)
	for {
		var r received
		select {
		case <-sctx.Done():
			return got, sctx.Err()
		case d := <-due:
			if err := send(d.st, d.nonce, &d.msg); err != nil {
				return got, err
			}
			continue
		case r = <-recvd:
		}
		if r.err != nil {
			return got, r.err
		}
		got = true
		resp := r.resp
		st := states[resp.typeURL]
		if st == nil {
			c.Log.Warn("xds: a response of a type not asked for; ignored", "type", resp.typeURL)
			continue
		}
		if st.timer != nil {
			st.timer.Stop()
			st.timer = nil
		}
		hash, n, err := st.apply(resp)
		if err == nil {
			st.acked, st.lastNack = resp.versionInfo, ""
			if st.url == clusterType {
				c.Log.Info("xds: applied policies (ACK)", "version", resp.versionInfo, "policies", n)
			} else {
				c.Log.Debug("xds: applied endpoints (ACK)", "version", resp.versionInfo, "endpoints", n)
			}
			if err := send(st, resp.nonce, nil); err != nil {
				return got, err
			}
			continue
		}
		msg := nackMessage(err)
		if hash != st.lastNack {
			// The NACK carries st.acked even after a partial apply: the
			// protocol's version is the last one taken whole, as Envoy's.
			var pe *partialError
			if errors.As(err, &pe) {
				c.Log.Error("xds: applied the control plane's policies in part (partial; NACK): the clusters left out keep their last good policy, or none",
					"version", resp.versionInfo, "acked", st.acked, "left_out", pe.leftOut, "clusters", pe.names,
					"kept", pe.kept, "policies", n, "content", hash, "err", msg)
			} else {
				c.Log.Error("xds: refused the control plane's "+st.what+" (NACK); keeping the last good ones", "version", resp.versionInfo, "content", hash, "err", msg)
			}
			if c.Refused != nil {
				c.Refused(st.what, &nackError{msg, err})
			}
			st.lastNack, st.nackWait = hash, time.Second
			if err := send(st, resp.nonce, &msg); err != nil {
				return got, err
			}
			continue
		}
		d := delayed{st, resp.nonce, msg}
		st.timer = time.AfterFunc(st.nackWait, func() {
			select {
			case due <- d:
			case <-sctx.Done():
			}
		})
		st.nackWait = min(2*st.nackWait, 5*time.Second)
	}
}

// nackMessage is err's message as a NACK carries it: valid UTF-8 (a
// protobuf string: the server refuses a request with anything else), and
// at most MaxNackMessage bytes, cut at a character boundary and saying
// how much was cut. A partial apply's summary comes last and is never
// cut: it is what says the rest was applied.
func nackMessage(err error) string {
	msg, tail := err.Error(), ""
	if pe, ok := err.(*partialError); ok {
		msg, tail = pe.err.Error(), "\n"+pe.summary()
	}
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	room := MaxNackMessage - len(tail)
	if len(msg) <= room {
		return msg + tail
	}
	note := func(cut int) string { return fmt.Sprintf(" … (%d more bytes cut of %d)", cut, len(msg)) }
	keep := textcut.Prefix(msg, room-len(note(len(msg)))) // the longest note there can be
	return keep + note(len(msg)-len(keep)) + tail
}

// nackError is an error with its message as the NACK said it (Refused
// hears of it: /debug/config keeps it); errors.Is and As see the error.
type nackError struct {
	msg string
	err error
}

func (e *nackError) Error() string { return e.msg }
func (e *nackError) Unwrap() error { return e.err }

// applyClusters decodes a CDS response and hands it to Apply with the
// control plane's version_info (what /debug/config shows, to match a
// sidecar to a push); the hash of its resources is the client's own.
//
// A cluster refused on its own (a value or bound this sidecar does not
// take, often a newer controller's: a retryOn condition, a gRPC code, a
// wider range) is left out and the rest applied, as Envoy's CDS does; in
// its place goes the policy the cluster name had in the last set applied,
// or none. The response is NACKed all the same, with the clusters' errors
// (a *partialError), and Apply still gets its version_info: /debug/config
// shows the version applied, as Envoy's config dump does, with the NACK as
// its error. Refusing the whole left every other service's policy stale
// for one policy's value.
func (c *Client) applyClusters(resp *discoveryResponse) (string, int, error) {
	hash := contentHash(resp.resources)
	if hash == c.partial.hash {
		return hash, c.partial.n, c.partial.err
	}
	c.partial.hash = ""
	d := decodeClusters(resp.resources, c.lastGood)
	if d.whole != nil {
		return hash, 0, d.whole
	}
	c.logSkew(d.unknown, resp.versionInfo)
	if err := c.Apply(d.pols, resp.versionInfo); err != nil {
		return hash, len(d.pols), errors.Join(err, d.refused)
	}
	c.lastGood = make(map[string]*policy.ResiliencePolicy, len(d.pols))
	for i, p := range d.pols {
		c.lastGood[d.names[i]] = p
	}
	if d.refused == nil {
		return hash, len(d.pols), nil
	}
	err := &partialError{leftOut: d.leftOut, total: len(resp.resources), kept: d.kept, names: d.leftNames, err: d.refused}
	c.partial.hash, c.partial.n, c.partial.err = hash, len(d.pols), err
	return hash, len(d.pols), err
}

// partialError is a CDS response applied without some of its clusters.
type partialError struct {
	leftOut, total int
	kept           int      // of those left out, how many keep their last good policy
	names          []string // the first maxDecodeErrors left out
	err            error    // why each was refused
}

func (e *partialError) Error() string { return e.err.Error() + "\n" + e.summary() }

func (e *partialError) summary() string {
	return fmt.Sprintf("(partial: %d of %d clusters refused and left out, each keeping its last good policy or none; the others applied)", e.leftOut, e.total)
}

func (e *partialError) Unwrap() error { return e.err }

// maxSkewLogged bounds the unknown fields the client remembers having
// logged; past it, new ones are no longer logged.
const maxSkewLogged = 64

// logSkew warns of the policy fields a response carried that this
// sidecar does not know and left out, once per field path for the life
// of the client: the controller sends them at every push.
func (c *Client) logSkew(unknown []skewField, version string) {
	for _, u := range unknown {
		if c.skewLogged[u.path] || len(c.skewLogged) >= maxSkewLogged {
			continue
		}
		if c.skewLogged == nil {
			c.skewLogged = map[string]bool{}
		}
		c.skewLogged[u.path] = true
		c.Log.Warn("xds: a policy field this sidecar does not know was left out (a control plane newer than the sidecar: upgrade the sidecar)",
			"field", u.path, "cluster", u.cluster, "version", version)
	}
}

// applyEndpoints decodes an EDS response and hands it to ApplyEndpoints.
func (c *Client) applyEndpoints(resp *discoveryResponse) (string, int, error) {
	eps, ips, n, hash, err := decodeEDS(resp.resources)
	if err == nil {
		err = c.ApplyEndpoints(eps, resp.versionInfo)
	}
	if err == nil && c.ApplyClusterIPs != nil {
		c.ApplyClusterIPs(ips)
	}
	return hash, n, err
}

// skewField is a policy field a cluster carried that this sidecar does
// not know (policy.DecodeTolerant).
type skewField struct{ path, cluster string }

// contentHash identifies a response's resources, for the refusal of the
// same content again.
func contentHash(resources []resource) string {
	h := sha256.New()
	for _, a := range resources {
		h.Write(a.value)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// cdsDecoded is a CDS response decoded: pols (with names, their clusters'
// names) are to be applied unless whole is set.
type cdsDecoded struct {
	pols    []*policy.ResiliencePolicy
	names   []string
	unknown []skewField // the fields left out, each path once
	// whole refuses the response as a whole: nothing of it is applied.
	whole error
	// refused are the errors of the clusters left out of pols (at most
	// maxDecodeErrors listed), leftOut how many, leftNames the first
	// maxDecodeErrors of their names, and kept how many of them have
	// their policy of prev in pols instead.
	refused       error
	leftOut, kept int
	leftNames     []string
}

// decodeClusters decodes a CDS response; prev is the policy of each
// cluster name in the set last applied, kept for a cluster refused.
//
// A cluster refused on its own is left out: a value or bound its policy
// fails, no minimesh metadata, a wire error once its name was read. What
// concerns the response as a whole refuses it whole, so that the last good
// set stays for every service: a cluster name twice, or two clusters with
// a policy for one service (the sidecar's table would keep one of the two
// without a word, policy.NewTable, and which is right cannot be told), a
// resource that is not a cluster or that fails before its name is read
// (whose service's policy it held cannot be told, so leaving it out could
// drop one), and the bound on the values of the whole response (the rest went
// undecoded).
func decodeClusters(resources []resource, prev map[string]*policy.ResiliencePolicy) cdsDecoded {
	var d cdsDecoded
	var errs []error // listed, at most about maxDecodeErrors
	whole := false
	refuse := func(err error) { errs, whole = append(errs, err), true }
	more := 0 // clusters refused past the errors listed
	type keptPolicy struct {
		name string
		p    *policy.ResiliencePolicy
	}
	var kept []keptPolicy
	leaveOut := func(name string, err error) {
		d.leftOut++
		if len(errs) < maxDecodeErrors {
			errs = append(errs, err)
			d.leftNames = append(d.leftNames, name)
		} else {
			more++
		}
		if p := prev[name]; p != nil {
			kept = append(kept, keptPolicy{name, p})
		}
	}
	names := map[string]bool{}
	services := map[string]string{} // spec.service → the cluster that carried it
	seenUnknown := map[string]bool{}
	valuesLeft := MaxResponseValues
	for i, a := range resources {
		if whole && len(errs) >= maxDecodeErrors {
			// The NACK is cut to MaxNackMessage anyway; a response of a
			// million bad resources made as many errors first. Refused
			// whole, the rest need no decoding; clusters refused one by
			// one are all decoded, as the others are applied.
			errs = append(errs, fmt.Errorf("%d more resources not checked", len(resources)-i))
			break
		}
		if !isType(a.typeURL, clusterType) {
			refuse(fmt.Errorf("resource %s: not a %s", a.typeURL, clusterType))
			continue
		}
		var c cluster
		limit := min(MaxClusterValues, valuesLeft)
		used, err := c.unmarshalBounded(a.value, limit)
		valuesLeft -= used
		if errors.Is(err, errBound) && valuesLeft <= 0 && limit < MaxClusterValues {
			// The response's bound, not the cluster's: decoding more
			// clusters would only say so again.
			refuse(fmt.Errorf("cluster %q: the clusters of one response hold more than %d metadata values in all: %w", c.name, MaxResponseValues, errBound))
			break
		}
		if err != nil && c.name == "" {
			refuse(fmt.Errorf("resource %s: %w", a.typeURL, err))
			continue
		}
		if names[c.name] {
			refuse(fmt.Errorf("cluster %q: twice in one response", c.name))
			continue
		}
		names[c.name] = true
		if err != nil {
			leaveOut(c.name, fmt.Errorf("cluster %q: %w", c.name, err))
			continue
		}
		p, skew, err := fromCluster(&c)
		if err != nil {
			leaveOut(c.name, err)
			continue
		}
		for _, path := range skew {
			if !seenUnknown[path] {
				seenUnknown[path] = true
				d.unknown = append(d.unknown, skewField{path, c.name})
			}
		}
		if other, dup := services[p.Spec.Service]; dup {
			refuse(fmt.Errorf("clusters %q and %q: both carry a policy for service %q", other, c.name, p.Spec.Service))
			continue
		}
		services[p.Spec.Service] = c.name
		p.Source = "xds:" + c.name
		d.pols = append(d.pols, p)
		d.names = append(d.names, c.name)
	}
	if more > 0 {
		errs = append(errs, fmt.Errorf("%d more clusters refused", more))
	}
	if whole {
		d.pols, d.names, d.whole = nil, nil, errors.Join(errs...)
		return d
	}
	d.refused = errors.Join(errs...)
	for _, k := range kept {
		// A cluster of this response may carry that service now: its
		// policy is the current one.
		if _, taken := services[k.p.Spec.Service]; taken {
			continue
		}
		services[k.p.Spec.Service] = k.name
		d.pols = append(d.pols, k.p)
		d.names = append(d.names, k.name)
		d.kept++
	}
	return d
}

// maxDecodeErrors bounds the errors a CDS response's NACK lists.
const maxDecodeErrors = 50

// decodeEndpoints turns an EDS response into endpoints by resource name;
// n counts them all. A resource that does not decode, a name twice, or
// more than MaxEndpoints in all refuse the whole response: the sidecar
// keeps its last good set rather than balance over part of one.
func decodeEndpoints(resources []resource) (map[string][]Endpoint, int, string, error) {
	eps, _, n, version, err := decodeEDS(resources)
	return eps, n, version, err
}

// decodeEDS is decodeEndpoints with the Services' own addresses too
// (ClusterIPName): ClusterIP:port → resource name. An address two
// resources claim is left out of ips: Kubernetes gives a ClusterIP to one
// Service at a time, and a wrong Service's policy is worse than the
// Host rule (docs/interception.md, "HTTP/1.x").
func decodeEDS(resources []resource) (map[string][]Endpoint, map[netip.AddrPort]string, int, string, error) {
	h := sha256.New()
	for _, a := range resources {
		h.Write(a.value)
	}
	version := hex.EncodeToString(h.Sum(nil))[:16]
	out := make(map[string][]Endpoint, len(resources))
	ips := map[netip.AddrPort]string{}
	var claimedTwice []netip.AddrPort
	n := 0
	budget := newEDSBudget()
	for _, a := range resources {
		if !isType(a.typeURL, endpointType) {
			return nil, nil, 0, version, fmt.Errorf("resource %s: not a %s", a.typeURL, endpointType)
		}
		var cla loadAssignment
		if err := cla.unmarshalBounded(a.value, budget); err != nil {
			if cla.name != "" {
				return nil, nil, 0, version, fmt.Errorf("endpoints %q: %w", cla.name, err)
			}
			return nil, nil, 0, version, fmt.Errorf("resource %s: %w", a.typeURL, err)
		}
		name := cla.name
		if _, dup := out[name]; dup {
			return nil, nil, 0, version, fmt.Errorf("endpoints %q: twice in one response", name)
		}
		eps, err := fromLoadAssignment(&cla)
		if err != nil {
			return nil, nil, 0, version, err
		}
		if n += len(eps); n > MaxEndpoints {
			return nil, nil, 0, version, fmt.Errorf("endpoints %q: more than %d endpoints in one response", name, MaxEndpoints)
		}
		out[name] = eps
		vips, err := clusterIPs(&cla)
		if err != nil {
			return nil, nil, 0, version, err
		}
		for _, ip := range vips {
			if other, dup := ips[ip]; dup && other != name {
				claimedTwice = append(claimedTwice, ip)
			}
			ips[ip] = name
		}
	}
	for _, ip := range claimedTwice {
		delete(ips, ip)
	}
	return out, ips, n, version, nil
}

// isType says whether an Any's type URL names the same message as want,
// as anypb's MessageIs does: by the full name after the last slash.
func isType(url, want string) bool {
	name := func(u string) string { return u[strings.LastIndexByte(u, '/')+1:] }
	return name(url) == name(want)
}
