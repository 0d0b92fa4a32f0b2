package prom

import "testing"

func TestTextValue(t *testing.T) {
	const page = `# HELP go_sched_gomaxprocs_threads The current runtime.GOMAXPROCS setting.
# TYPE go_sched_gomaxprocs_threads gauge
go_sched_gomaxprocs_threads 1
go_sched_gomaxprocs_threads_total 7
minimesh_requests_total{code="200",destination="geo:80"} 12
minimesh_requests_total{code="503",destination="geo:80"} 3
`
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
		ok     bool
	}{
		{"go_sched_gomaxprocs_threads", nil, 1, true},
		{"go_sched_gomaxprocs", nil, 0, false},
		{"minimesh_requests_total", nil, 12, true},
		{"minimesh_requests_total", []string{"code", "503"}, 3, true},
		{"minimesh_requests_total", []string{"code", "504"}, 0, false},
		{"minimesh_retries_total", nil, 0, false},
	} {
		if v, ok := TextValue(page, tc.name, tc.labels...); v != tc.want || ok != tc.ok {
			t.Errorf("TextValue(%s, %v) = %v, %v; want %v, %v", tc.name, tc.labels, v, ok, tc.want, tc.ok)
		}
	}
}
