package telemetry

import (
	"strconv"
	"testing"
)

// TestRetryReasonIsBounded: a retry's reason that is a status code goes
// through the destination's code list (MaxCodes), which its requests
// share: past 32 distinct codes a further one counts as its class. The
// upstream chooses its codes, and one answering 500 to 599 in turn made
// 100 series of minimesh_retries_total per destination, with no cap.
func TestRetryReasonIsBounded(t *testing.T) {
	const dest = "geo-service:8000"
	fivexx := func(d *Destination) {
		for code := 500; code < 600; code++ {
			d.Retry(strconv.Itoa(code))
		}
	}
	for _, tc := range []struct {
		name string
		do   func(d *Destination)
		want map[string]float64 // retries_total by reason, for dest
		// requests: requests_total by code, for dest (nil: not looked at)
		requests map[string]float64
	}{
		{
			name: "100 distinct 5xx codes",
			do:   fivexx,
			want: func() map[string]float64 {
				w := map[string]float64{"5xx": 100 - MaxCodes}
				for code := 500; code < 500+MaxCodes; code++ {
					w[strconv.Itoa(code)] = 1
				}
				return w
			}(),
		},
		{
			name: "the requests' codes took the places",
			do: func(d *Destination) {
				for code := 200; code < 200+MaxCodes; code++ {
					d.Observe("GET", code, 0.001)
				}
				d.Retry("503") // past the cap: its class
				fivexx(d)
			},
			want: map[string]float64{"5xx": 101},
		},
		{
			name: "a code the requests have keeps its label",
			do: func(d *Destination) {
				d.Observe("GET", 503, 0.001)
				for code := 200; code < 200+MaxCodes-1; code++ {
					d.Observe("GET", code, 0.001)
				}
				d.Retry("503")
				d.Retry("503")
				d.Retry("502")
			},
			want: map[string]float64{"503": 2, "5xx": 1},
		},
		{
			name: "the retries' codes took the places",
			do: func(d *Destination) {
				fivexx(d)
				d.Observe("GET", 404, 0.001)
				d.Observe("GET", 500, 0.001)
			},
			want: func() map[string]float64 {
				w := map[string]float64{"5xx": 100 - MaxCodes}
				for code := 500; code < 500+MaxCodes; code++ {
					w[strconv.Itoa(code)] = 1
				}
				return w
			}(),
			requests: map[string]float64{"4xx": 1, "500": 1},
		},
		{
			name: "the sidecar's own reasons past the cap",
			do: func(d *Destination) {
				fivexx(d)
				for _, r := range []string{"connect-failure", "reset", "timeout", "grpc-unavailable", "connect-failure"} {
					d.Retry(r)
				}
			},
			want: func() map[string]float64 {
				w := map[string]float64{"5xx": 100 - MaxCodes, "connect-failure": 2, "reset": 1, "timeout": 1, "grpc-unavailable": 1}
				for code := 500; code < 500+MaxCodes; code++ {
					w[strconv.Itoa(code)] = 1
				}
				return w
			}(),
		},
		{
			name: "a code outside 100-599",
			do: func(d *Destination) {
				d.Retry("999")
				d.Retry("099")
				d.Retry("503")
			},
			want: map[string]float64{"other": 2, "503": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(0)
			tc.do(m.Destination(dest))
			m.Destination("other-service:80").Retry("503") // a list of its own
			fams, _ := scrape(t, m)
			got := map[string]float64{}
			for _, s := range fams["minimesh_retries_total"].series {
				if s.labels["destination"] == dest {
					got[s.labels["reason"]] += s.value
				}
			}
			if !sameValues(got, tc.want) {
				t.Errorf("minimesh_retries_total{destination=%q} by reason = %v (%d series), want %v (%d)", dest, got, len(got), tc.want, len(tc.want))
			}
			if got := fams["minimesh_retries_total"].values("destination")["other-service:80"]; got != 1 {
				t.Errorf("another destination's retries = %v, want 1", got)
			}
			if tc.requests != nil {
				got := map[string]float64{}
				for _, s := range fams["minimesh_requests_total"].series {
					if s.labels["destination"] == dest {
						got[s.labels["code"]] += s.value
					}
				}
				if !sameValues(got, tc.requests) {
					t.Errorf("minimesh_requests_total{destination=%q} by code = %v, want %v", dest, got, tc.requests)
				}
			}
		})
	}
}

func sameValues(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRetryAllocs: counting a retry allocates nothing, a code's as the
// sidecar's own reasons' (the label lookup it did before allocated
// nothing either).
func TestRetryAllocs(t *testing.T) {
	d := New(0).Destination("geo-service:8000")
	for _, reason := range []string{"503", "5xx past the cap", "connect-failure", "grpc-unavailable"} {
		if reason == "5xx past the cap" {
			for code := 500; code < 600; code++ {
				d.Retry(strconv.Itoa(code))
			}
			reason = "599"
		}
		d.Retry(reason)
		if n := testing.AllocsPerRun(100, func() { d.Retry(reason) }); n != 0 {
			t.Errorf("Retry(%q): %v allocations, want 0", reason, n)
		}
	}
}

func BenchmarkRetry(b *testing.B) {
	for _, reason := range []string{"503", "connect-failure"} {
		b.Run(reason, func(b *testing.B) {
			d := New(0).Destination("geo-service:8000")
			b.ReportAllocs()
			for b.Loop() {
				d.Retry(reason)
			}
		})
	}
}
