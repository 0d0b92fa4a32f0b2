package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/proxy/iptables"
)

// initTimeout bounds the whole of init: an init container that hangs keeps
// its pod from starting without saying why.
const initTimeout = 2 * time.Minute

// runInit is `minimesh-proxy init`, the init container's command under
// iptables interception: the rules that redirect the pod's TCP to the
// sidecar (docs/interception.md). Exit 0 when the rules are in place (or,
// with --dry-run, printed), 1 when applying them failed (and what was
// applied is rolled back), 2 for a bad flag.
func runInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("minimesh-proxy init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := iptables.DefaultConfig()
	backend, ipv6 := "auto", "auto"
	var dryRun bool
	fs.Var(uidFlag{&cfg.ProxyUID}, "proxy-uid", "the sidecar's UID, whose connections are not redirected (no loops)")
	fs.Var(portFlag{&cfg.OutboundPort}, "outbound-port", "the sidecar's transparent outbound port on loopback: where the pod's outbound TCP goes")
	fs.Var(portFlag{&cfg.InboundPort}, "inbound-port", "the sidecar's inbound port: where TCP arriving at the pod goes with --capture-inbound")
	// The default is what an init container injected before this flag
	// existed meant: its args never name the admin port's 15020.
	fs.Var(portFlag{&cfg.AdminPort}, "admin-port", "the sidecar's admin port: with --capture-inbound, TCP arriving at it is not redirected (the kubelet's probes, Prometheus)")
	fs.BoolVar(&cfg.CaptureInbound, "capture-inbound", false, "also redirect TCP arriving at the pod (except the sidecar's ports and --skip-inbound-ports)")
	fs.Var(portsFlag{&cfg.SkipOutboundPorts}, "skip-outbound-ports", "comma-separated destination ports or ranges (8000-8100) whose outbound connections are not redirected")
	fs.Var(cidrsFlag{&cfg.SkipOutboundCIDRs}, "skip-outbound-cidrs", "comma-separated IPv4 and IPv6 CIDRs whose outbound connections are not redirected")
	fs.Var(portsFlag{&cfg.SkipInboundPorts}, "skip-inbound-ports", "comma-separated pod ports or ranges whose inbound connections reach the app directly")
	fs.Var(choiceFlag{&backend, []string{"auto", "legacy", "nft"}}, "backend", "iptables back-end: auto (detect the one in use), legacy or nft")
	fs.Var(choiceFlag{&ipv6, []string{"auto", "on", "off"}}, "ipv6", "IPv6 rules too: auto (when the pod has an IPv6 address), on or off")
	fs.BoolVar(&dryRun, "dry-run", false, "print the iptables-restore input of each family and apply nothing")
	if err := parseWithEnv(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := checkInitConfig(cfg); err != nil {
		fmt.Fprintf(stderr, "minimesh-proxy init: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()

	families := []iptables.Family{iptables.IPv4}
	v6why := "--ipv6 on"
	switch ipv6 {
	case "on":
		families = append(families, iptables.IPv6)
	case "off":
		v6why = "--ipv6 off"
	case "auto":
		has, addr, err := iptables.HasIPv6()
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "minimesh-proxy init: %v\n", err)
			return 1
		case has:
			families = append(families, iptables.IPv6)
			v6why = "--ipv6 auto: the pod has " + addr
		default:
			v6why = "--ipv6 auto: the pod has no IPv6 address beyond loopback and link-local"
		}
	}

	var r iptables.Runner = iptables.Exec{}
	b := iptables.Backend(backend)
	why := "--backend " + backend
	if backend == "auto" {
		var err error
		b, why, err = iptables.Detect(ctx, r)
		if err != nil {
			if !dryRun {
				fmt.Fprintf(stderr, "minimesh-proxy init: choosing the iptables back-end: %v\n", err)
				return 1
			}
			// One comment line: iptables' messages span several.
			b, why = iptables.NFT, strings.Join(strings.Fields(fmt.Sprintf("not detected (%v); nft shown", err)), " ")
		}
	}

	if dryRun {
		fmt.Fprintf(stdout, "# minimesh-proxy init --dry-run: nothing applied\n")
		fmt.Fprintf(stdout, "# back-end %s: %s\n", b, why)
		fmt.Fprintf(stdout, "# families %s: %s\n", familyList(families), v6why)
		for _, f := range families {
			fmt.Fprintf(stdout, "# %s: %s --noflush\n%s", f, b.Restore(f), iptables.Rules(cfg, f))
		}
		return 0
	}

	fmt.Fprintf(stdout, "minimesh-proxy init: back-end %s (%s); families %s (%s)\n", b, why, familyList(families), v6why)
	results, err := iptables.Apply(ctx, r, b, cfg, families)
	if err != nil {
		fmt.Fprintf(stderr, "minimesh-proxy init: %v\n", err)
		return 1
	}
	for _, res := range results {
		fmt.Fprintf(stdout, "minimesh-proxy init: %s rules in place (%s, minimesh's part of the nat table):\n", res.Family, b.Save(res.Family))
		for _, l := range res.Rules {
			fmt.Fprintf(stdout, "  %s\n", l)
		}
	}
	return 0
}

// checkInitConfig names the flags of a configuration Validate refuses.
func checkInitConfig(c iptables.Config) error {
	if c.OutboundPort == c.InboundPort {
		return fmt.Errorf("--outbound-port %d and --inbound-port %d: want two different ports", c.OutboundPort, c.InboundPort)
	}
	return c.Validate()
}

func familyList(fs []iptables.Family) string {
	var s []string
	for _, f := range fs {
		s = append(s, f.String())
	}
	return strings.Join(s, " and ")
}

// uidFlag is --proxy-uid: a UID other than root's.
type uidFlag struct{ p *uint32 }

func (f uidFlag) String() string {
	if f.p == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*f.p), 10)
}

