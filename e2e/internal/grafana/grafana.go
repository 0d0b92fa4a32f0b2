// Package grafana reads the chart's Grafana dashboards the way Grafana
// would run them: their panels' and variables' PromQL, with the template
// variables replaced by the values Grafana sends by default. The
// dashboards' static checks (e2e/observability) and the live ones against
// a real Prometheus (there, and in the cluster: e2e/cluster) share it.
package grafana

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Dashboard is the part of a dashboard's JSON model the tests read.
type Dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []Panel `json:"panels"`
	Templating    struct {
		List []Variable `json:"list"`
	} `json:"templating"`
}

type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type Panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Datasource  *Datasource              `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *Datasource `json:"datasource"`
	} `json:"targets"`
	Panels []Panel `json:"panels"` // a row's panels (collapsed rows hold theirs here)
}

type Variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "..."} for the Prometheus variable editor
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
	Datasource *Datasource     `json:"datasource"`
}

// QueryString is the variable's query whichever form it is stored in.
func (v Variable) QueryString() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	if json.Unmarshal(v.Query, &o) == nil {
		return o.Query
	}
	return ""
}

// Load reads one dashboard file; raw is its bytes.
func Load(path string) (d Dashboard, raw []byte, err error) {
	if raw, err = os.ReadFile(path); err != nil {
		return d, nil, err
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, raw, nil
}

// WalkPanels calls f for every panel, rows' nested panels included.
func WalkPanels(ps []Panel, f func(Panel)) {
	for _, p := range ps {
		f(p)
		WalkPanels(p.Panels, f)
	}
}

// DefaultVars returns the value each of the dashboard's variables takes
// by default, which is what the expressions are checked with: a constant's
// value, "All" as its allValue, anything else a plain word.
func DefaultVars(d Dashboard) map[string]string {
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		switch {
		case v.Type == "constant" || v.Type == "textbox":
			vars[v.Name] = v.QueryString()
		case v.IncludeAll && v.AllValue != "":
			vars[v.Name] = v.AllValue
		default:
			vars[v.Name] = "x"
		}
	}
	return vars
}

// LabelValues matches a query variable's label_values(expr, label).
var LabelValues = regexp.MustCompile(`^\s*label_values\(\s*(.+)\s*,\s*([a-zA-Z_]\w*)\s*\)\s*$`)

// Query is one PromQL expression of a dashboard and where it is.
type Query struct {
	Where string // "variable namespace", `panel 3 "Request rate" query A`
	Expr  string // as written, variables not substituted
}

// Queries are every expression the dashboard sends: its query variables'
// label_values and its panels' targets.
func Queries(d Dashboard) []Query {
	var qs []Query
	for _, v := range d.Templating.List {
		if m := LabelValues.FindStringSubmatch(v.QueryString()); v.Type == "query" && m != nil {
			qs = append(qs, Query{"variable " + v.Name, m[1]})
		}
	}
	WalkPanels(d.Panels, func(p Panel) {
		for _, tg := range p.Targets {
			qs = append(qs, Query{fmt.Sprintf("panel %d %q query %s", p.ID, p.Title, tg.RefID), tg.Expr})
		}
	})
	return qs
}

// grafanaVar matches Grafana's variable syntaxes: $name, ${name},
// ${name:format} and the deprecated [[name]].
var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w-]+)?\]\]`)

// builtinVars are Grafana's own variables, with values valid where they are
// used: durations in range selectors, numbers elsewhere.
var builtinVars = map[string]string{
	"__rate_interval": "5m",
	"__interval":      "1m",
	"__range":         "1h",
	"__interval_ms":   "60000",
	"__range_ms":      "3600000",
	"__range_s":       "3600",
}

// Substitute replaces every Grafana variable in expr with a value valid for
// PromQL: the dashboard's own variables by the value Grafana would send by
// default (a constant's value, "All" as allValue), builtins as above unless
// vars overrides them.
// A variable that is neither is an error: Grafana would leave it in place.
func Substitute(expr string, vars map[string]string) (string, error) {
	var missing []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(s string) string {
		sm := grafanaVar.FindStringSubmatch(s)
		name := sm[1] + sm[2] + sm[3]
		if v, ok := vars[name]; ok {
			return v
		}
		if v, ok := builtinVars[name]; ok {
			return v
		}
		missing = append(missing, name)
		return s
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("undefined variable(s) %s in %q", strings.Join(missing, ", "), expr)
	}
	return out, nil
}
