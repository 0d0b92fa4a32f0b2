package observability

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/e2e/internal/grafana"
)

// wantDashboards are the dashboards the chart ships; their uid and title
// are stable, since links and bookmarks use them.
var wantDashboards = map[string]struct{ uid, title string }{
	"minimesh-outbound.json":         {"minimesh-outbound", "minimesh / Outbound traffic"},
	"minimesh-services.json":         {"minimesh-services", "minimesh / Services overview"},
	"minimesh-circuit-breakers.json": {"minimesh-circuit-breakers", "minimesh / Circuit breakers"},
}

// The dashboards' model lives in e2e/internal/grafana, shared with the
// cluster's live checks.
type (
	dashboard  = grafana.Dashboard
	datasource = grafana.Datasource
	panel      = grafana.Panel
	variable   = grafana.Variable
)

// promDatasource is what every panel and query variable must use: the
// dashboard's datasource variable, so that one import works on any
// Grafana whatever its Prometheus datasource is called.
var promDatasource = datasource{Type: "prometheus", UID: "${datasource}"}

var (
	walkPanels    = grafana.WalkPanels
	dashboardVars = grafana.DefaultVars
	labelValues   = grafana.LabelValues
	substitute    = grafana.Substitute
)

// checkDashboard returns every problem of one dashboard: structure,
// variables, datasources, panel ids, and each expression's metrics.
func checkDashboard(c *checker, d dashboard) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if d.UID == "" || d.Title == "" {
		fail("uid %q, title %q: both must be set", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		fail("schemaVersion %d: want 36 or more", d.SchemaVersion)
	}

	vars := dashboardVars(d)
	byName := map[string]variable{}
	for _, v := range d.Templating.List {
		if _, dup := byName[v.Name]; dup {
			fail("variable %q defined twice", v.Name)
		}
		byName[v.Name] = v
	}
	if v, ok := byName["datasource"]; !ok || v.Type != "datasource" || v.QueryString() != "prometheus" {
		fail("want a variable datasource of type datasource, query prometheus; got %+v", v)
	}
	for _, name := range []string{"namespace", "service"} {
		v, ok := byName[name]
		if !ok || v.Type != "query" {
			fail("want a query variable %q", name)
			continue
		}
		if m := labelValues.FindStringSubmatch(v.QueryString()); m == nil || m[2] != name {
			fail("variable %q: query %q, want label_values(<selector>, %s)", name, v.QueryString(), name)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		if v.Datasource == nil || *v.Datasource != promDatasource {
			fail("variable %q: datasource %+v, want %+v", v.Name, v.Datasource, promDatasource)
		}
		m := labelValues.FindStringSubmatch(v.QueryString())
		if m == nil {
			fail("variable %q: query %q is not label_values(<selector>, <label>)", v.Name, v.QueryString())
			continue
		}
		expr, err := substitute(m[1], vars)
		if err != nil {
			fail("variable %q: %v", v.Name, err)
			continue
		}
		for _, err := range c.check(expr) {
			fail("variable %q: %v", v.Name, err)
		}
		for _, name := range c.metricNames(expr) {
			if ls, err := c.labelsOf(name); err == nil && !ls[m[2]] {
				fail("variable %q: %s has no label %q", v.Name, name, m[2])
			}
		}
	}

	ids := map[int]string{}
	walkPanels(d.Panels, func(p panel) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 {
			fail("%s: id must be positive", where)
		} else if other, dup := ids[p.ID]; dup {
			fail("%s: id %d already used by %q", where, p.ID, other)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			fail("%s: no title", where)
		}
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 {
			fail("%s: gridPos %+v outside the 24-column grid", where, g)
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				fail("%s: a row has no queries", where)
			}
			return
		}
		if len(p.Panels) > 0 {
			fail("%s: only rows nest panels", where)
		}
		if p.Datasource == nil || *p.Datasource != promDatasource {
			fail("%s: datasource %+v, want %+v", where, p.Datasource, promDatasource)
		}
		if p.FieldConfig.Defaults.Unit == "" {
			fail("%s: no unit", where)
		}
		if len(p.Targets) == 0 {
			fail("%s: no queries", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				fail("%s: refId %q empty or repeated", where, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && *tg.Datasource != promDatasource {
				fail("%s, query %s: datasource %+v, want %+v", where, tg.RefID, tg.Datasource, promDatasource)
			}
			if strings.Contains(tg.Expr, "histogram_quantile") && p.Type != "table" && p.FieldConfig.Defaults.Unit != "s" {
				fail("%s: a latency quantile wants unit s, not %q", where, p.FieldConfig.Defaults.Unit)
			}
			expr, err := substitute(tg.Expr, vars)
			if err != nil {
				fail("%s, query %s: %v", where, tg.RefID, err)
				continue
			}
			for _, err := range c.check(expr) {
				fail("%s, query %s: %v", where, tg.RefID, err)
			}
		}
	})
	return errs
}

func loadDashboard(t *testing.T, path string) (dashboard, []byte) {
	t.Helper()
	d, raw, err := grafana.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return d, raw
}

func TestDashboards(t *testing.T) {
	c := newChecker(t)
	files, err := filepath.Glob(filepath.Join(dashboardsDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	uids := map[string]string{}
	units := map[string]bool{}
	for _, path := range files {
		name := filepath.Base(path)
		found[name] = true
		t.Run(name, func(t *testing.T) {
			d, _ := loadDashboard(t, path)
			if want, ok := wantDashboards[name]; ok && (d.UID != want.uid || d.Title != want.title) {
				t.Errorf("uid %q title %q, want %q %q", d.UID, d.Title, want.uid, want.title)
			}
			if other, dup := uids[d.UID]; dup {
				t.Errorf("uid %q already used by %s", d.UID, other)
			}
			uids[d.UID] = name
			for _, err := range checkDashboard(c, d) {
				t.Error(err)
			}
			metrics := map[string]bool{}
			panels := 0
			walkPanels(d.Panels, func(p panel) {
				panels++
				units[p.FieldConfig.Defaults.Unit] = true
				for _, tg := range p.Targets {
					if expr, err := substitute(tg.Expr, map[string]string{"namespace": "x", "service": "x", "destination": "x", "job": "x"}); err == nil {
						for _, m := range c.metricNames(expr) {
							metrics[m] = true
						}
					}
				}
			})
			t.Logf("%d panels; metrics: %s", panels, keys(metrics))
		})
	}
	for name := range wantDashboards {
		if !found[name] {
			t.Errorf("dashboard %s missing from %s", name, dashboardsDir)
		}
	}
	for _, u := range []string{"reqps", "s", "percentunit", "bytes"} {
		if !units[u] {
			t.Errorf("no panel uses unit %q", u)
		}
	}
}

// The dashboard check must be able to fail: a panel naming a metric the
// sidecar does not export, hidden in a collapsed row, a repeated panel id,
// a panel without the datasource variable, an undefined variable.
func TestDashboardCheckRejects(t *testing.T) {
	c := newChecker(t)
	_, raw := loadDashboard(t, filepath.Join(dashboardsDir, "minimesh-outbound.json"))
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	ds := map[string]any{"type": "prometheus", "uid": "${datasource}"}
	doc["panels"] = append(doc["panels"].([]any), map[string]any{
		"id": 9001, "type": "row", "title": "Hidden", "collapsed": true,
		"gridPos": map[string]any{"h": 1, "w": 24, "x": 0, "y": 100},
		"panels": []any{
			map[string]any{
				"id": 9002, "type": "timeseries", "title": "Fake", "datasource": ds,
				"gridPos":     map[string]any{"h": 8, "w": 12, "x": 0, "y": 101},
				"fieldConfig": map[string]any{"defaults": map[string]any{"unit": "reqps"}},
				"targets": []any{map[string]any{"refId": "A", "datasource": ds,
					"expr": `sum(rate(minimesh_nonexistent_total{namespace=~"$namespace"}[$__rate_interval]))`}},
			},
			map[string]any{
				"id": 9002, "type": "timeseries", "title": "Same id, no datasource",
				"gridPos":     map[string]any{"h": 8, "w": 12, "x": 12, "y": 101},
				"fieldConfig": map[string]any{"defaults": map[string]any{"unit": "reqps"}},
				"targets": []any{map[string]any{"refId": "A",
					"expr": `sum(rate(minimesh_requests_total{pod=~"$pod"}[$__rate_interval]))`}},
			},
		},
	})
	mutated, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(mutated, &d); err != nil {
		t.Fatal(err)
	}
	errs := checkDashboard(c, d)
	var got []string
	for _, err := range errs {
		got = append(got, err.Error())
	}
	sort.Strings(got)
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"minimesh_nonexistent_total is not exported",
		"id 9002 already used",
		`panel 9002 "Same id, no datasource": datasource <nil>`,
		"undefined variable(s) pod",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("checkDashboard missed %q; it reported:\n%s", want, all)
		}
	}
	if len(errs) != 4 {
		t.Errorf("checkDashboard reported %d problems, want exactly the 4 planted:\n%s", len(errs), all)
	}
}
