package xdsclient

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/minimesh/minimesh/internal/protoenc"
)

// The sidecar's xDS messages, encoded and decoded field by field
// (protowire) rather than through go-control-plane's generated types:
// linking those registers the descriptors of every Envoy type they
// reach (core/v3 alone is hundreds of messages) and, through the
// discovery service's stubs, google.golang.org/grpc; together about
// 4 MB of the sidecar's idle RSS (docs/benchmarks.md, "Memory at idle
// and under load"). The field numbers are those of
// envoy/service/discovery/v3/discovery.proto, envoy/config/core/v3,
// envoy/config/cluster/v3/cluster.proto, envoy/config/endpoint/v3 and
// google/protobuf/struct.proto; the tests hold them equal to the
// generated types' encodings. Fields the sidecar does not read are
// skipped (still checked to be well-formed), as proto.Unmarshal would
// keep them as unknown.

// NodeInfo is the identity a sidecar presents (envoy.config.core.v3.Node:
// id, cluster, and metadata of string values).
type NodeInfo struct {
	ID, Cluster string
	Metadata    map[string]string
}

// Node is the identity a sidecar presents: the server groups by namespace.
func Node(pod, namespace, service string) *NodeInfo {
	return &NodeInfo{ID: namespace + "/" + pod, Cluster: service,
		Metadata: map[string]string{NamespaceKey: namespace, "service": service}}
}

// appendNode appends n's encoding (envoy.config.core.v3.Node).
func appendNode(b []byte, n *NodeInfo) []byte {
	b = protoenc.String(b, 1, n.ID)
	b = protoenc.String(b, 2, n.Cluster)
	if len(n.Metadata) > 0 {
		// google.protobuf.Struct{fields: map<string, Value>}, each
		// entry {key = 1, value = 2: Value{string_value = 3}}.
		var st []byte
		for _, k := range sortedKeys(n.Metadata) {
			var v []byte
			v = protowire.AppendTag(v, 3, protowire.BytesType)
			v = protowire.AppendString(v, n.Metadata[k])
			var e []byte
			e = protoenc.String(e, 1, k)
			e = protoenc.Message(e, 2, v)
			st = protoenc.Message(st, 1, e)
		}
		b = protoenc.Message(b, 3, st)
	}
	return b
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		i := len(ks)
		ks = append(ks, k)
		for ; i > 0 && ks[i-1] > k; i-- {
			ks[i] = ks[i-1]
		}
		ks[i] = k
	}
	return ks
}

// discoveryRequest is envoy.service.discovery.v3.DiscoveryRequest, as the
// client sends it: a wildcard subscription, its ACK or its NACK.
type discoveryRequest struct {
	versionInfo, typeURL, nonce string
	node                        *NodeInfo
	// errorDetail, when set, NACKs: google.rpc.Status{message}.
	errorDetail *string
}

func (r *discoveryRequest) marshal() []byte {
	var b []byte
	b = protoenc.String(b, 1, r.versionInfo)
	if r.node != nil {
		b = protoenc.Message(b, 2, appendNode(nil, r.node))
	}
	b = protoenc.String(b, 4, r.typeURL)
	b = protoenc.String(b, 5, r.nonce)
	if r.errorDetail != nil {
		b = protoenc.Message(b, 6, protoenc.String(nil, 2, *r.errorDetail))
	}
	return b
}

// resource is a google.protobuf.Any.
type resource struct {
	typeURL string
	value   []byte
}

// discoveryResponse is the part of a DiscoveryResponse the client reads.
type discoveryResponse struct {
	versionInfo, typeURL, nonce string
	resources                   []resource
}

// errWireType is a field of a wire type other than the one its
// declaration gives it, or a group: refused (deliberately: proto.Unmarshal
// would keep such a field as unknown and leave the field it names
// unset, a resource no control plane of ours sends).
var errWireType = errors.New("wire type")

