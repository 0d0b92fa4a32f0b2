package promtext

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// NewGoCollector returns the go_* families that client_golang's default Go
// collector (collectors.NewGoCollector) serves, with the same names, HELP,
// types and values: goroutines and threads, go_info, the GC pause summary,
// GOGC, GOMEMLIMIT, GOMAXPROCS and the go_memstats_* figures. They are read
// with runtime/metrics, debug.ReadGCStats and runtime.ThreadCreateProfile,
// none of which stops the world (runtime.ReadMemStats would).
func NewGoCollector() Collector {
	c := &goCollector{samples: make([]metrics.Sample, rmCount)}
	for i, name := range rmNames {
		c.samples[i].Name = name
	}
	c.gc.PauseQuantiles = make([]time.Duration, 5)
	for _, g := range goGauges {
		c.descs_ = append(c.descs_, newDesc(g.name, g.help, g.typ, nil))
	}
	c.gcDesc = newDesc("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", typeSummary, nil)
	c.infoDesc = newDesc("go_info", "Information about the Go environment.", typeGauge, []string{"version"})
	c.descs_ = append(c.descs_, c.gcDesc, c.infoDesc)
	return c
}

type goCollector struct {
	descs_           []*desc // goGauges' in order, then gcDesc and infoDesc
	gcDesc, infoDesc *desc

	mu      sync.Mutex // guards what a scrape reads into
	samples []metrics.Sample
	gc      debug.GCStats
	threads float64
}

func (c *goCollector) descs() []*desc { return c.descs_ }

func (c *goCollector) collect(emit emitFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	metrics.Read(c.samples)
	debug.ReadGCStats(&c.gc)
	n, _ := runtime.ThreadCreateProfile(nil)
	c.threads = float64(n)
	for i, g := range goGauges {
		if v, ok := g.value(c); ok {
			emit(c.descs_[i], nil, scalar(v))
		}
	}
	q := c.gc.PauseQuantiles
	emit(c.gcDesc, nil, Summary{
		Count: uint64(c.gc.NumGC),
		Sum:   c.gc.PauseTotal.Seconds(),
		Quantiles: []Quantile{{0, q[0].Seconds()}, {0.25, q[1].Seconds()}, {0.5, q[2].Seconds()},
			{0.75, q[3].Seconds()}, {1, q[4].Seconds()}},
	})
	emit(c.infoDesc, []string{runtime.Version()}, scalar(1))
}

// rm returns a runtime/metrics value; false if this Go has no such metric.
func (c *goCollector) rm(i int) (float64, bool) {
	v := c.samples[i].Value
	switch v.Kind() {
	case metrics.KindUint64:
		return float64(v.Uint64()), true
	case metrics.KindFloat64:
		return v.Float64(), true
	}
	return 0, false
}

// u is a runtime/metrics value as a uint64, 0 if missing: go_memstats_*
// are sums of them.
func (c *goCollector) u(i int) uint64 {
	if v := c.samples[i].Value; v.Kind() == metrics.KindUint64 {
		return v.Uint64()
	}
	return 0
}

// The runtime/metrics read at each scrape, by index.
const (
	rmGOGC = iota
	rmMemLimit
	rmGOMAXPROCS
	rmTinyAllocs
	rmAllocObjects
	rmFreeObjects
	rmAllocBytes
	rmHeapObjects
	rmHeapGoal
	rmTotal
	rmHeapObjectBytes
	rmHeapUnused
	rmHeapReleased
	rmHeapFree
	rmHeapStacks
	rmOSStacks
	rmMSpanInuse
	rmMSpanFree
	rmMCacheInuse
	rmMCacheFree
	rmProfBuckets
	rmMetadataOther
	rmOther
	rmCount
)

var rmNames = [rmCount]string{
	rmGOGC:            "/gc/gogc:percent",
	rmMemLimit:        "/gc/gomemlimit:bytes",
	rmGOMAXPROCS:      "/sched/gomaxprocs:threads",
	rmTinyAllocs:      "/gc/heap/tiny/allocs:objects",
	rmAllocObjects:    "/gc/heap/allocs:objects",
	rmFreeObjects:     "/gc/heap/frees:objects",
	rmAllocBytes:      "/gc/heap/allocs:bytes",
	rmHeapObjects:     "/gc/heap/objects:objects",
	rmHeapGoal:        "/gc/heap/goal:bytes",
	rmTotal:           "/memory/classes/total:bytes",
	rmHeapObjectBytes: "/memory/classes/heap/objects:bytes",
	rmHeapUnused:      "/memory/classes/heap/unused:bytes",
	rmHeapReleased:    "/memory/classes/heap/released:bytes",
	rmHeapFree:        "/memory/classes/heap/free:bytes",
	rmHeapStacks:      "/memory/classes/heap/stacks:bytes",
	rmOSStacks:        "/memory/classes/os-stacks:bytes",
	rmMSpanInuse:      "/memory/classes/metadata/mspan/inuse:bytes",
	rmMSpanFree:       "/memory/classes/metadata/mspan/free:bytes",
	rmMCacheInuse:     "/memory/classes/metadata/mcache/inuse:bytes",
	rmMCacheFree:      "/memory/classes/metadata/mcache/free:bytes",
	rmProfBuckets:     "/memory/classes/profiling/buckets:bytes",
	rmMetadataOther:   "/memory/classes/metadata/other:bytes",
	rmOther:           "/memory/classes/other:bytes",
}

