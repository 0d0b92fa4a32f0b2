package proxytest

import (
	"bufio"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

// Sample is one sample of the Prometheus text exposition format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics are the samples of one scrape, in order.
type Metrics []Sample

var (
	sampleRE     = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelRE      = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	labelUnquote = strings.NewReplacer(`\\`, `\`, `\"`, `"`, `\n`, "\n")
)

// ParseMetrics parses the text exposition format. Every line that is
// not blank or a comment must be a sample.
func ParseMetrics(text string) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("unparsable metrics line %q", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		labels := map[string]string{}
		for _, l := range labelRE.FindAllStringSubmatch(m[2], -1) {
			labels[l[1]] = labelUnquote.Replace(l[2])
		}
		out = append(out, Sample{m[1], labels, v})
	}
	return out, sc.Err()
}

// ScrapeMetrics gets and parses http://adminAddr/metrics.
func ScrapeMetrics(adminAddr string) (Metrics, error) {
	code, body := Get("http://" + adminAddr + "/metrics")
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d %s", code, body)
	}
	ms, err := ParseMetrics(body)
	if err != nil {
		return nil, fmt.Errorf("parsing /metrics: %w", err)
	}
	return ms, nil
}

// Value sums the samples named name whose labels include the given
// name/value pairs, and reports whether there was one. For a histogram,
// name the series: name_bucket (with le), name_count or name_sum.
func (ms Metrics) Value(name string, labels ...string) (float64, bool) {
	if len(labels)%2 != 0 {
		panic("labels must be name/value pairs")
	}
	var sum float64
	found := false
next:
	for _, m := range ms {
		if m.Name != name {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			if m.Labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		sum += m.Value
		found = true
	}
	return sum, found
}
