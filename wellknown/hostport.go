package wellknown

import (
	"net"
	"strconv"
)

// ValidHostPort reports whether v is an address the sidecar accepts to
// dial (its --xds-address and --otlp-endpoint): HOST:PORT as
// net.SplitHostPort reads it, with a port from 1 to 65535 in decimal
// digits alone (strconv.Atoi would take "+4317", which the chart's
// schema refuses: one answer in both).
// The sidecar refuses anything else at start, and the injector refuses
// it in its config by the same rule: injected, it would keep every pod
// from starting.
func ValidHostPort(v string) bool {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}
