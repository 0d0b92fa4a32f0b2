package promtext

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// NewProcessCollector returns the process_* families that client_golang's
// process collector serves on Linux, with the same names, HELP, types and
// values, read from /proc/self: CPU time, resident and virtual memory,
// start time, open and maximum file descriptors, maximum virtual memory,
// and the bytes of the network namespace (IpExt of net/netstat). A family
// whose file cannot be read is left out of the scrape.
func NewProcessCollector() Collector { return newProcessCollector("/proc", "self") }

func newProcessCollector(root, pid string) *processCollector {
	c := &processCollector{root: root, dir: filepath.Join(root, pid)}
	for _, f := range processFamilies {
		c.descs_ = append(c.descs_, newDesc(f.name, f.help, f.typ, nil))
	}
	return c
}

type processCollector struct {
	root, dir string
	descs_    []*desc // processFamilies' in order

	bootOnce sync.Once
	boot     float64 // /proc/stat's btime: seconds since 1970
	bootErr  error
}

// The values of one scrape, NaN where unread.
type processReading [len(processFamilies)]float64

// processFamilies: the HELP texts are client_golang's, word for word.
var processFamilies = [...]struct{ name, typ, help string }{
	{"process_cpu_seconds_total", typeCounter, "Total user and system CPU time spent in seconds."},
	{"process_max_fds", typeGauge, "Maximum number of open file descriptors."},
	{"process_network_receive_bytes_total", typeCounter, "Number of bytes received by the process over the network."},
	{"process_network_transmit_bytes_total", typeCounter, "Number of bytes sent by the process over the network."},
	{"process_open_fds", typeGauge, "Number of open file descriptors."},
	{"process_resident_memory_bytes", typeGauge, "Resident memory size in bytes."},
	{"process_start_time_seconds", typeGauge, "Start time of the process since unix epoch in seconds."},
	{"process_virtual_memory_bytes", typeGauge, "Virtual memory size in bytes."},
	{"process_virtual_memory_max_bytes", typeGauge, "Maximum amount of virtual memory available in bytes."},
}

const (
	pCPU = iota
	pMaxFDs
	pNetIn
	pNetOut
	pOpenFDs
	pRSS
	pStart
	pVSize
	pVSizeMax
)

// userHZ is the unit of /proc/PID/stat's times (sysconf(_SC_CLK_TCK),
// 100 on every Linux platform Go supports; client_golang assumes it too).
const userHZ = 100

func (c *processCollector) descs() []*desc { return c.descs_ }

func (c *processCollector) collect(emit emitFunc) {
	r := c.read()
	for i, v := range r {
		if !math.IsNaN(v) {
			emit(c.descs_[i], nil, scalar(v))
		}
	}
}

func (c *processCollector) read() processReading {
	var r processReading
	for i := range r {
		r[i] = math.NaN()
	}
	if st, err := c.stat(); err == nil {
		r[pCPU] = float64(st.utime+st.stime) / userHZ
		r[pVSize] = float64(st.vsize)
		r[pRSS] = float64(st.rss) * float64(os.Getpagesize())
		if boot, err := c.bootTime(); err == nil {
			r[pStart] = boot + float64(st.starttime)/userHZ
		}
	}
	if ents, err := os.ReadDir(filepath.Join(c.dir, "fd")); err == nil {
		r[pOpenFDs] = float64(len(ents))
	}
	if b, err := os.ReadFile(filepath.Join(c.dir, "limits")); err == nil {
		if v, ok := softLimit(b, "Max open files"); ok {
			r[pMaxFDs] = v
		}
		if v, ok := softLimit(b, "Max address space"); ok {
			r[pVSizeMax] = v
		}
	}
	if b, err := os.ReadFile(filepath.Join(c.dir, "net", "netstat")); err == nil {
		r[pNetIn], r[pNetOut] = 0, 0
		if v, ok := netstatValue(b, "IpExt", "InOctets"); ok {
			r[pNetIn] = v
		}
		if v, ok := netstatValue(b, "IpExt", "OutOctets"); ok {
			r[pNetOut] = v
		}
	}
	return r
}

type procStat struct{ utime, stime, starttime, vsize, rss uint64 }

// stat reads /proc/PID/stat. The command name (field 2) is in parentheses
// and may hold spaces and parentheses: fields are counted from the last ')'.
func (c *processCollector) stat() (procStat, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "stat"))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("stat: no command name")
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 22 {
		return procStat{}, errors.New("stat: too few fields")
	}
	var st procStat
	for _, x := range []struct {
		field int
		to    *uint64
	}{{14, &st.utime}, {15, &st.stime}, {22, &st.starttime}, {23, &st.vsize}, {24, &st.rss}} {
		v, err := strconv.ParseUint(f[x.field-3], 10, 64)
		if err != nil {
			return procStat{}, err
		}
		*x.to = v
	}
	return st, nil
}

// bootTime reads btime of /proc/stat once: it does not change.
func (c *processCollector) bootTime() (float64, error) {
	c.bootOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(c.root, "stat"))
		if err != nil {
			c.bootErr = err
			return
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "btime "); ok {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				c.boot, c.bootErr = float64(n), err
				return
			}
		}
		c.bootErr = errors.New("/proc/stat: no btime")
	})
	return c.boot, c.bootErr
}

// softLimit finds the soft limit of one resource in /proc/PID/limits,
// whose columns are separated by two spaces or more; "unlimited" is the
// largest uint64.
func softLimit(b []byte, name string) (float64, bool) {
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ') {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		if f[0] == "unlimited" {
			return float64(math.MaxUint64), true
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		return float64(v), err == nil
	}
	return 0, false
}

// netstatValue finds one counter in /proc/PID/net/netstat, where each
// section is a line of names ("IpExt: InNoRoutes InTruncatedPkts ...")
// followed by a line of values.
func netstatValue(b []byte, section, name string) (float64, bool) {
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names := strings.Fields(lines[i])
		values := strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != section+":" || len(values) != len(names) || values[0] != names[0] {
			continue
		}
		for j, n := range names {
			if n == name {
				v, err := strconv.ParseFloat(values[j], 64)
				return v, err == nil
			}
		}
		return 0, false
	}
	return 0, false
}