// fields calls f with each field of the message b, after checking its
// tag and length; f gets the field's raw value (the varint, the fixed
// bits, or the bytes of a length-delimited field) and returns an error
// to stop. Groups are refused.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var bs []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var u uint32
			u, n = protowire.ConsumeFixed32(b)
			v = uint64(u)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			bs, n = protowire.ConsumeBytes(b)
		default:
			return fmt.Errorf("field %d: %w %d not supported", num, errWireType, typ)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, v, bs); err != nil {
			return err
		}
	}
	return nil
}

// str is a string field's value: length-delimited and valid UTF-8, as
// proto3 requires of strings.
func str(num protowire.Number, typ protowire.Type, bs []byte) (string, error) {
	if typ != protowire.BytesType {
		return "", fmt.Errorf("field %d: %w %d for a string", num, errWireType, typ)
	}
	if !utf8.Valid(bs) {
		return "", fmt.Errorf("field %d: string not valid UTF-8", num)
	}
	return string(bs), nil
}

// msg checks that a message field is length-delimited.
func msg(num protowire.Number, typ protowire.Type) error {
	if typ != protowire.BytesType {
		return fmt.Errorf("field %d: %w %d for a message", num, errWireType, typ)
	}
	return nil
}

func varint(num protowire.Number, typ protowire.Type) error {
	if typ != protowire.VarintType {
		return fmt.Errorf("field %d: %w %d for a varint", num, errWireType, typ)
	}
	return nil
}

func (r *discoveryResponse) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
		switch num {
		case 1:
			r.versionInfo, err = str(num, typ, bs)
		case 4:
			r.typeURL, err = str(num, typ, bs)
		case 5:
			r.nonce, err = str(num, typ, bs)
		case 2:
			if err = msg(num, typ); err != nil {
				return err
			}
			var a resource
			err = fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
				switch num {
				case 1:
					a.typeURL, err = str(num, typ, bs)
				case 2:
					if typ != protowire.BytesType {
						return fmt.Errorf("field %d: %w %d for bytes", num, errWireType, typ)
					}
					a.value = bs
				}
				return err
			})
			r.resources = append(r.resources, a)
		}
		return err
	})
}

// cluster is the part of an envoy.config.cluster.v3.Cluster the sidecar
// reads: its name and filter_metadata[MetadataKey].
type cluster struct {
	name    string
	md      map[string]any // nil: no such metadata
	mdBytes int            // md's encoding, as counted against MaxMetadataBytes
}

// Bounds on a cluster's minimesh metadata, checked while it is decoded:
// the 4 MiB transport bound is one on bytes, and an empty Value is 2 bytes
// on the wire but a few hundred once decoded, turned into JSON and read
// back as a YAML node per element (fromCluster): one response of 1.9
// million empty list items allocated 663 MB, 402 MB of heap at its peak.
// The largest policy with every field set (full.yaml, 180-character
// names) is 48 values in 1.2 KB of metadata; the longest lists a policy
// can hold (a retryOn and a failOn naming every status code, class and
// gRPC code) are 2,103 values in 16 KB (TestLongestListsWithinBounds).
// See docs/controlplane.md, "How many policies fit".
const (
	// MaxMetadataBytes bounds the encoding of one cluster's
	// filter_metadata[MetadataKey], checked before any of it is decoded.
	MaxMetadataBytes = 64 << 10
	// MaxClusterValues bounds the values of one cluster's metadata: each
	// Struct field and each list item counts one.
	MaxClusterValues = 8192
	// MaxResponseValues bounds them across a CDS response's clusters:
	// the controller sends at most 3 MiB of clusters, which is 2,000 of
	// the largest policies (96,000 values) or 196 of the longest lists
	// (412,000).
	MaxResponseValues = 512 << 10
)

// errBound is a resource past one of the bounds on what a response may
// make the sidecar decode; errValues, the budget of values spent
// (unmarshalBounded turns it into an errBound).
var (
	errBound  = errors.New("over the sidecar's bound")
	errValues = errors.New("too many values")
)

// valueBudget counts the values a decode may still make.
type valueBudget struct{ left int }

func (v *valueBudget) take() error {
	if v.left <= 0 {
		return errValues
	}
	v.left--
	return nil
}

func (c *cluster) unmarshal(b []byte) error {
	_, err := c.unmarshalBounded(b, MaxClusterValues)
	return err
}

