package policy

import (
	"time"

	"gopkg.in/yaml.v3"
)

// spec decodes spec and applies the defaults. Values that parse but are
// out of bounds are stored as written: validate reports them with their
// position. It returns false when spec is not a mapping.
func (d *objDecoder) spec(path string, n *yaml.Node, s *Spec) bool {
	present := d.mapping(n, path, []field{
		{"service", func(fp string, v *yaml.Node) {
			str, ok := d.str(fp, v)
			if !ok {
				return
			}
			norm, err := NormalizeService(str)
			if err != nil {
				d.failAt(v, fp, "%v", err)
				return
			}
			s.Service = norm
		}},
		{"timeout", func(fp string, v *yaml.Node) {
			s.Timeout, _ = d.optionalDuration(fp, v, "no timeout")
		}},
		{"retries", func(fp string, v *yaml.Node) { s.Retries = d.retries(fp, v) }},
		{"circuitBreaker", func(fp string, v *yaml.Node) { s.CircuitBreaker = d.breaker(fp, v) }},
		{"outlierDetection", func(fp string, v *yaml.Node) { s.OutlierDetection = d.outlierDetection(fp, v) }},
	})
	if present == nil {
		return false
	}
	if !present["service"] {
		d.missing(n, join(path, "service"), `host[:port] or "*"`)
	}
	if s.CircuitBreaker == nil {
		s.CircuitBreaker = DefaultCircuitBreaker()
	}
	if s.OutlierDetection == nil {
		s.OutlierDetection = DefaultOutlierDetection()
	}
	return true
}

// retries returns nil when the node is not a mapping; the error is
// reported and the policy dropped anyway.
func (d *objDecoder) retries(path string, n *yaml.Node) *Retries {
	r := &Retries{
		RetryOn: DefaultRetryOn,
		Backoff: Backoff{Base: DefaultBackoffBase, Max: DefaultBackoffMax},
		Budget:  Budget{Ratio: DefaultBudgetRatio, MinPerSecond: DefaultBudgetMinPerSecond},
	}
	present := d.mapping(n, path, []field{
		{"attempts", func(fp string, v *yaml.Node) { r.Attempts, _ = d.integer(fp, v) }},
		{"perTryTimeout", func(fp string, v *yaml.Node) {
			r.PerTryTimeout, _ = d.optionalDuration(fp, v, "only the whole-request timeout")
		}},
		{"retryOn", func(fp string, v *yaml.Node) {
			if c, ok := d.conditions(fp, v); ok {
				r.RetryOn = c
			}
		}},
		{"backoff", func(fp string, v *yaml.Node) { d.backoff(fp, v, &r.Backoff) }},
		{"budget", func(fp string, v *yaml.Node) {
			d.mapping(v, fp, []field{
				{"ratio", func(fp string, v *yaml.Node) {
					if x, ok := d.number(fp, v); ok {
						r.Budget.Ratio = x
					}
				}},
				{"minPerSecond", func(fp string, v *yaml.Node) {
					if x, ok := d.integer(fp, v); ok {
						r.Budget.MinPerSecond = x
					}
				}},
			})
		}},
	})
	if present == nil {
		return nil
	}
	// No default: whether to retry, and how often, is the one decision a
	// retries block exists to state.
	if !present["attempts"] {
		d.missing(n, join(path, "attempts"), "the number of extra tries, 0-10")
	}
	return r
}

// backoff fills the bounds that are written and derives a missing one
// from the other, so that writing only base: 1s does not fail on the
// default max being smaller.
func (d *objDecoder) backoff(path string, n *yaml.Node, b *Backoff) {
	var base, max time.Duration
	var haveBase, haveMax bool
	d.mapping(n, path, []field{
		{"base", func(fp string, v *yaml.Node) { base, haveBase = d.duration(fp, v) }},
		{"max", func(fp string, v *yaml.Node) { max, haveMax = d.duration(fp, v) }},
	})
	if haveBase {
		b.Base = base
		if !haveMax && base > b.Max {
			b.Max = base
		}
	}
	if haveMax {
		b.Max = max
		if !haveBase && max > 0 && max < b.Base {
			b.Base = max
		}
	}
}

func (d *objDecoder) breaker(path string, n *yaml.Node) *CircuitBreaker {
	b := DefaultCircuitBreaker()
	d.mapping(n, path, []field{
		{"consecutiveFailures", func(fp string, v *yaml.Node) {
			if x, ok := d.integer(fp, v); ok {
				b.ConsecutiveFailures = x
			}
		}},
		{"openTimeout", func(fp string, v *yaml.Node) {
			if x, ok := d.duration(fp, v); ok {
				b.OpenTimeout = x
			}
		}},
		{"halfOpenRequests", func(fp string, v *yaml.Node) {
			if x, ok := d.integer(fp, v); ok {
				b.HalfOpenRequests = x
			}
		}},
		{"failureRate", func(fp string, v *yaml.Node) { b.FailureRate = d.failureRate(fp, v) }},
		{"failOn", func(fp string, v *yaml.Node) {
			if c, ok := d.conditions(fp, v); ok {
				b.FailOn = c
			}
		}},
	})
	return b
}

// failureRate has no defaults: a rate without its window and minimum
// is not a rule anyone could predict.
func (d *objDecoder) failureRate(path string, n *yaml.Node) *FailureRate {
	fr := &FailureRate{}
	present := d.mapping(n, path, []field{
		{"threshold", func(fp string, v *yaml.Node) { fr.Threshold, _ = d.number(fp, v) }},
		{"minRequests", func(fp string, v *yaml.Node) { fr.MinRequests, _ = d.integer(fp, v) }},
		{"window", func(fp string, v *yaml.Node) { fr.Window, _ = d.duration(fp, v) }},
	})
	if present == nil {
		return nil
	}
	for _, name := range []string{"threshold", "minRequests", "window"} {
		if !present[name] {
			d.missing(n, join(path, name), map[string]string{
				"threshold":   "the failure share that opens the breaker, in (0, 1]",
				"minRequests": "the requests needed in the window before the rate counts",
				"window":      "a duration such as 10s",
			}[name])
		}
	}
	return fr
}

// outlierDetection fills the fields that are written over the defaults.
// Like backoff's bounds, a missing ejection time is derived from the
// other, so that writing only baseEjectionTime: 10m does not fail on the
// default maxEjectionTime (5m) being smaller.
func (d *objDecoder) outlierDetection(path string, n *yaml.Node) *OutlierDetection {
	o := DefaultOutlierDetection()
	var base, max time.Duration
	var haveBase, haveMax bool
	d.mapping(n, path, []field{
		{"consecutiveFailures", func(fp string, v *yaml.Node) {
			if x, ok := d.integer(fp, v); ok {
				o.ConsecutiveFailures = x
			}
		}},
		{"baseEjectionTime", func(fp string, v *yaml.Node) { base, haveBase = d.duration(fp, v) }},
		{"maxEjectionTime", func(fp string, v *yaml.Node) { max, haveMax = d.duration(fp, v) }},
		{"maxEjectionPercent", func(fp string, v *yaml.Node) {
			if x, ok := d.integer(fp, v); ok {
				o.MaxEjectionPercent = x
			}
		}},
	})
	if haveBase {
		o.BaseEjectionTime = base
		if !haveMax && base > o.MaxEjectionTime {
			o.MaxEjectionTime = base
		}
	}
	if haveMax {
		o.MaxEjectionTime = max
		if !haveBase && max > 0 && max < o.BaseEjectionTime {
			o.BaseEjectionTime = max
		}
	}
	return o
}
