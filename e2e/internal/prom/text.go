package prom

import (
	"fmt"
	"strconv"
	"strings"
)

// TextValue is the value of the first sample of metric name in a text
// exposition (a /metrics page) whose labels include these name, value
// pairs; ok is false when there is none. For reading one process's page
// without a Prometheus; a longer name that starts with name is another
// metric.
func TextValue(exposition, name string, labels ...string) (v float64, ok bool) {
	for line := range strings.Lines(exposition) {
		rest, found := strings.CutPrefix(strings.TrimRight(line, "\n"), name)
		if !found || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(rest, fmt.Sprintf("%s=%q", labels[i], labels[i+1])) {
				match = false
			}
		}
		if !match {
			continue
		}
		if x, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64); err == nil {
			return x, true
		}
	}
	return 0, false
}
