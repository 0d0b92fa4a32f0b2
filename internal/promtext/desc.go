package promtext

import (
	"fmt"
	"slices"
	"strings"
)

// The values of the TYPE line.
const (
	typeCounter   = "counter"
	typeGauge     = "gauge"
	typeHistogram = "histogram"
	typeSummary   = "summary"
)

// desc describes one metric family: its name, HELP text, TYPE and label
// names. order lists the label indices sorted by label name: the text
// format's label order, and the order in which series are sorted.
type desc struct {
	name, help, typ string
	labels          []string
	order           []int
}

func newDesc(name, help, typ string, labels []string) *desc {
	if !validMetricName(name) {
		panic(fmt.Sprintf("promtext: invalid metric name %q", name))
	}
	d := &desc{name: name, help: help, typ: typ, labels: slices.Clone(labels)}
	seen := map[string]bool{}
	for i, l := range labels {
		if !validLabelName(l) || strings.HasPrefix(l, "__") {
			panic(fmt.Sprintf("promtext: %s: invalid label name %q", name, l))
		}
		if (typ == typeHistogram && l == "le") || (typ == typeSummary && l == "quantile") {
			panic(fmt.Sprintf("promtext: %s: label %q is reserved for a %s", name, l, typ))
		}
		if seen[l] {
			panic(fmt.Sprintf("promtext: %s: label %q twice", name, l))
		}
		seen[l] = true
		d.order = append(d.order, i)
	}
	slices.SortFunc(d.order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	return d
}

// checkValues panics unless values has one value per label.
func (d *desc) checkValues(values []string) {
	if len(values) != len(d.labels) {
		d.badValues(len(values))
	}
}

// badValues panics; apart from checkValues so that the values do not
// escape (a variadic With would allocate).
func (d *desc) badValues(n int) {
	panic(fmt.Sprintf("promtext: %s has %d labels %v, got %d values", d.name, len(d.labels), d.labels, n))
}

// less orders two series of the family by their label values, taken in
// label-name order.
func (d *desc) less(a, b []string) int {
	for _, i := range d.order {
		if c := strings.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	return 0
}

func validMetricName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c == ':' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (i > 0 && '0' <= c && c <= '9') {
			continue
		}
		return false
	}
	return true
}

func validLabelName(s string) bool {
	return validMetricName(s) && !strings.Contains(s, ":")
}
