package transparent

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultOpaquePorts are Linkerd's default opaque ports: protocols whose
// server speaks first (SMTP 25 and 587, MySQL 3306, Galera 4444,
// PostgreSQL 5432, Redis 6379, Elasticsearch's transport 9300, memcached
// 11211), which must not wait for bytes from the client that will not come.
const DefaultOpaquePorts = "25,587,3306,4444,5432,6379,9300,11211"

// Ports is a set of TCP ports.
type Ports struct {
	bits [1 << 16 / 64]uint64
	text string
}

// ParsePorts reads a comma-separated list of ports and ranges
// ("25,3306,8000-8010"); empty is the empty set.
func ParsePorts(s string) (*Ports, error) {
	p := &Ports{text: s}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(item, "-")
		a, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", item, err)
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("port range %q: %w", item, err)
			}
			if b < a {
				return nil, fmt.Errorf("port range %q: ends before it starts", item)
			}
		}
		for x := a; x <= b; x++ {
			p.bits[x/64] |= 1 << (x % 64)
		}
	}
	return p, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("want a port from 1 to 65535")
	}
	return n, nil
}

// Has reports whether port is in the set; a nil set has none.
func (p *Ports) Has(port uint16) bool {
	return p != nil && p.bits[port/64]&(1<<(port%64)) != 0
}

func (p *Ports) String() string {
	if p == nil {
		return ""
	}
	return p.text
}
