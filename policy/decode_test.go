package policy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

const header = "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\n"

func defaultRetries(attempts int) *Retries {
	return &Retries{
		Attempts: attempts,
		RetryOn:  DefaultRetryOn,
		Backoff:  Backoff{Base: DefaultBackoffBase, Max: DefaultBackoffMax},
		Budget:   Budget{Ratio: DefaultBudgetRatio, MinPerSecond: DefaultBudgetMinPerSecond},
	}
}

func conds(items ...string) Conditions {
	var c Conditions
	for _, s := range items {
		class, code, err := ParseCondition(s)
		if err != nil {
			panic(err)
		}
		c.Add(class, code)
	}
	return c
}

func TestDecodeGood(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want Spec
	}{{
		name: "minimal gets the breaker defaults and no retries",
		yaml: header + "spec:\n  service: auth-service\n",
		want: Spec{Service: "auth-service", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection()},
	}, {
		name: "service is lowercased, trailing dot and port zeros dropped",
		yaml: header + "spec: {service: 'Auth-Service.Bakery.:08000'}\n",
		want: Spec{Service: "auth-service.bakery:8000", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection()},
	}, {
		name: "default policy",
		yaml: header + "spec: {service: '*', timeout: 1m}\n",
		want: Spec{Service: "*", Timeout: time.Minute, CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection()},
	}, {
		name: "retries with only attempts get every default",
		yaml: header + "spec:\n  service: a\n  retries: {attempts: 0}\n",
		want: Spec{Service: "a", Retries: defaultRetries(0), CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection()},
	}, {
		name: "partial breaker keeps the other defaults",
		yaml: header + "spec:\n  service: a\n  circuitBreaker: {consecutiveFailures: 1}\n",
		want: Spec{Service: "a", CircuitBreaker: &CircuitBreaker{
			ConsecutiveFailures: 1, OpenTimeout: DefaultOpenTimeout,
			HalfOpenRequests: DefaultHalfOpenRequests, FailOn: DefaultFailOn,
		}, OutlierDetection: DefaultOutlierDetection()},
	}, {
		name: "backoff base alone raises the default max",
		yaml: header + "spec:\n  service: a\n  retries: {attempts: 1, backoff: {base: 1s}}\n",
		want: Spec{Service: "a", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection(), Retries: func() *Retries {
			r := defaultRetries(1)
			r.Backoff = Backoff{Base: time.Second, Max: time.Second}
			return r
		}()},
	}, {
		name: "backoff max alone lowers the default base",
		yaml: header + "spec:\n  service: a\n  retries: {attempts: 1, backoff: {max: 10ms}}\n",
		want: Spec{Service: "a", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: DefaultOutlierDetection(), Retries: func() *Retries {
			r := defaultRetries(1)
			r.Backoff = Backoff{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond}
			return r
		}()},
	}, {
		name: "bare status codes, aliases and a budget of zero",
		yaml: header + "spec:\n  service: a\n  retries:\n    attempts: 10\n    retryOn: &c [503, '429', reset]\n" +
			"    budget: {ratio: 0, minPerSecond: 0}\n  circuitBreaker:\n    failOn: *c\n",
		want: Spec{Service: "a",
			Retries: func() *Retries {
				r := defaultRetries(10)
				r.RetryOn = conds("reset", "429", "503")
				r.Budget = Budget{}
				return r
			}(),
			CircuitBreaker: &CircuitBreaker{
				ConsecutiveFailures: DefaultConsecutiveFailures, OpenTimeout: DefaultOpenTimeout,
				HalfOpenRequests: DefaultHalfOpenRequests, FailOn: conds("503", "429", "reset"),
			},
			OutlierDetection: DefaultOutlierDetection()},
	}, {
		name: "perTryTimeout equal to timeout, bounds at their limits",
		yaml: header + "spec:\n  service: a\n  timeout: 1s\n  retries: {attempts: 1, perTryTimeout: 1s, budget: {ratio: 1}}\n" +
			"  circuitBreaker: {consecutiveFailures: 1000, halfOpenRequests: 1, failureRate: {threshold: 1, minRequests: 1, window: 1ms}}\n" +
			"  outlierDetection: {consecutiveFailures: 1000, baseEjectionTime: 1ms, maxEjectionTime: 24h, maxEjectionPercent: 100}\n",
		want: Spec{Service: "a", Timeout: time.Second,
			Retries: func() *Retries {
				r := defaultRetries(1)
				r.PerTryTimeout = time.Second
				r.Budget.Ratio = 1
				return r
			}(),
			CircuitBreaker: &CircuitBreaker{
				ConsecutiveFailures: 1000, OpenTimeout: DefaultOpenTimeout, HalfOpenRequests: 1,
				FailureRate: &FailureRate{Threshold: 1, MinRequests: 1, Window: time.Millisecond},
				FailOn:      DefaultFailOn,
			},
			OutlierDetection: &OutlierDetection{ConsecutiveFailures: 1000, BaseEjectionTime: time.Millisecond, MaxEjectionTime: 24 * time.Hour, MaxEjectionPercent: 100}},
	}, {
		name: "outlier detection off keeps its other defaults",
		yaml: header + "spec:\n  service: a\n  outlierDetection: {consecutiveFailures: 0}\n",
		want: Spec{Service: "a", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: &OutlierDetection{
			BaseEjectionTime: DefaultBaseEjectionTime, MaxEjectionTime: DefaultMaxEjectionTime, MaxEjectionPercent: DefaultMaxEjectionPercent,
		}},
	}, {
		name: "baseEjectionTime alone raises the default maxEjectionTime",
		yaml: header + "spec:\n  service: a\n  outlierDetection: {baseEjectionTime: 10m}\n",
		want: Spec{Service: "a", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: &OutlierDetection{
			ConsecutiveFailures: DefaultEjectionConsecutiveFailures, BaseEjectionTime: 10 * time.Minute, MaxEjectionTime: 10 * time.Minute,
			MaxEjectionPercent: DefaultMaxEjectionPercent,
		}},
	}, {
		name: "maxEjectionTime alone lowers the default baseEjectionTime",
		yaml: header + "spec:\n  service: a\n  outlierDetection: {maxEjectionTime: 10s, maxEjectionPercent: 1}\n",
		want: Spec{Service: "a", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: &OutlierDetection{
			ConsecutiveFailures: DefaultEjectionConsecutiveFailures, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 10 * time.Second,
			MaxEjectionPercent: 1,
		}},
	}, {
		name: "both ejection times written are kept as written",
		yaml: header + "spec:\n  service: a\n  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 1h, maxEjectionTime: 1h}\n",
		want: Spec{Service: "a", CircuitBreaker: DefaultCircuitBreaker(), OutlierDetection: &OutlierDetection{
			ConsecutiveFailures: 3, BaseEjectionTime: time.Hour, MaxEjectionTime: time.Hour, MaxEjectionPercent: DefaultMaxEjectionPercent,
		}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Decode("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if len(ps) != 1 {
				t.Fatalf("got %d policies, want 1", len(ps))
			}
			p := ps[0]
			if p.APIVersion != APIVersion || p.Kind != Kind || p.Source != "p.yaml:1:1" {
				t.Errorf("header = %q %q %q", p.APIVersion, p.Kind, p.Source)
			}
			if !reflect.DeepEqual(p.Spec, tt.want) {
				t.Errorf("spec:\n got %s\nwant %s", dump(p.Spec), dump(tt.want))
			}
		})
	}
}

