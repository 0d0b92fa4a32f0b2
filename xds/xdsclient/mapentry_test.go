package xdsclient

import (
	"bytes"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestMapEntryValueTwice: a map entry whose value field comes twice is
// the two values merged, as proto.Unmarshal merges a message field set
// again, at every level (filter_metadata's entry, a Struct field's), and
// the input is never written: mapEntry hands out the value in place and
// copies only to merge.
func TestMapEntryValueTwice(t *testing.T) {
	st := func(m map[string]any) []byte {
		s, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		b, err := proto.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	entry := func(key string, vals ...[]byte) []byte {
		b := protowire.AppendTag(nil, 1, protowire.BytesType)
		b = protowire.AppendString(b, key)
		for _, v := range vals {
			b = protowire.AppendTag(b, 2, protowire.BytesType)
			b = protowire.AppendBytes(b, v)
		}
		return b
	}
	// A Struct whose field "spec" has its Value twice, each a struct_value.
	value := func(m map[string]any) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), st(m))
	}
	inner := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), entry("spec", value(map[string]any{"a": 1.0}), value(map[string]any{"b": "x"})))
	md := entry(MetadataKey, st(map[string]any{"policy": "geo"}), inner)
	metadata := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), md)
	b := protowire.AppendBytes(protowire.AppendTag(nil, 25, protowire.BytesType), metadata)
	b = append(protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "c"), b...)
	orig := bytes.Clone(b)
	var c cluster
	if err := c.unmarshal(b); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"policy": "geo", "spec": map[string]any{"a": 1.0, "b": "x"}}
	if !reflect.DeepEqual(c.md, want) {
		t.Errorf("metadata %v, want %v", c.md, want)
	}
	if !bytes.Equal(b, orig) {
		t.Error("decoding wrote into its input")
	}
}