// unmarshalBounded is unmarshal with at most maxValues values in the
// metadata; it returns how many it decoded. Past the bound it stops at
// once with an error wrapping errBound.
func (c *cluster) unmarshalBounded(b []byte, maxValues int) (used int, err error) {
	budget := valueBudget{left: maxValues}
	err = fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
		switch num {
		case 1:
			c.name, err = str(num, typ, bs)
		case 25: // metadata: envoy.config.core.v3.Metadata
			if err = msg(num, typ); err != nil {
				return err
			}
			err = fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
				if num != 1 { // filter_metadata: map<string, Struct>
					return nil
				}
				if err := msg(num, typ); err != nil {
					return err
				}
				key, val, err := mapEntry(bs)
				if err != nil || key != MetadataKey {
					return err
				}
				c.mdBytes = len(val)
				if len(val) > MaxMetadataBytes {
					return fmt.Errorf("metadata %s: %d bytes, %w of %d", MetadataKey, len(val), errBound, MaxMetadataBytes)
				}
				m, err := decodeStruct(val, 0, &budget)
				if errors.Is(err, errValues) {
					return fmt.Errorf("metadata %s: more than %d values (fields and list items): %w", MetadataKey, maxValues, errBound)
				}
				if err == nil {
					c.md = m
				}
				return err
			})
		}
		return err
	})
	return maxValues - budget.left, err
}

// mapEntry reads the entry of a map<string, Message> (key = 1, value =
// 2): val is the value's encoding, the concatenation of every value
// field in the entry, as a message field set twice merges.
//
// val is part of b unless the value field comes more than once: copying
// every entry's value (each Struct field's, at every level) was a tenth
// of what decoding a policy's cluster allocated.
func mapEntry(b []byte) (key string, val []byte, err error) {
	var seen, owned bool
	err = fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
		switch num {
		case 1:
			key, err = str(num, typ, bs)
		case 2:
			if err = msg(num, typ); err != nil {
				return err
			}
			switch {
			case !seen:
				val, seen = bs, true
			case !owned: // a copy: never append into b
				val, owned = append(append(make([]byte, 0, len(val)+len(bs)), val...), bs...), true
			default:
				val = append(val, bs...)
			}
		}
		return err
	})
	return key, val, err
}

// maxDepth bounds the nesting of Struct and ListValue, as protobuf's
// decoder bounds recursion.
const maxDepth = 100

var errDepth = errors.New("struct nested too deep")

// decodeStruct is google.protobuf.Struct as structpb's AsMap gives it.
func decodeStruct(b []byte, depth int, budget *valueBudget) (map[string]any, error) {
	if depth > maxDepth {
		return nil, errDepth
	}
	m := map[string]any{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if num != 1 {
			return nil
		}
		if err := msg(num, typ); err != nil {
			return err
		}
		if err := budget.take(); err != nil {
			return err
		}
		key, val, err := mapEntry(bs)
		if err != nil {
			return err
		}
		v, err := decodeValue(val, depth+1, budget)
		m[key] = v
		return err
	})
	return m, err
}

// number is a number_value as structpb's AsInterface gives it: NaN and
// the infinities, which JSON has no number for, as the strings "NaN",
// "Infinity" and "-Infinity".
func number(f float64) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return f
}

