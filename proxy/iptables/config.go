package iptables

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/minimesh/minimesh/wellknown"
)

// Config is what the rules say: whose connections stay untouched, where the
// captured ones go, and what is skipped. The zero value is not useful; start
// from DefaultConfig.
type Config struct {
	// ProxyUID is the sidecar's user: its connections leave unredirected,
	// which is what keeps its own upstream connections out of a loop.
	ProxyUID uint32
	// OutboundPort is the sidecar's transparent outbound listener on
	// loopback; every other TCP connection the pod opens is redirected there.
	OutboundPort uint16
	// InboundPort is where TCP arriving at the pod goes when CaptureInbound.
	InboundPort uint16
	// AdminPort is the sidecar's admin port (probes, /metrics): inbound
	// connections to it are never redirected, nor to the two ports above.
	// It is the sidecar's configured port, not always the contract's 15020:
	// an app that moved the sidecar off 15020 to use that port itself must
	// have its 15020 captured like any other port.
	AdminPort uint16
	// CaptureInbound redirects TCP arriving at the pod to InboundPort.
	CaptureInbound bool
	// SkipOutboundPorts and SkipOutboundCIDRs: outbound connections to
	// these destination ports or addresses leave unredirected. Each CIDR
	// goes to the rules of its own family.
	SkipOutboundPorts []PortRange
	SkipOutboundCIDRs []netip.Prefix
	// SkipInboundPorts: inbound connections to these pod ports reach the
	// app directly.
	SkipInboundPorts []PortRange
}

// DefaultConfig is the configuration of the contract's ports and UID
// (wellknown), outbound capture only.
func DefaultConfig() Config {
	return Config{
		ProxyUID:     wellknown.ProxyUID,
		OutboundPort: wellknown.OutboundPort,
		InboundPort:  wellknown.InboundPort,
		AdminPort:    wellknown.AdminPort,
	}
}

// Validate reports settings that cannot make working rules.
func (c Config) Validate() error {
	var errs []error
	if c.ProxyUID == 0 {
		errs = append(errs, errors.New("proxy UID 0: root's connections would all leave unredirected; want the sidecar's own UID"))
	}
	for _, p := range []struct {
		name string
		port uint16
	}{{"outbound", c.OutboundPort}, {"inbound", c.InboundPort}, {"admin", c.AdminPort}} {
		if p.port == 0 {
			errs = append(errs, fmt.Errorf("%s port 0: want 1-65535", p.name))
		}
	}
	if c.OutboundPort != 0 && c.OutboundPort == c.InboundPort {
		errs = append(errs, fmt.Errorf("outbound and inbound port are both %d: want two ports", c.OutboundPort))
	}
	for _, r := range append(slices.Clip(c.SkipOutboundPorts), c.SkipInboundPorts...) {
		if r.First == 0 || r.First > r.Last {
			errs = append(errs, fmt.Errorf("port range %d-%d: want 1-65535, first no more than last", r.First, r.Last))
		}
	}
	for _, p := range c.SkipOutboundCIDRs {
		if !p.IsValid() {
			errs = append(errs, errors.New("an invalid CIDR in the outbound skips"))
		}
	}
	return errors.Join(errs...)
}

// PortRange is one port (First == Last) or a range of ports, both ends
// included.
type PortRange struct{ First, Last uint16 }

// String is the flag's syntax: 5432 or 8000-8100.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// match is iptables' syntax: 5432 or 8000:8100.
func (r PortRange) match() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d:%d", r.First, r.Last)
}

// ParsePorts parses a comma-separated list of ports (1-65535) and ranges
// (8000-8100, first no more than last), as the skip-*-ports annotations and
// flags hold them. Spaces around items and empty items are ignored, as the
// injector ignores them; duplicates are dropped. The error names the item.
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for _, item := range splitList(s) {
		first, last, isRange := strings.Cut(item, "-")
		lo, err1 := parsePort(first)
		hi, err2 := lo, error(nil)
		if isRange {
			hi, err2 = parsePort(last)
		}
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%q is not a port (1-65535) or a range like 8000-8100", item)
		}
		if lo > hi {
			return nil, fmt.Errorf("%q is a range whose first port is above its last", item)
		}
		r := PortRange{lo, hi}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// parsePort accepts decimal digits only (no sign, no spaces), 1-65535.
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a port")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, errors.New("not a port")
	}
	return uint16(n), nil
}

// ParseCIDRs parses a comma-separated list of IPv4 and IPv6 CIDRs
// (10.0.0.0/8, fd00::/8). Host bits are cleared (10.1.2.3/8 is
// 10.0.0.0/8, as iptables would store it); an IPv4-mapped IPv6 CIDR
// (::ffff:10.0.0.0/104) is the IPv4 one it maps, because the kernel sends
// a connection to such an address as IPv4; spaces around items and empty
// items are ignored; duplicates are dropped. The error names the item.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range splitList(s) {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR like 10.0.0.0/8 or fd00::/8", item)
		}
		p = p.Masked()
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
