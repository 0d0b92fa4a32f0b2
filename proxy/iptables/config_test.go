package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []PortRange
		wantErr string // a part of the error; "" for none
	}{
		{"", nil, ""},
		{" , ,", nil, ""},
		{"5432", []PortRange{{5432, 5432}}, ""},
		{"5432, 8000-8100 ,1-65535", []PortRange{{5432, 5432}, {8000, 8100}, {1, 65535}}, ""},
		{"80,80,80-80", []PortRange{{80, 80}}, ""},
		{"9000-9000", []PortRange{{9000, 9000}}, ""},
		{"0", nil, `"0" is not a port`},
		{"65536", nil, `"65536" is not a port`},
		{"80x", nil, `"80x" is not a port`},
		{"+80", nil, `"+80" is not a port`},
		{"-80", nil, `"-80" is not a port`},
		{"80-", nil, `"80-" is not a port`},
		{"1-2-3", nil, `"1-2-3" is not a port`},
		{"8100-8000", nil, `"8100-8000" is a range whose first port is above its last`},
		{"80 81", nil, `"80 81" is not a port`},
		{"http", nil, `"http" is not a port`},
		{"000080", nil, `"000080" is not a port`},
	} {
		got, err := ParsePorts(tc.in)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParsePorts(%q): %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParsePorts(%q) error = %v, want %q", tc.in, err, tc.wantErr)
		case !slices.Equal(got, tc.want):
			t.Errorf("ParsePorts(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		in      string
		want    []netip.Prefix
		wantErr string
	}{
		{"", nil, ""},
		{"10.0.0.0/8", []netip.Prefix{p("10.0.0.0/8")}, ""},
		{" 10.1.2.3/8 , fd00::1/8,10.0.0.0/8", []netip.Prefix{p("10.0.0.0/8"), p("fd00::/8")}, ""},
		{"0.0.0.0/0,::/0", []netip.Prefix{p("0.0.0.0/0"), p("::/0")}, ""},
		{"198.18.250.7/32", []netip.Prefix{p("198.18.250.7/32")}, ""},
		{"::ffff:10.0.0.0/104,10.0.0.0/8,::ffff:198.18.250.7/128", []netip.Prefix{p("10.0.0.0/8"), p("198.18.250.7/32")}, ""},
		{"::ffff:0.0.0.0/80", []netip.Prefix{p("::/80")}, ""}, // shorter than the mapped space: stays IPv6
		{"10.0.0.1", nil, `"10.0.0.1" is not a CIDR`},
		{"10.0.0.0/33", nil, `"10.0.0.0/33" is not a CIDR`},
		{"fe80::1%eth0/64", nil, `"fe80::1%eth0/64" is not a CIDR`},
		{"example.com/8", nil, `"example.com/8" is not a CIDR`},
	} {
		got, err := ParseCIDRs(tc.in)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseCIDRs(%q): %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseCIDRs(%q) error = %v, want %q", tc.in, err, tc.wantErr)
		case !slices.Equal(got, tc.want):
			t.Errorf("ParseCIDRs(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"default", func(*Config) {}, ""},
		{"root", func(c *Config) { c.ProxyUID = 0 }, "proxy UID 0"},
		{"no port", func(c *Config) { c.OutboundPort = 0 }, "outbound port 0"},
		{"same ports", func(c *Config) { c.InboundPort = c.OutboundPort }, "both 15001"},
		{"reversed range", func(c *Config) { c.SkipInboundPorts = []PortRange{{9, 8}} }, "port range 9-8"},
		{"zero range", func(c *Config) { c.SkipOutboundPorts = []PortRange{{0, 8}} }, "port range 0-8"},
		{"bad prefix", func(c *Config) { c.SkipOutboundCIDRs = []netip.Prefix{{}} }, "invalid CIDR"},
	} {
		c := DefaultConfig()
		tc.edit(&c)
		err := c.Validate()
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// FuzzParsePorts: no input panics; what is accepted is valid, renders back
// to a list that parses to the same ranges, and makes rules every family
// accepts.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"", "5432", "8000-8100,9090", " 1 , 65535 ", "0", "65536", "1-2-3", "9-8", "-", ",,,", "08", "٣"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParsePorts(s)
		if err != nil {
			if !strings.Contains(err.Error(), "port") {
				t.Errorf("error %q does not say what is wrong", err)
			}
			return
		}
		var items []string
		for _, r := range rs {
			if r.First == 0 || r.First > r.Last {
				t.Fatalf("ParsePorts(%q) accepted %v", s, r)
			}
			items = append(items, r.String())
		}
		again, err := ParsePorts(strings.Join(items, ","))
		if err != nil || !slices.Equal(again, rs) {
			t.Fatalf("ParsePorts(%q) = %v, rendered %q parses to %v, %v", s, rs, items, again, err)
		}
		c := DefaultConfig()
		c.SkipOutboundPorts, c.SkipInboundPorts, c.CaptureInbound = rs, rs, true
		if err := c.Validate(); err != nil {
			t.Fatalf("ParsePorts(%q) = %v, which Validate refuses: %v", s, rs, err)
		}
		for _, l := range Lines(c, IPv4) {
			if strings.ContainsAny(l, "\n\r\t") {
				t.Fatalf("rule line %q", l)
			}
		}
	})
}

// FuzzParseCIDRs: no input panics; what is accepted is masked, unique,
// and lands in exactly one family's rules.
func FuzzParseCIDRs(f *testing.F) {
	for _, s := range []string{"", "10.0.0.0/8", "fd00::/8,10.1.2.3/16", "::ffff:10.0.0.0/104", "0.0.0.0/0", "10.0.0.1", "1.2.3.4/33", "fe80::1%eth0/64", " , "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseCIDRs(s)
		if err != nil {
			if !strings.Contains(err.Error(), "CIDR") {
				t.Errorf("error %q does not say what is wrong", err)
			}
			return
		}
		c := DefaultConfig()
		c.SkipOutboundCIDRs = ps
		v4, v6 := strings.Join(Lines(c, IPv4), "\n"), strings.Join(Lines(c, IPv6), "\n")
		for i, p := range ps {
			if !p.IsValid() || p != p.Masked() || slices.Contains(ps[:i], p) {
				t.Fatalf("ParseCIDRs(%q) = %v: %v not valid, masked and unique", s, ps, p)
			}
			if p.Bits() == 0 {
				continue // "-j RETURN" without -d
			}
			in4, in6 := strings.Contains(v4, "-d "+p.String()+" "), strings.Contains(v6, "-d "+p.String()+" ")
			if in4 == in6 {
				t.Fatalf("%v: in the IPv4 rules %v, in the IPv6 rules %v", p, in4, in6)
			}
		}
	})
}
