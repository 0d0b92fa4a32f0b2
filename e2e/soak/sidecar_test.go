package soak

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
)

// sidecarBinary is bin/minimesh-proxy (make build; MINIMESH_BIN_DIR).
// Without it the test is skipped, except under CI=true, where it fails.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	p, err := tools.Binary("minimesh-proxy")
	if err != nil {
		proc.Unmet(t, "%v", err)
	}
	return p
}

// sidecar is the running minimesh-proxy.
type sidecar struct {
	proc     *proc.Proc
	outbound string
	admin    string
}

// admin is the client of the admin port: no proxy, no kept connections.
var admin = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

// startSidecar runs the built sidecar on free loopback ports with the
// policy directory and --resolve entries, and waits for /ready. It logs
// at debug level: only there does net/http's "panic serving" appear.
func startSidecar(t *testing.T, bin, dir string, resolve map[string]string) *sidecar {
	t.Helper()
	var s *sidecar
	// On other ports again if one was taken before the sidecar bound it.
	if _, err := freeport.Start(2, func(addrs []string) error {
		s = &sidecar{outbound: addrs[0], admin: addrs[1]}
		args := []string{"run",
			"--outbound-addr", s.outbound, "--admin-addr", s.admin,
			"--policy-dir", dir, "--service-name", "soak",
			"--log-level", "debug", "--access-log", "off",
			"--connect-timeout", "1s", "--drain-timeout", "2s",
		}
		for host, addr := range resolve {
			args = append(args, "--resolve", host+"="+addr)
		}
		s.proc = proc.StartT(t, "minimesh-proxy", bin, args, proc.Options{OutputMax: 64 << 20})
		return s.proc.WaitReady(15*time.Second, func() error {
			code, body := s.get("/ready")
			if code != http.StatusOK {
				return fmt.Errorf("/ready: %d %s", code, body)
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// get sends GET http://admin/path and returns the status and body
// (status 0 and the error on failure).
func (s *sidecar) get(path string) (int, string) {
	resp, err := admin.Get("http://" + s.admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// figures are the sidecar's resource use and counters at one moment.
type figures struct {
	goroutines int
	fds        int   // open descriptors, from /proc
	rss        int64 // bytes
	requests   map[string]float64
	reloads    map[string]float64
}

func (f figures) String() string {
	return fmt.Sprintf("%d goroutines, %d fds, RSS %.1f MiB", f.goroutines, f.fds, float64(f.rss)/(1<<20))
}

// total sums requests whose code is accepted by keep.
func (f figures) total(keep func(code int) bool) float64 {
	var n float64
	for code, v := range f.requests {
		c, _ := strconv.Atoi(code)
		if keep(c) {
			n += v
		}
	}
	return n
}

func all(int) bool { return true }

// figures scrapes /metrics and reads /proc/PID/fd.
func (s *sidecar) figures() (figures, error) {
	f := figures{requests: map[string]float64{}, reloads: map[string]float64{}}
	code, body := s.get("/metrics")
	if code != http.StatusOK {
		return f, fmt.Errorf("/metrics: %d %s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return f, fmt.Errorf("parsing /metrics: %w", err)
	}
	f.goroutines = int(value(mfs["go_goroutines"]))
	f.rss = int64(value(mfs["process_resident_memory_bytes"]))
	for _, m := range metrics(mfs["minimesh_requests_total"]) {
		f.requests[label(m, "code")] += m.GetCounter().GetValue()
	}
	for _, m := range metrics(mfs["minimesh_policy_reloads_total"]) {
		f.reloads[label(m, "result")] += m.GetCounter().GetValue()
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.proc.Pid()))
	if err != nil {
		return f, err
	}
	f.fds = len(ents)
	return f, nil
}

func metrics(mf *dto.MetricFamily) []*dto.Metric {
	if mf == nil {
		return nil
	}
	return mf.GetMetric()
}

func value(mf *dto.MetricFamily) float64 {
	var v float64
	for _, m := range metrics(mf) {
		v += m.GetGauge().GetValue()
	}
	return v
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
