package xdsclient

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/minimesh/minimesh/wellknown"
)

// lenField is a length-delimited field num of value v appended to b.
func lenField(b []byte, num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
}

// entry is a map entry {key = 1, value = 2}.
func entry(k string, v []byte) []byte { return lenField(lenField(nil, 1, []byte(k)), 2, v) }

// specCluster is a cluster named name whose minimesh.io metadata's spec
// is {service: svc} plus the Struct fields more (already encoded).
func specCluster(name, svc string, more []byte) []byte {
	spec := append(lenField(nil, 1, entry("service", lenField(nil, 3, []byte(svc)))), more...)
	md := lenField(nil, 1, entry(MetadataKey, lenField(nil, 1, entry("spec", lenField(nil, 5, spec)))))
	return lenField(lenField(nil, 1, []byte(name)), 25, md)
}

// emptyValues is n empty items of a ListValue, or n Struct fields "" of
// an empty Value: 2 bytes each on the wire.
func emptyValues(n int) []byte {
	var b []byte
	for range n {
		b = lenField(b, 1, nil)
	}
	return b
}

// allocated is what f allocated, in bytes.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestDecodeBoundsRefuseEarly: a response under the 4 MiB transport bound
// whose few megabytes are millions of 2-byte elements (a list's items, a
// Struct's fields, localities, lb_endpoints, ClusterIPs) is refused while
// it is decoded, naming the cluster or resource and the bound, having
// allocated a few megabytes at most: before, the CDS one allocated 663 MB
// (402 MB of heap at its peak) and the EDS one was accepted at 244 MB.
func TestDecodeBoundsRefuseEarly(t *testing.T) {
	const many = 1_900_000
	const maxAlloc = 20 << 20
	geoName := "outbound|0||geo.shop.svc.cluster.local"
	list := func(n int) []byte { return lenField(nil, 1, entry("x", lenField(nil, 6, emptyValues(n)))) }
	structOf := func(n int) []byte { return lenField(nil, 1, entry("x", lenField(nil, 5, emptyValues(n)))) }
	big := lenField(nil, 1, entry("x", lenField(nil, 3, []byte(strings.Repeat("a", MaxMetadataBytes)))))
	// 70 clusters of 7,600 values each: every one under the cluster's
	// bound, together over the response's. Each is decoded whole, so
	// these allocate about as much as a legitimate response of the
	// longest policies does (3 MiB of them: 196 policies, 412,000
	// values), not a few megabytes; what the bound keeps is the time
	// and allocation of a million values more.
	var spread []resource
	for i := range 70 {
		spread = append(spread, resource{clusterType, specCluster(fmt.Sprintf("c%d", i), fmt.Sprintf("s%d", i), lenField(nil, 1, entry("x", lenField(nil, 6, emptyValues(7600)))))})
	}
	cds := func(more []byte) []resource { return []resource{{clusterType, specCluster(geoName, "geo", more)}} }

	name := lenField(nil, 1, []byte(geo))
	emptyLocalities := func(b []byte, n int) []byte {
		for range n {
			b = lenField(b, 2, nil)
		}
		return b
	}
	localities := emptyLocalities(name, many)
	var lbs []byte
	for range many {
		lbs = lenField(lbs, 2, nil)
	}
	oneLocality := lenField(name, 2, lbs)
	var addrs []byte
	for range many {
		addrs = lenField(addrs, 4, nil)
	}
	vips := lenField(name, 5, entry(ClusterIPName, addrs))
	// Localities across resources: the bound is the response's.
	var perService []resource
	for i := range 30 {
		cla := emptyLocalities(lenField(nil, 1, []byte(wellknown.EndpointName(fmt.Sprintf("s%d", i), "shop", 80))), 1000)
		perService = append(perService, resource{endpointType, cla})
	}

	for _, tt := range []struct {
		name      string
		eds       bool
		resources []resource
		want      string
		maxAlloc  uint64
	}{
		// The probe's: 3.8 MB of metadata.
		{"CDS: a list of 1.9M empty values", false, cds(list(many)), `cluster "` + geoName + `": metadata minimesh.io: 3800057 bytes, over the sidecar's bound of 65536`, maxAlloc},
		{"CDS: a Struct of 1.9M fields", false, cds(structOf(many)), `cluster "` + geoName + `": metadata minimesh.io: 3800057 bytes, over the sidecar's bound of 65536`, maxAlloc},
		{"CDS: a list of 10,000 values in 20 KB", false, cds(list(10000)), `cluster "` + geoName + `": metadata minimesh.io: more than 8192 values (fields and list items): over the sidecar's bound`, maxAlloc},
		{"CDS: a Struct of 10,000 fields in 20 KB", false, cds(structOf(10000)), `cluster "` + geoName + `": metadata minimesh.io: more than 8192 values (fields and list items): over the sidecar's bound`, maxAlloc},
		{"CDS: metadata over 64 KiB", false, cds(big), `cluster "` + geoName + `": metadata minimesh.io: 65587 bytes, over the sidecar's bound of 65536`, maxAlloc},
		{"CDS: values spread over clusters", false, spread, `cluster "c68": the clusters of one response hold more than 524288 metadata values in all`, 200 << 20},
		{"EDS: 1.9M empty localities", true, []resource{{endpointType, localities}}, `endpoints "` + geo + `": more than 20000 localities in one response`, maxAlloc},
		{"EDS: 1.9M empty lb_endpoints", true, []resource{{endpointType, oneLocality}}, `endpoints "` + geo + `": more than 20000 lb_endpoints in one response`, maxAlloc},
		{"EDS: 1.9M ClusterIPs", true, []resource{{endpointType, vips}}, `endpoints "` + geo + `": more than 2 additional ClusterIP addresses`, maxAlloc},
		{"EDS: localities over resources", true, perService, `endpoints "s20.shop.svc.cluster.local:80": more than 20000 localities in one response`, maxAlloc},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			n := allocated(func() {
				if tt.eds {
					_, _, _, _, err = decodeEDS(tt.resources)
				} else {
					_, _, err = decode(tt.resources)
				}
			})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errBound) {
				t.Fatalf("err %v\nwant one with %q, wrapping errBound", err, tt.want)
			}
			t.Logf("allocated %d KB", n>>10)
			if n > tt.maxAlloc {
				t.Errorf("allocated %d MB before refusing, want at most %d", n>>20, tt.maxAlloc>>20)
			}
		})
	}
}

// TestDecodeErrorsBounded: a response of a million resources that are
// not clusters makes a NACK of a few errors, not a million of them
// joined.
func TestDecodeErrorsBounded(t *testing.T) {
	rs := make([]resource, 1_000_000)
	var err error
	n := allocated(func() { _, _, err = decode(rs) })
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d more resources not checked", len(rs)-maxDecodeErrors)) {
		t.Fatalf("err %.300v", err)
	}
	if n > 1<<20 {
		t.Errorf("allocated %d KB", n>>10)
	}
}
