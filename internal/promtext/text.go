package promtext

import (
	"math"
	"strconv"
)

// sample is one series' value(s), written as the text format's lines.
type sample interface {
	appendText(b []byte, d *desc, values []string) []byte
}

// scalar is a counter's or gauge's value.
type scalar float64

func (s scalar) appendText(b []byte, d *desc, values []string) []byte {
	return appendLine(b, d, "", values, "", 0, float64(s))
}

// histogramSample is a histogram read at scrape time.
type histogramSample struct {
	bounds     []float64 // without +Inf
	cumulative []uint64  // one more than bounds: the last is +Inf, the count
	sum        float64
}

func (h histogramSample) appendText(b []byte, d *desc, values []string) []byte {
	for i, le := range h.bounds {
		b = appendLine(b, d, "_bucket", values, "le", le, float64(h.cumulative[i]))
	}
	count := float64(h.cumulative[len(h.cumulative)-1])
	b = appendLine(b, d, "_bucket", values, "le", math.Inf(+1), count)
	b = appendLine(b, d, "_sum", values, "", 0, h.sum)
	return appendLine(b, d, "_count", values, "", 0, count)
}

// appendHeader appends the family's # HELP and # TYPE lines.
func appendHeader(b []byte, d *desc) []byte {
	b = append(b, "# HELP "...)
	b = append(b, d.name...)
	b = append(b, ' ')
	b = appendEscaped(b, d.help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, d.name...)
	b = append(b, ' ')
	b = append(b, d.typ...)
	return append(b, '\n')
}

// appendLine appends one sample line: the family's name and suffix, the
// labels in name order, then extra (le or quantile) if named, and v.
func appendLine(b []byte, d *desc, suffix string, values []string, extra string, extraValue, v float64) []byte {
	b = append(b, d.name...)
	b = append(b, suffix...)
	if len(values) > 0 || extra != "" {
		sep := byte('{')
		for _, i := range d.order {
			b = append(b, sep)
			b = append(b, d.labels[i]...)
			b = append(b, '=', '"')
			b = appendEscaped(b, values[i], true)
			b = append(b, '"')
			sep = ','
		}
		if extra != "" {
			b = append(b, sep)
			b = append(b, extra...)
			b = append(b, '=', '"')
			b = appendFloat(b, extraValue)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendFloat(b, v)
	return append(b, '\n')
}

// appendFloat formats f as the text format does: +Inf, -Inf, NaN, else
// the shortest 'g' form that reads back as f (1e+06, 0.0001, 2.5).
func appendFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, +1):
		return append(b, "+Inf"...)
	case math.IsInf(f, -1):
		return append(b, "-Inf"...)
	case f == 0:
		return append(b, '0') // -0 too, as client_golang writes it
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}

// appendEscaped escapes a backslash and a newline, and in a label value
// (quoted) a double quote too.
func appendEscaped(b []byte, s string, quoted bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, '\\', '\\')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '"' && quoted:
			b = append(b, '\\', '"')
		default:
			b = append(b, c)
		}
	}
	return b
}