func (f uidFlag) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	switch {
	case err != nil || n == 1<<32-1:
		return errors.New("want a UID, 1 to 4294967294")
	case n == 0:
		return errors.New("0 is root: every root process of the pod would bypass the sidecar; want the sidecar's own UID")
	}
	*f.p = uint32(n)
	return nil
}

// portFlag is a port, 1-65535.
type portFlag struct{ p *uint16 }

func (f portFlag) String() string {
	if f.p == nil {
		return ""
	}
	return strconv.Itoa(int(*f.p))
}

func (f portFlag) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return errors.New("want a port, 1-65535")
	}
	*f.p = uint16(n)
	return nil
}

// portsFlag is a comma-separated list of ports and ranges; repeating the
// flag adds to the list.
type portsFlag struct{ p *[]iptables.PortRange }

func (f portsFlag) String() string {
	if f.p == nil {
		return ""
	}
	var s []string
	for _, r := range *f.p {
		s = append(s, r.String())
	}
	return strings.Join(s, ",")
}

func (f portsFlag) Set(v string) error {
	rs, err := iptables.ParsePorts(v)
	if err != nil {
		return err
	}
	*f.p = append(*f.p, rs...)
	return nil
}

// cidrsFlag is a comma-separated list of CIDRs; repeating the flag adds
// to the list.
type cidrsFlag struct{ p *[]netip.Prefix }

func (f cidrsFlag) String() string {
	if f.p == nil {
		return ""
	}
	var s []string
	for _, p := range *f.p {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

func (f cidrsFlag) Set(v string) error {
	ps, err := iptables.ParseCIDRs(v)
	if err != nil {
		return err
	}
	*f.p = append(*f.p, ps...)
	return nil
}

// choiceFlag is one of a few words.
type choiceFlag struct {
	p      *string
	values []string
}

func (f choiceFlag) String() string {
	if f.p == nil {
		return ""
	}
	return *f.p
}

func (f choiceFlag) Set(v string) error {
	for _, c := range f.values {
		if v == c {
			*f.p = v
			return nil
		}
	}
	return fmt.Errorf("want %s", strings.Join(f.values, ", "))
}
