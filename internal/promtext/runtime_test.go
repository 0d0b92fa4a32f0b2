package promtext

import (
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// TestRuntimeFamiliesAsClientGolang: NewGoCollector and
// NewProcessCollector serve the families client_golang's default Go and
// process collectors serve: same names, HELP, TYPE and labels; the
// values that cannot move between two reads are equal, the others close.
func TestRuntimeFamiliesAsClientGolang(t *testing.T) {
	theirs := prometheus.NewRegistry()
	theirs.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ours := NewRegistry()
	ours.MustRegister(NewGoCollector(), NewProcessCollector())

	runtime.GC()
	want := parse(t, clientText(t, theirs))
	got := parse(t, string(ours.AppendText(nil)))

	var names []string
	for name := range want {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		w, g := want[name], got[name]
		if g == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if g.GetHelp() != w.GetHelp() || g.GetType() != w.GetType() {
			t.Errorf("%s: HELP %q TYPE %v, want HELP %q TYPE %v", name, g.GetHelp(), g.GetType(), w.GetHelp(), w.GetType())
		}
		if len(g.Metric) != len(w.Metric) || !slices.EqualFunc(g.Metric[0].Label, w.Metric[0].Label, func(a, b *dto.LabelPair) bool {
			return a.GetName() == b.GetName() && a.GetValue() == b.GetValue()
		}) {
			t.Errorf("%s: series %v, want %v", name, g.Metric, w.Metric)
		}
	}
	for name := range got {
		if want[name] == nil {
			t.Errorf("%s served, client_golang does not", name)
		}
	}

	value := func(mfs map[string]*dto.MetricFamily, name string) float64 {
		m := mfs[name].GetMetric()[0]
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Summary != nil:
			return float64(m.Summary.GetSampleCount())
		}
		return math.NaN()
	}
	for _, name := range []string{"go_gc_gogc_percent", "go_gc_gomemlimit_bytes", "go_sched_gomaxprocs_threads", "go_info",
		"process_max_fds", "process_virtual_memory_max_bytes", "process_start_time_seconds", "go_memstats_last_gc_time_seconds"} {
		if g, w := value(got, name), value(want, name); g != w {
			t.Errorf("%s = %v, client_golang's %v", name, g, w)
		}
	}
	for name, tolerance := range map[string]float64{
		"go_goroutines": 3, "go_threads": 2, "process_open_fds": 3, "go_gc_duration_seconds": 1,
		"process_cpu_seconds_total": 0.5, "process_resident_memory_bytes": 4 << 20, "process_virtual_memory_bytes": 64 << 20,
		"go_memstats_sys_bytes": 4 << 20, "go_memstats_heap_inuse_bytes": 4 << 20, "go_memstats_alloc_bytes": 4 << 20,
		"go_memstats_stack_inuse_bytes": 1 << 20, "go_memstats_next_gc_bytes": 4 << 20,
	} {
		g, w := value(got, name), value(want, name)
		if math.Abs(g-w) > tolerance || g <= 0 && name != "go_gc_duration_seconds" {
			t.Errorf("%s = %v, client_golang's %v", name, g, w)
		}
	}
}

// TestProcessFiles: the parsing of /proc, on files made for the test: a
// command name with spaces and parentheses, an unlimited soft limit.
func TestProcessFiles(t *testing.T) {
	root := t.TempDir()
	write := func(path, text string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stat", "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n")
	// Fields 14 utime=250, 15 stime=50, 22 starttime=12345, 23 vsize, 24 rss (pages).
	write("42/stat", "42 (my (odd) proc) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 1300692992 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")
	write("42/limits", "Limit                     Soft Limit           Hard Limit           Units     \n"+
		"Max cpu time              unlimited            unlimited            seconds   \n"+
		"Max open files            20000                1048576              files     \n"+
		"Max address space         unlimited            unlimited            bytes     \n")
	write("42/net/netstat", "TcpExt: SyncookiesSent SyncookiesRecv\nTcpExt: 0 0\n"+
		"IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets\n"+
		"IpExt: 0 0 0 0 0 0 111771971188 110453546549\n")
	for _, fd := range []string{"0", "1", "2", "7"} {
		write("42/fd/"+fd, "")
	}
	r := NewRegistry()
	r.MustRegister(newProcessCollector(root, "42"))
	got := string(r.AppendText(nil))
	page := float64(os.Getpagesize())
	for _, want := range []string{
		"process_cpu_seconds_total 3\n",
		"process_max_fds 20000\n",
		"process_network_receive_bytes_total 1.11771971188e+11\n",
		"process_network_transmit_bytes_total 1.10453546549e+11\n",
		"process_open_fds 4\n",
		"process_resident_memory_bytes " + string(appendFloat(nil, 3000*page)) + "\n",
		"process_start_time_seconds " + string(appendFloat(nil, 1700000000+123.45)) + "\n",
		"process_virtual_memory_bytes 1.300692992e+09\n",
		"process_virtual_memory_max_bytes 1.8446744073709552e+19\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}

	// A file that cannot be read leaves its families out, not the scrape.
	if err := os.Remove(filepath.Join(root, "42/net/netstat")); err != nil {
		t.Fatal(err)
	}
	got = string(r.AppendText(nil))
	if strings.Contains(got, "process_network") || !strings.Contains(got, "process_open_fds 4") {
		t.Errorf("without net/netstat:\n%s", got)
	}
}
