// Package policy defines the ResiliencePolicy that minimesh applies per
// destination service: its YAML form, defaults, validation and the lookup of
// the policy that governs a request's destination.
//
// It is the root of the import graph: proxy and injector import policy,
// policy imports neither.
package policy

import "time"

// APIVersion and Kind identify a ResiliencePolicy document.
const (
	APIVersion = "minimesh.io/v1alpha1"
	Kind       = "ResiliencePolicy"
)

// DefaultService is the spec.service of the policy that applies to every
// destination without a policy of its own.
const DefaultService = "*"

// ResiliencePolicy is one destination service's resilience settings.
type ResiliencePolicy struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	Spec       Spec       `json:"spec"`

	// Source says where the policy came from ("policies/a.yaml:3:1",
	// "built-in default", "xds v42"). It is not part of the YAML; the
	// sidecar shows it in /debug/config.
	Source string `json:"source,omitempty"`
}

// ObjectMeta is the part of Kubernetes object metadata a policy uses.
type ObjectMeta struct {
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Spec is what a policy asks of the sidecar for one destination.
//
// After Decode every Spec is defaulted: CircuitBreaker and
// OutlierDetection are never nil; Retries is nil when the policy asks for
// no retries.
type Spec struct {
	// Service is host[:port] or "*". A bare name matches the short,
	// namespaced and .svc.cluster.local forms of the name.
	Service string `json:"service"`
	// Timeout bounds the whole request, retries and response body
	// included. Zero means no timeout.
	Timeout        time.Duration   `json:"timeout,omitempty"`
	Retries        *Retries        `json:"retries,omitempty"`
	CircuitBreaker *CircuitBreaker `json:"circuitBreaker,omitempty"`
	// OutlierDetection ejects single endpoints; CircuitBreaker stops
	// the whole destination.
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
}

// Retries says when and how often a failed request is tried again.
type Retries struct {
	// Attempts is the number of extra tries after the first.
	Attempts int `json:"attempts"`
	// PerTryTimeout bounds each try until its response headers arrive.
	// Zero means only the whole-request Timeout applies.
	PerTryTimeout time.Duration `json:"perTryTimeout,omitempty"`
	RetryOn       Conditions    `json:"retryOn"`
	Backoff       Backoff       `json:"backoff"`
	Budget        Budget        `json:"budget"`
}

// Backoff is exponential with full jitter: retry n (1 for the first)
// waits a random time in (0, min(Max, Base·2ⁿ⁻¹)].
type Backoff struct {
	Base time.Duration `json:"base"`
	Max  time.Duration `json:"max"`
}

// Budget caps retries at Ratio of recent requests, plus MinPerSecond
// retries that are always allowed, so that retries cannot multiply the
// load on a service that is already failing.
type Budget struct {
	Ratio        float64 `json:"ratio"`
	MinPerSecond int     `json:"minPerSecond"`
}

// CircuitBreaker opens after ConsecutiveFailures failures in a row (or a
// FailureRate over a window), stays open OpenTimeout, then lets
// HalfOpenRequests probes through; that many successes close it, one
// failure opens it again.
type CircuitBreaker struct {
	ConsecutiveFailures int           `json:"consecutiveFailures"`
	OpenTimeout         time.Duration `json:"openTimeout"`
	HalfOpenRequests    int           `json:"halfOpenRequests"`
	FailureRate         *FailureRate  `json:"failureRate,omitempty"`
	FailOn              Conditions    `json:"failOn"`
}

// FailureRate opens the breaker when at least MinRequests requests were
// seen in the last Window and the share of failures among them is at
// least Threshold.
type FailureRate struct {
	Threshold   float64       `json:"threshold"`
	MinRequests int           `json:"minRequests"`
	Window      time.Duration `json:"window"`
}

// OutlierDetection takes one endpoint (pod) of a destination out of its
// load balancing after ConsecutiveFailures failures in a row (what
// circuitBreaker.failOn names), for BaseEjectionTime × the number of times
// it was ejected, at most MaxEjectionTime, and never more than
// MaxEjectionPercent of the endpoints at once (at least one).
// ConsecutiveFailures 0 turns ejection off.
//
// It is Envoy's outlier detection (consecutive_5xx, base_ejection_time,
// max_ejection_time, max_ejection_percent) and Linkerd's consecutive
// failure accrual; docs/policy.md, "Per-endpoint ejection".
type OutlierDetection struct {
	ConsecutiveFailures int           `json:"consecutiveFailures"`
	BaseEjectionTime    time.Duration `json:"baseEjectionTime"`
	MaxEjectionTime     time.Duration `json:"maxEjectionTime"`
	MaxEjectionPercent  int           `json:"maxEjectionPercent"`
}

// Enabled says whether endpoints are ever ejected.
func (o *OutlierDetection) Enabled() bool { return o != nil && o.ConsecutiveFailures > 0 }

// Defaults of outlier detection: on, with Envoy's ejection times (30 s
// base, 300 s at most) and at most half of a destination's endpoints out
// at once.
const (
	DefaultEjectionConsecutiveFailures = 5
	DefaultBaseEjectionTime            = 30 * time.Second
	DefaultMaxEjectionTime             = 300 * time.Second
	DefaultMaxEjectionPercent          = 50
)

// DefaultOutlierDetection returns outlier detection configured with the
// defaults.
func DefaultOutlierDetection() *OutlierDetection {
	return &OutlierDetection{
		ConsecutiveFailures: DefaultEjectionConsecutiveFailures,
		BaseEjectionTime:    DefaultBaseEjectionTime,
		MaxEjectionTime:     DefaultMaxEjectionTime,
		MaxEjectionPercent:  DefaultMaxEjectionPercent,
	}
}

// Defaults of the client that minimesh replaces: 5 consecutive failures
// open the breaker, it stays open 60 s, 2 successes in half-open close it.
const (
	DefaultConsecutiveFailures = 5
	DefaultOpenTimeout         = 60 * time.Second
	DefaultHalfOpenRequests    = 2

	DefaultBackoffBase        = 25 * time.Millisecond
	DefaultBackoffMax         = 250 * time.Millisecond
	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 10

	// MaxAttempts bounds retries.attempts: more would turn one request
	// into a storm.
	MaxAttempts = 10

	// MaxStateDuration bounds the durations that set how long a breaker
	// stays open, how far back it counts (failureRate.window) and how long
	// a retry waits (backoff): a day is more than any of them needs, and
	// the sums they take part in (a window plus its bucket, an open time
	// rounded up to seconds, a doubled backoff) stay far from overflow.
	MaxStateDuration = 24 * time.Hour
)

// DefaultFailOn and DefaultRetryOn are used when a policy names none.
var (
	DefaultFailOn  = Conditions{Classes: Class5xx | ClassConnectFailure | ClassReset | ClassTimeout}
	DefaultRetryOn = Conditions{Classes: ClassConnectFailure | ClassReset | ClassGatewayError}
)

// DefaultCircuitBreaker returns a breaker configured with the defaults.
func DefaultCircuitBreaker() *CircuitBreaker {
	return &CircuitBreaker{
		ConsecutiveFailures: DefaultConsecutiveFailures,
		OpenTimeout:         DefaultOpenTimeout,
		HalfOpenRequests:    DefaultHalfOpenRequests,
		FailOn:              DefaultFailOn,
	}
}

// BuiltinDefault is the policy of destinations without a policy of their
// own when no "*" policy was given.
func BuiltinDefault() *ResiliencePolicy {
	return &ResiliencePolicy{
		APIVersion: APIVersion,
		Kind:       Kind,
		Metadata:   ObjectMeta{Name: "builtin-default"},
		Spec:       Spec{Service: DefaultService, CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection()},
		Source:     "built-in default",
	}
}
