// Package protoenc holds the appenders of proto3 fields that the
// sidecar's hand-written encoders (xds/xdsclient's DiscoveryRequest,
// proxy/telemetry's OTLP export) share: a field's tag and value, the
// scalars left out when zero, as proto3's implicit presence asks and
// proto.Marshal does.
package protoenc

import "google.golang.org/protobuf/encoding/protowire"

// String appends string field num, unless s is empty.
func String(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// Message appends message (or bytes) field num, m its encoding, even
// when empty: a message field set to an empty message is still set.
func Message(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// Uint appends varint field num, unless v is 0.
func Uint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// Fixed64 appends fixed64 field num, unless v is 0.
func Fixed64(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

// Fixed32 appends fixed32 field num, unless v is 0.
func Fixed32(b []byte, num protowire.Number, v uint32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, v)
}

// Open appends the tag of message field num and a byte of room for its
// length, and returns where the message begins: the fields appended
// after it are the message's, until Close. A message encoded where it
// goes, not into a buffer of its own that its parent then copies, costs
// no allocation, and a move only when its length takes more than a byte:
// an OTLP export encoded each span, attribute and value on its own,
// about 6 KB allocated per span (docs/benchmarks.md, "Tracing at 0.01").
func Open(b []byte, num protowire.Number) ([]byte, int) {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = append(b, 0)
	return b, len(b)
}

// Close writes the length of the message Open began at start, moving the
// message when its length takes more than the one byte Open kept.
func Close(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = append(b, make([]byte, extra)...)
	copy(b[start+extra:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n))
	return b
}
