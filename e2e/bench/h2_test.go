package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

const h2loadOut = `finished in 3.00s, 200.00 req/s, 54.34KB/s
requests: 400 total, 402 started, 398 done, 395 succeeded, 3 failed, 1 errored, 0 timeout
status codes: 396 2xx, 0 3xx, 0 4xx, 2 5xx
`

func TestParseH2Load(t *testing.T) {
	r, err := parseH2Load(h2loadOut)
	if err != nil {
		t.Fatal(err)
	}
	if r.started != 402 || r.done != 398 || r.succeeded != 395 || r.failed != 3 || r.errored != 1 || r.ok2xx != 396 {
		t.Errorf("got %+v", r)
	}
	r.duration = 2 * time.Second
	r.lat = []time.Duration{time.Millisecond}
	s := h2Sample("x", 1, r)
	if s.errors != 2+4 || s.qps != 199 || s.requests != 398 {
		t.Errorf("sample %+v", s)
	}
	if _, err := parseH2Load("nothing"); err == nil {
		t.Error("no summary: want an error")
	}
}

func TestParseH2Log(t *testing.T) {
	lat, err := parseH2Log("1796152288908636\t200\t143\n1796152288908766\t200\t1165\n\n")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lat, []time.Duration{143 * time.Microsecond, 1165 * time.Microsecond}) {
		t.Errorf("got %v", lat)
	}
	if _, err := parseH2Log(""); err == nil {
		t.Error("empty log: want an error")
	}
	var sorted []time.Duration
	for i := 1; i <= 100; i++ {
		sorted = append(sorted, time.Duration(i))
	}
	for p, want := range map[float64]time.Duration{50: 50, 90: 90, 99: 99, 100: 100} {
		if got := percentile(sorted, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

func TestH2Args(t *testing.T) {
	l := h2Spec{addr: "127.0.0.1:1", authority: "127.0.0.1:2", qps: 1000, conns: 4, streams: 10,
		duration: 10 * time.Second, warmup: 2 * time.Second}
	got := strings.Join(l.args("/tmp/log"), " ")
	want := "-c 4 -m 10 --rps 250 -D 10 --log-file /tmp/log --warm-up-time 2 -H :authority: 127.0.0.1:2 http://127.0.0.1:1/"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestH2PeerConfigs(t *testing.T) {
	dir := t.TempDir()
	checkNginx(t, "nginx", dir, nginxH2Config(dir, "127.0.0.1:1", "127.0.0.1:2", 2))
	checkHAProxy(t, dir, haproxyH2Config("127.0.0.1:1", "127.0.0.1:2", 2))
}

func TestParseFlagsH2(t *testing.T) {
	o, err := parseFlags([]string{"-h2", "-h2-streams", "4"})
	if err != nil || !o.h2 || o.h2Streams != 4 {
		t.Fatalf("%+v, %v", o, err)
	}
	if _, err := parseFlags([]string{"-h2", "-transparent"}); err == nil {
		t.Error("-h2 with -transparent: want an error")
	}
	if _, err := parseFlags([]string{"-h2-streams", "0"}); err == nil {
		t.Error("-h2-streams 0: want an error")
	}
	// The scenarios it has peers for; Caddy, left out by default, and
	// the extra ones named are an error, not a silent omission.
	if _, err := parseFlags([]string{"-h2", "-scenarios", "minimesh,nginx,haproxy"}); err != nil {
		t.Errorf("-h2 -scenarios minimesh,nginx,haproxy: %v", err)
	}
	for _, k := range []string{"haproxy-1", "caddy", "nginx-log", "go-relay"} {
		if _, err := parseFlags([]string{"-h2", "-scenarios", "minimesh," + k}); err == nil {
			t.Errorf("-h2 -scenarios minimesh,%s: want an error", k)
		}
	}
}

// TestH2Smoke runs the -h2 mode once, briefly, against every target:
// each answers h2c with no error and the report has its row.
func TestH2Smoke(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	proc.NeedTool(t, "h2load")
	proc.NeedTool(t, "nginx")
	proc.NeedTool(t, "haproxy")
	if _, err := tools.Binary("minimesh-proxy"); err != nil {
		proc.Unmet(t, "%v (make build)", err)
	}
	out := filepath.Join(t.TempDir(), "report.md")
	o, err := parseFlags([]string{"-h2", "-runs", "1", "-t", "1s", "-warmup", "0", "-qps", "200", "-c", "2", "-out", out})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, o); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{"| direct | ", "| minimesh-proxy | ", "| nginx | ", "| haproxy | "} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
