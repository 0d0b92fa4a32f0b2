package policy

import (
	"encoding/json"
	"time"
)

// The JSON forms below write durations as the YAML does ("2s", not
// 2000000000), so that /debug/config reads like the policy file it came
// from.

type jsonDuration time.Duration

func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func durationOrNil(d time.Duration) *jsonDuration {
	if d == 0 {
		return nil
	}
	j := jsonDuration(d)
	return &j
}

// MarshalJSON writes the spec with readable durations.
func (s Spec) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Service          string            `json:"service"`
		Timeout          *jsonDuration     `json:"timeout,omitempty"`
		Retries          *Retries          `json:"retries,omitempty"`
		CircuitBreaker   *CircuitBreaker   `json:"circuitBreaker,omitempty"`
		OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	}{s.Service, durationOrNil(s.Timeout), s.Retries, s.CircuitBreaker, s.OutlierDetection})
}

// MarshalJSON writes the retries with readable durations.
func (r Retries) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Attempts      int           `json:"attempts"`
		PerTryTimeout *jsonDuration `json:"perTryTimeout,omitempty"`
		RetryOn       Conditions    `json:"retryOn"`
		Backoff       Backoff       `json:"backoff"`
		Budget        Budget        `json:"budget"`
	}{r.Attempts, durationOrNil(r.PerTryTimeout), r.RetryOn, r.Backoff, r.Budget})
}

// MarshalJSON writes the backoff with readable durations.
func (b Backoff) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Base jsonDuration `json:"base"`
		Max  jsonDuration `json:"max"`
	}{jsonDuration(b.Base), jsonDuration(b.Max)})
}

// MarshalJSON writes the breaker with readable durations.
func (c CircuitBreaker) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ConsecutiveFailures int          `json:"consecutiveFailures"`
		OpenTimeout         jsonDuration `json:"openTimeout"`
		HalfOpenRequests    int          `json:"halfOpenRequests"`
		FailureRate         *FailureRate `json:"failureRate,omitempty"`
		FailOn              Conditions   `json:"failOn"`
	}{c.ConsecutiveFailures, jsonDuration(c.OpenTimeout), c.HalfOpenRequests, c.FailureRate, c.FailOn})
}

// MarshalJSON writes the failure rate with a readable window.
func (f FailureRate) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Threshold   float64      `json:"threshold"`
		MinRequests int          `json:"minRequests"`
		Window      jsonDuration `json:"window"`
	}{f.Threshold, f.MinRequests, jsonDuration(f.Window)})
}

// MarshalJSON writes outlier detection with readable ejection times.
func (o OutlierDetection) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ConsecutiveFailures int          `json:"consecutiveFailures"`
		BaseEjectionTime    jsonDuration `json:"baseEjectionTime"`
		MaxEjectionTime     jsonDuration `json:"maxEjectionTime"`
		MaxEjectionPercent  int          `json:"maxEjectionPercent"`
	}{o.ConsecutiveFailures, jsonDuration(o.BaseEjectionTime), jsonDuration(o.MaxEjectionTime), o.MaxEjectionPercent})
}