// decodeValue is google.protobuf.Value as structpb's AsInterface gives
// it: nil, float64, string, bool, map[string]any or []any. Of a oneof
// set more than once the last wins, as in protobuf; and as in protobuf,
// struct_value or list_value set again right after itself merges into
// it (the Structs' fields together, the lists one after the other): its
// encodings are concatenated and decoded once, at the end.
func decodeValue(b []byte, depth int, budget *valueBudget) (any, error) {
	if depth > maxDepth {
		return nil, errDepth
	}
	var out any
	var kind protowire.Number // the oneof's field last set
	var sub []byte            // struct_value's or list_value's encoding
	var owned bool            // sub is not part of b
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) (err error) {
		switch num {
		case 1: // null_value
			if err = varint(num, typ); err == nil {
				out = nil
			}
		case 2: // number_value
			if typ != protowire.Fixed64Type {
				return fmt.Errorf("field %d: %w %d for a double", num, errWireType, typ)
			}
			out = number(math.Float64frombits(v))
		case 3:
			out, err = str(num, typ, bs)
		case 4:
			if err = varint(num, typ); err == nil {
				out = v != 0
			}
		case 5, 6: // struct_value, list_value
			if err = msg(num, typ); err != nil {
				return err
			}
			switch {
			case kind != num:
				sub, owned = bs, false
			case !owned: // a copy: never append into b
				sub, owned = append(append(make([]byte, 0, 2*(len(sub)+len(bs))), sub...), bs...), true
			default:
				sub = append(sub, bs...)
			}
		default:
			return nil
		}
		kind = num
		return err
	})
	if err != nil {
		return nil, err
	}
	switch kind {
	case 5:
		return decodeStruct(sub, depth+1, budget)
	case 6:
		return decodeList(sub, depth+1, budget)
	}
	return out, nil
}

// decodeList is google.protobuf.ListValue{values = 1} as structpb's
// AsSlice gives it.
func decodeList(b []byte, depth int, budget *valueBudget) ([]any, error) {
	list := []any{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if num != 1 {
			return nil
		}
		if err := msg(num, typ); err != nil {
			return err
		}
		if err := budget.take(); err != nil {
			return err
		}
		e, err := decodeValue(bs, depth+1, budget)
		list = append(list, e)
		return err
	})
	return list, err
}

// loadAssignment is the part of an envoy.config.endpoint.v3
// ClusterLoadAssignment the sidecar reads.
type loadAssignment struct {
	name       string
	localities []locality
	// clusterIPs are the addresses of named_endpoints[ClusterIPName]:
	// the Service's own, not endpoints to balance over.
	clusterIPs []lbEndpoint
}

type locality struct {
	zone string
	lbs  []lbEndpoint
}

type lbEndpoint struct {
	// hasSocket: the endpoint is set and its address is a socket
	// address (not a pipe, an internal address or an endpoint_name).
	hasSocket bool
	address   string
	port      uint32 // 0 unless port_value is the port specifier
	// health is the envoy.config.core.v3.HealthStatus, an enum: the
	// varint's low 32 bits, as proto.Unmarshal reads an enum.
	health int32
}

// Health statuses (envoy.config.core.v3.HealthStatus).
const (
	healthUnknown  = 0
	healthHealthy  = 1
	healthDraining = 3
)

// edsBudget counts what the resources of one EDS response may still
// hold, checked before each is appended: an empty LocalityLbEndpoints is
// 2 bytes on the wire and 40 decoded, so a response under the 4 MiB
// transport bound held 1.9 million of them (244 MB of heap) before
// MaxEndpoints, counted on the endpoints kept, refused anything.
// Localities are one per zone of a Service port, so neither they nor
// the lb_endpoints of a legitimate response pass MaxEndpoints.
type edsBudget struct {
	localities, lbEndpoints int
}

func newEDSBudget() *edsBudget {
	return &edsBudget{localities: MaxEndpoints, lbEndpoints: MaxEndpoints}
}

// maxAdditionalClusterIPs bounds a resource's additional ClusterIP
// addresses: a Service has at most two ClusterIPs, one per family. Per
// resource, not per response: the control plane's bound counts
// lb_endpoints and bytes alone, and 20,001 dual-stack Service ports
// without endpoints are a response it serves whole.
const maxAdditionalClusterIPs = 2

func (l *loadAssignment) unmarshal(b []byte) error {
	return l.unmarshalBounded(b, newEDSBudget())
}