// goGauge is one single-series family of the Go collector.
type goGauge struct {
	name, typ, help string
	value           func(c *goCollector) (float64, bool)
}

func rmValue(i int) func(*goCollector) (float64, bool) {
	return func(c *goCollector) (float64, bool) { return c.rm(i) }
}

func sumOf(is ...int) func(*goCollector) (float64, bool) {
	return func(c *goCollector) (float64, bool) {
		var n uint64
		for _, i := range is {
			n += c.u(i)
		}
		return float64(n), true
	}
}

// goGauges: the HELP texts are client_golang's, word for word, so that
// the families read the same to Prometheus.
var goGauges = []goGauge{
	{"go_gc_gogc_percent", typeGauge, "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent function. Sourced from /gc/gogc:percent.", rmValue(rmGOGC)},
	{"go_gc_gomemlimit_bytes", typeGauge, "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function. Sourced from /gc/gomemlimit:bytes.", rmValue(rmMemLimit)},
	// runtime.NumGoroutine, as client_golang: /sched/goroutines:goroutines
	// counts the runtime's own goroutines too.
	{"go_goroutines", typeGauge, "Number of goroutines that currently exist.", func(*goCollector) (float64, bool) {
		return float64(runtime.NumGoroutine()), true
	}},
	{"go_memstats_alloc_bytes", typeGauge, "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.", sumOf(rmHeapObjectBytes)},
	{"go_memstats_alloc_bytes_total", typeCounter, "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.", sumOf(rmAllocBytes)},
	{"go_memstats_buck_hash_sys_bytes", typeGauge, "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.", sumOf(rmProfBuckets)},
	{"go_memstats_frees_total", typeCounter, "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.", sumOf(rmFreeObjects, rmTinyAllocs)},
	{"go_memstats_gc_sys_bytes", typeGauge, "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.", sumOf(rmMetadataOther)},
	{"go_memstats_heap_alloc_bytes", typeGauge, "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.", sumOf(rmHeapObjectBytes)},
	{"go_memstats_heap_idle_bytes", typeGauge, "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", sumOf(rmHeapReleased, rmHeapFree)},
	{"go_memstats_heap_inuse_bytes", typeGauge, "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes", sumOf(rmHeapObjectBytes, rmHeapUnused)},
	{"go_memstats_heap_objects", typeGauge, "Number of currently allocated objects. Equals to /gc/heap/objects:objects.", sumOf(rmHeapObjects)},
	{"go_memstats_heap_released_bytes", typeGauge, "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.", sumOf(rmHeapReleased)},
	{"go_memstats_heap_sys_bytes", typeGauge, "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", sumOf(rmHeapObjectBytes, rmHeapUnused, rmHeapReleased, rmHeapFree)},
	{"go_memstats_last_gc_time_seconds", typeGauge, "Number of seconds since 1970 of last garbage collection.", func(c *goCollector) (float64, bool) {
		return float64(c.gc.LastGC.UnixNano()) / 1e9, true
	}},
	{"go_memstats_mallocs_total", typeCounter, "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.", sumOf(rmAllocObjects, rmTinyAllocs)},
	{"go_memstats_mcache_inuse_bytes", typeGauge, "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.", sumOf(rmMCacheInuse)},
	{"go_memstats_mcache_sys_bytes", typeGauge, "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.", sumOf(rmMCacheInuse, rmMCacheFree)},
	{"go_memstats_mspan_inuse_bytes", typeGauge, "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.", sumOf(rmMSpanInuse)},
	{"go_memstats_mspan_sys_bytes", typeGauge, "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.", sumOf(rmMSpanInuse, rmMSpanFree)},
	{"go_memstats_next_gc_bytes", typeGauge, "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.", sumOf(rmHeapGoal)},
	{"go_memstats_other_sys_bytes", typeGauge, "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.", sumOf(rmOther)},
	{"go_memstats_stack_inuse_bytes", typeGauge, "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.", sumOf(rmHeapStacks)},
	{"go_memstats_stack_sys_bytes", typeGauge, "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.", sumOf(rmHeapStacks, rmOSStacks)},
	{"go_memstats_sys_bytes", typeGauge, "Number of bytes obtained from system. Equals to /memory/classes/total:byte.", sumOf(rmTotal)},
	{"go_sched_gomaxprocs_threads", typeGauge, "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously. Sourced from /sched/gomaxprocs:threads.", rmValue(rmGOMAXPROCS)},
	{"go_threads", typeGauge, "Number of OS threads created.", func(c *goCollector) (float64, bool) { return c.threads, true }},
}
