package observability

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"gopkg.in/yaml.v3"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert         string            `yaml:"alert"`
	Record        string            `yaml:"record"`
	Expr          string            `yaml:"expr"`
	For           string            `yaml:"for"`
	KeepFiringFor string            `yaml:"keep_firing_for"`
	Labels        map[string]string `yaml:"labels"`
	Annotations   map[string]string `yaml:"annotations"`
}

// wantAlerts are the four alerts of the replaced stack, with their `for`.
var wantAlerts = map[string]string{
	"MinimeshCircuitBreakerOpen": "5m",
	"MinimeshHighErrorRate":      "1m",
	"MinimeshHighLatencyP99":     "5m",
	"MinimeshSidecarRestarts":    "",
}

const runbookBase = "https://github.com/minimesh/minimesh/blob/main/docs/dashboards.md#"

// decodeStrict decodes YAML, refusing fields the struct does not know (a
// misspelt "annotation:" would otherwise vanish silently).
func decodeStrict(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// githubAnchors returns the anchors GitHub makes of a Markdown file's
// headings: lower case, punctuation dropped, spaces to hyphens.
func githubAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	out := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		h = drop.ReplaceAllString(strings.ToLower(h), "")
		out[strings.ReplaceAll(h, " ", "-")] = true
	}
	return out
}

func TestAlertRules(t *testing.T) {
	c := newChecker(t)
	var rf ruleFile
	decodeStrict(t, alertsFile, &rf)
	anchors := githubAnchors(t, docsFile)

	seen := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name != "minimesh" {
			t.Errorf("group %q: want the single group minimesh", g.Name)
		}
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("rule %q: only alerting rules belong here", r.Record)
				continue
			}
			t.Run(r.Alert, func(t *testing.T) {
				wantFor, ok := wantAlerts[r.Alert]
				if !ok {
					t.Fatalf("unexpected alert %s", r.Alert)
				}
				if seen[r.Alert] {
					t.Errorf("alert %s defined twice", r.Alert)
				}
				seen[r.Alert] = true
				if r.For != wantFor {
					t.Errorf("for: %q, want %q", r.For, wantFor)
				}
				for _, err := range c.check(r.Expr) {
					t.Error(err)
				}
				t.Logf("metrics: %s", strings.Join(c.metricNames(r.Expr), ", "))
				if s := r.Labels["severity"]; s != "critical" && s != "warning" {
					t.Errorf("severity %q, want critical or warning", s)
				}
				summary, desc := r.Annotations["summary"], r.Annotations["description"]
				if summary == "" || desc == "" {
					t.Errorf("summary %q, description %q: both wanted", summary, desc)
				}
				if both := summary + desc; !strings.Contains(both, "$labels.") || !strings.Contains(both, "$value") {
					t.Errorf("summary and description should name the series ($labels.…) and the value ($value)")
				}
				url := r.Annotations["runbook_url"]
				anchor, ok := strings.CutPrefix(url, runbookBase)
				if !ok {
					t.Errorf("runbook_url %q, want it under %s", url, runbookBase)
				} else if !anchors[anchor] {
					t.Errorf("runbook_url %q: docs/dashboards.md has no heading with anchor #%s", url, anchor)
				}
			})
		}
	}
	for name := range wantAlerts {
		if !seen[name] {
			t.Errorf("alert %s missing", name)
		}
	}
}

// The promtool unit tests feed the rules series by name: those must be
// series the sidecar (or the allow-list) really has, with its labels, or
// the tests prove nothing about production.
func TestAlertTestSeries(t *testing.T) {
	c := newChecker(t)
	var tf struct {
		RuleFiles          []string `yaml:"rule_files"`
		EvaluationInterval string   `yaml:"evaluation_interval"`
		Tests              []struct {
			Name        string `yaml:"name"`
			Interval    string `yaml:"interval"`
			InputSeries []struct {
				Series string `yaml:"series"`
				Values string `yaml:"values"`
			} `yaml:"input_series"`
			AlertRuleTest []struct {
				EvalTime  string `yaml:"eval_time"`
				Alertname string `yaml:"alertname"`
				ExpAlerts []struct {
					ExpLabels      map[string]string `yaml:"exp_labels"`
					ExpAnnotations map[string]string `yaml:"exp_annotations"`
				} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	decodeStrict(t, alertsTest, &tf)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, s := range tc.InputSeries {
			ls, err := c.parser.ParseMetric(s.Series)
			if err != nil {
				t.Errorf("%s: series %s: %v", tc.Name, s.Series, err)
				continue
			}
			have, err := c.labelsOf(ls.Get(model.MetricNameLabel))
			if err != nil {
				t.Errorf("%s: %v", tc.Name, err)
				continue
			}
			ls.Range(func(l labels.Label) {
				if l.Name != model.MetricNameLabel && !have[l.Name] {
					t.Errorf("%s: series %s: label %q does not exist on it", tc.Name, s.Series, l.Name)
				}
			})
		}
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for name := range wantAlerts {
		if !fires[name] || !quiet[name] {
			t.Errorf("%s: want a promtool case where it fires (%v) and one where it stays quiet (%v)", name, fires[name], quiet[name])
		}
	}
}

// promtool finds promtool; without it the test is skipped on a developer's
// machine but fails in CI, where `make tools` must have installed it.
func promtool(t *testing.T) string { return proc.NeedTool(t, "promtool") }

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool(t), args...)
	cmd.Dir = alertsDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

func TestPromtoolCheckRules(t *testing.T) {
	runPromtool(t, "check", "rules", filepath.Base(alertsFile))
}

func TestPromtoolTestRules(t *testing.T) {
	runPromtool(t, "test", "rules", filepath.Base(alertsTest))
}