// unmarshalBounded is unmarshal taking what it decodes from budget,
// shared by the resources of a response.
func (l *loadAssignment) unmarshalBounded(b []byte, budget *edsBudget) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
		switch num {
		case 1:
			l.name, err = str(num, typ, bs)
		case 2: // LocalityLbEndpoints
			if err = msg(num, typ); err != nil {
				return err
			}
			if budget.localities <= 0 {
				return fmt.Errorf("more than %d localities in one response: %w", MaxEndpoints, errBound)
			}
			budget.localities--
			var loc locality
			err = fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
				switch num {
				case 1: // locality: Locality{zone = 2}
					if err = msg(num, typ); err != nil {
						return err
					}
					err = fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) (err error) {
						if num == 2 {
							loc.zone, err = str(num, typ, bs)
						}
						return err
					})
				case 2: // lb_endpoints
					if err = msg(num, typ); err != nil {
						return err
					}
					if budget.lbEndpoints <= 0 {
						return fmt.Errorf("more than %d lb_endpoints in one response: %w", MaxEndpoints, errBound)
					}
					budget.lbEndpoints--
					var e lbEndpoint
					err = e.unmarshal(bs)
					loc.lbs = append(loc.lbs, e)
				}
				return err
			})
			l.localities = append(l.localities, loc)
		case 5: // named_endpoints: map<string, Endpoint>
			if err = msg(num, typ); err != nil {
				return err
			}
			key, val, err := mapEntry(bs)
			if err != nil || key != ClusterIPName {
				return err
			}
			l.clusterIPs, err = clusterIPsOf(val)
			return err
		}
		return err
	})
}

func (e *lbEndpoint) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) (err error) {
		switch num {
		case 1: // endpoint: Endpoint{address = 1: Address{socket_address = 1}}
			if err = msg(num, typ); err != nil {
				return err
			}
			err = fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
				if num != 1 {
					return nil
				}
				if err := msg(num, typ); err != nil {
					return err
				}
				return e.addressOf(bs)
			})
		case 5: // endpoint_name: the other host identifier
			if _, err = str(num, typ, bs); err == nil {
				e.hasSocket, e.address, e.port = false, "", 0
			}
		case 2:
			if err = varint(num, typ); err == nil {
				e.health = int32(v)
			}
		}
		return err
	})
}

// addressOf reads an Address{socket_address = 1, pipe = 2,
// envoy_internal_address = 3}: the last one set wins, as with a oneof.
func (e *lbEndpoint) addressOf(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		switch num {
		case 1:
			if err := msg(num, typ); err != nil {
				return err
			}
			e.hasSocket = true
			return e.socketAddress(bs)
		case 2, 3: // pipe, envoy_internal_address
			if err := msg(num, typ); err != nil {
				return err
			}
			e.hasSocket, e.address, e.port = false, "", 0
		}
		return nil
	})
}

// clusterIPsOf reads the named endpoint ClusterIPName, an
// envoy.config.endpoint.v3.Endpoint{address = 1, additional_addresses =
// 4: AdditionalAddress{address = 1}}: its address, then each additional
// one (a dual-stack Service's other family).
func clusterIPsOf(b []byte) ([]lbEndpoint, error) {
	var first *lbEndpoint
	var more []lbEndpoint
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		switch num {
		case 1:
			if err := msg(num, typ); err != nil {
				return err
			}
			if first == nil {
				first = new(lbEndpoint)
			}
			return first.addressOf(bs) // a message set twice merges
		case 4:
			if err := msg(num, typ); err != nil {
				return err
			}
			// Counted: 2-byte entries would otherwise be unbounded.
			if len(more) == maxAdditionalClusterIPs {
				return fmt.Errorf("more than %d additional ClusterIP addresses: %w", maxAdditionalClusterIPs, errBound)
			}
			var e lbEndpoint
			err := fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
				if num != 1 {
					return nil
				}
				if err := msg(num, typ); err != nil {
					return err
				}
				return e.addressOf(bs)
			})
			more = append(more, e)
			return err
		}
		return nil
	})
	if first != nil {
		more = append([]lbEndpoint{*first}, more...)
	}
	return more, err
}

// socketAddress reads SocketAddress{address = 2, port_value = 3,
// named_port = 4}.
func (e *lbEndpoint) socketAddress(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) (err error) {
		switch num {
		case 2:
			e.address, err = str(num, typ, bs)
		case 3:
			if err = varint(num, typ); err == nil {
				e.port = uint32(v)
			}
		case 4:
			if _, err = str(num, typ, bs); err == nil {
				e.port = 0
			}
		}
		return err
	})
}
