package outbound

import "time"

// SetH2UpstreamUserTimeout scales h2UpstreamUserTimeout for a test run in
// a process of its own (TestH2UpstreamBlackholed's, in its namespace);
// sidecars started after it take it.
func SetH2UpstreamUserTimeout(d time.Duration) { h2UpstreamUserTimeout = d }
