package sidecar_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestPolicyDirIgnoredUnderXDS: with the control plane's policies in
// force, --policy-dir is not applied, and its loads are no policy
// reloads. Before, a broken file counted
// minimesh_policy_reloads_total{result="error"} that /debug/config never
// showed (its error only in a debug line), a good one a success that
// changed nothing, and SIGHUP did nothing visible; now each change (and
// each SIGHUP) says at info level that the directory is not in force,
// with the error of a broken file, and counts nothing.
func TestPolicyDirIgnoredUnderXDS(t *testing.T) {
	const ignored = "policy directory not applied: the control plane's policies are in force"
	u := newUpstream(t)
	_, addr, _ := controlPlane(t, "127.0.0.1:0", 3)
	dir, file := policyDir(t, proxytest.GeoPolicy(7))
	r := start(t, sidecar.Config{XDSAddress: addr, PolicyDir: dir, Resolve: map[string]string{geo: u.Host()}})
	if c := r.xdsConfig(t); c.Source != "xds" || c.failures("geo-service") != 3 {
		t.Fatalf("at start: source %q failures %d, want xds's 3", c.Source, c.failures("geo-service"))
	}

	type line struct {
		Level string `json:"level"`
		Msg   string `json:"msg"`
		Error string `json:"error"`
		Count *int   `json:"count"`
	}
	said := func() []line {
		var ls []line
		for _, s := range strings.Split(r.log.String(), "\n") {
			var l line
			if json.Unmarshal([]byte(s), &l) == nil && l.Msg == ignored {
				ls = append(ls, l)
			}
		}
		return ls
	}
	reloads := func() (success, errors float64) {
		ms := r.metrics(t)
		success, _ = ms.Value("minimesh_policy_reloads_total", "result", "success")
		errors, _ = ms.Value("minimesh_policy_reloads_total", "result", "error")
		return success, errors
	}
	// The first load came after the control plane's answer: said too.
	if ls := said(); len(ls) != 1 || ls[0].Level != "INFO" || ls[0].Count == nil || *ls[0].Count != 1 {
		t.Fatalf("at start: %+v, want one info line for the directory's one policy", ls)
	}
	success0, errors0 := reloads()

	for _, c := range []struct {
		name    string
		content string // written to the file first; "" writes nothing (SIGHUP alone)
		error   string // the error the line carries; "" a count instead
	}{
		{"a broken file", "spec: {service: [\n", "invalid YAML"},
		{"a good file", proxytest.GeoPolicy(9), ""},
		{"SIGHUP, nothing changed", "", ""},
	} {
		n := len(said())
		if c.content != "" {
			proxytest.ReplaceFile(t, file, c.content)
		}
		// Whether or not its event came first, SIGHUP makes a look.
		r.sc.Reload()
		var l line
		if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool {
			ls := said()
			if len(ls) > n {
				l = ls[len(ls)-1]
				if c.error == "" {
					return l.Error == ""
				}
				return strings.Contains(l.Error, c.error)
			}
			return false
		}) {
			t.Fatalf("%s: no info line %q (last %+v)", c.name, ignored, l)
		}
		if l.Level != "INFO" || (c.error == "") != (l.Count != nil) {
			t.Errorf("%s: %+v, want an info line with the error or the count", c.name, l)
		}
		if s, e := reloads(); s != success0 || e != errors0 {
			t.Errorf("%s: minimesh_policy_reloads_total success %v error %v, want %v and %v: the directory reloaded nothing",
				c.name, s, e, success0, errors0)
		}
		cfg := r.xdsConfig(t)
		if cfg.Source != "xds" || cfg.failures("geo-service") != 3 || cfg.LastError != "" {
			t.Errorf("%s: /debug/config source %q failures %d lastError %q, want xds's 3 and no error",
				c.name, cfg.Source, cfg.failures("geo-service"), cfg.LastError)
		}
	}
}