// dump shows a spec with its pointers followed, for failure messages.
func dump(s Spec) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestDecodeFiles(t *testing.T) {
	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join("testdata/good", name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	t.Run("full example", func(t *testing.T) {
		ps, err := Decode("full.yaml", read("full.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		want := &ResiliencePolicy{
			APIVersion: APIVersion, Kind: Kind,
			Metadata: ObjectMeta{Name: "nominatim", Namespace: "bakery-ia"},
			Source:   "full.yaml:2:1",
			Spec: Spec{
				Service: "nominatim-service",
				Timeout: 2 * time.Second,
				Retries: &Retries{
					Attempts:      2,
					PerTryTimeout: 500 * time.Millisecond,
					RetryOn:       conds("connect-failure", "502", "503", "504"),
					Backoff:       Backoff{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond},
					Budget:        Budget{Ratio: 0.2, MinPerSecond: 10},
				},
				CircuitBreaker: &CircuitBreaker{
					ConsecutiveFailures: 5, OpenTimeout: time.Minute, HalfOpenRequests: 2,
					FailureRate: &FailureRate{Threshold: 0.5, MinRequests: 20, Window: 10 * time.Second},
					FailOn:      conds("5xx", "connect-failure", "timeout"),
				},
				OutlierDetection: &OutlierDetection{
					ConsecutiveFailures: 3, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 2 * time.Minute, MaxEjectionPercent: 34,
				},
			},
		}
		if len(ps) != 1 || !reflect.DeepEqual(ps[0], want) {
			t.Errorf("got %+v", ps)
		}
	})
	t.Run("multi-document with empty documents", func(t *testing.T) {
		ps, err := Decode("multi.yaml", read("multi.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.Spec.Service+"@"+p.Source+"/"+p.Metadata.Name)
		}
		want := []string{
			"*@multi.yaml:6:1/default",
			"auth-service:8000@multi.yaml:14:1/auth",
			"tenant-service.bakery-ia.svc.cluster.local@multi.yaml:24:1/tenant",
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %q\nwant %q", got, want)
		}
		if ps[1].Spec.Retries.RetryOn.Strings()[0] != "5xx" || ps[2].Spec.CircuitBreaker.ConsecutiveFailures != 10 {
			t.Errorf("fields not decoded: %+v %+v", ps[1].Spec.Retries, ps[2].Spec.CircuitBreaker)
		}
	})
	t.Run("kubectl export with status and managedFields", func(t *testing.T) {
		ps, err := Decode("k.yaml", read("kubectl-export.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 1 || ps[0].Metadata != (ObjectMeta{Name: "orders", Namespace: "bakery-ia"}) || ps[0].Spec.Timeout != 5*time.Second {
			t.Errorf("got %+v", ps[0])
		}
	})
	t.Run("List", func(t *testing.T) {
		ps, err := Decode("list.yaml", read("list.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 2 || ps[0].Spec.Service != "a-service" || ps[1].Source != "list.yaml:10:3" {
			t.Errorf("got %+v", ps)
		}
	})
	t.Run("JSON", func(t *testing.T) {
		ps, err := Decode("payments.json", read("payments.json"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 1 || ps[0].Spec.Retries.Backoff != (Backoff{Base: time.Second, Max: time.Second}) {
			t.Errorf("got %+v", ps[0].Spec.Retries)
		}
	})
}

func TestDecodeEmpty(t *testing.T) {
	for _, in := range []string{"", "---\n", "# nothing\n", "---\n---\n...\n", "~\n"} {
		ps, err := Decode("e.yaml", []byte(in))
		if err != nil || len(ps) != 0 {
			t.Errorf("Decode(%q) = %v, %v; want nothing", in, ps, err)
		}
	}
}

// TestDecodeReportsEveryDocument checks that a bad document neither hides
// the errors of the next one nor lets the good ones through.
func TestDecodeReportsEveryDocument(t *testing.T) {
	in := header + "spec: {service: a, timeout: x}\n---\n" + header + "spec: {service: b}\n---\n" + header + "spec: {service: c, retries: {}}\n"
	ps, err := Decode("f.yaml", []byte(in))
	if ps != nil {
		t.Errorf("got policies %v with an error", ps)
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("err = %T %v", err, err)
	}
	want := "f.yaml:3:29: spec.timeout: want a duration such as 2s or 500ms, got string \"x\"\n" +
		"f.yaml:11:29: spec.retries.attempts: required field is missing: want the number of extra tries, 0-10"
	if err.Error() != want {
		t.Errorf("got\n%s\nwant\n%s", err, want)
	}
	if list[0].File != "f.yaml" || list[0].Line != 3 || list[0].Column != 29 || list[0].Field != "spec.timeout" {
		t.Errorf("fields of first error: %+v", list[0])
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "a.yaml", Line: 3, Column: 5, Field: "spec.timeout", Msg: "bad"}, "a.yaml:3:5: spec.timeout: bad"},
		{Error{File: "a.yaml", Line: 1, Column: 1, Msg: "invalid YAML: x"}, "a.yaml:1:1: invalid YAML: x"},
		{Error{Field: "spec.service", Msg: "bad"}, "spec.service: bad"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}
