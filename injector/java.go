package injector

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/minimesh/minimesh/internal/echo"
)

// javaToolOptions is the variable every JVM reads at start (the JVM, not
// the java launcher: it covers every way a JVM is started). The JVM ignores
// HTTP_PROXY; its HTTP clients (HttpURLConnection, and java.net.http's
// HttpClient with its default proxy selector) read these system properties.
const javaToolOptions = "JAVA_TOOL_OPTIONS"

// maxJavaNonProxyBytes bounds -Dhttp.nonProxyHosts. A CIDR that is not on
// an octet boundary becomes up to 128 patterns (Java has no CIDRs), so a
// short annotation could grow every app container by hundreds of KiB.
const maxJavaNonProxyBytes = 4096

// javaProperty is one -D option minimesh adds; group is the property
// whose presence in the app's own value makes the app's settings win for
// the whole group (its own proxy host with our port would be a third
// destination nobody wrote).
type javaProperty struct {
	name, value, group string
}

// javaProperties are minimesh's proxy settings for the JVM.
func javaProperties(cfg *Config, s *settings, nonProxy string) []javaProperty {
	port := strconv.Itoa(cfg.Proxy.OutboundPort)
	ps := []javaProperty{
		{"http.proxyHost", "127.0.0.1", "http.proxyHost"},
		{"http.proxyPort", port, "http.proxyHost"},
		// Java has no https.nonProxyHosts: HTTPS reads this one too.
		{"http.nonProxyHosts", nonProxy, "http.proxyHost"},
	}
	if s.proxyHTTPS {
		ps = append(ps,
			javaProperty{"https.proxyHost", "127.0.0.1", "https.proxyHost"},
			javaProperty{"https.proxyPort", port, "https.proxyHost"})
	}
	return ps
}

// javaNonProxyHosts writes a NO_PROXY list in the syntax of Java's
// http.nonProxyHosts: patterns joined by "|", each a host with at most
// one "*" at its start or end. ".example.com" becomes "*.example.com", an
// IPv4 CIDR the patterns of its addresses (10.0.0.0/8 is "10.*",
// 172.16.0.0/12 is "172.16.*" … "172.31.*"), an IPv6 address is
// bracketed as Java compares it; an IPv6 prefix has no such form and is
// returned in dropped. The result is at most maxJavaNonProxyBytes, else
// ok is false.
func javaNonProxyHosts(noProxy []string) (patterns string, dropped []string, ok bool) {
	var out []string
	seen, given := map[string]bool{}, map[string]bool{}
	size := 0
	add := func(p string) bool {
		if seen[p] {
			return true
		}
		seen[p] = true
		size += len(p) + 1
		out = append(out, p)
		return size-1 <= maxJavaNonProxyBytes
	}
	for _, e := range noProxy {
		if given[e] {
			continue // a CIDR given twice is expanded once
		}
		given[e] = true
		var ps []string
		switch {
		case e == "127.0.0.1":
			// As in Java's own default list: all of 127/8.
			ps = []string{"127.*"}
		case e == "*" || strings.HasPrefix(e, "*."):
			ps = []string{e}
		case strings.HasPrefix(e, "."):
			ps = []string{"*" + e}
		case strings.Contains(e, "/"):
			p, err := netip.ParsePrefix(e)
			if err != nil {
				dropped = append(dropped, e)
				continue
			}
			ps = ipv4Patterns(p.Masked())
			if ps == nil {
				dropped = append(dropped, e)
				continue
			}
		default:
			host := e
			if h, _, err := net.SplitHostPort(e); err == nil {
				host = h // Java's patterns have no port
			}
			if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
				host = "[" + a.String() + "]"
			}
			ps = []string{host}
		}
		for _, p := range ps {
			if !add(p) {
				return "", dropped, false
			}
		}
	}
	return strings.Join(out, "|"), dropped, true
}

// ipv4Patterns are the Java host patterns that match exactly the
// addresses of an IPv4 prefix: the prefix's bits are rounded up to whole
// octets and the rest is a "*". nil for IPv6 (Java compares IPv6 hosts
// as strings, whose prefixes are not address prefixes) except a single
// address.
func ipv4Patterns(p netip.Prefix) []string {
	a := p.Addr()
	if a.Is6() {
		if p.Bits() == 128 {
			return []string{"[" + a.String() + "]"}
		}
		return nil
	}
	if p.Bits() == 0 {
		return []string{"*"}
	}
	octets := a.As4()
	fixed := (p.Bits() + 7) / 8
	n := 1 << (8*fixed - p.Bits())
	out := make([]string, 0, n)
	for i := range n {
		o := octets
		o[fixed-1] += byte(i)
		parts := make([]string, fixed)
		for j := range fixed {
			parts[j] = strconv.Itoa(int(o[j]))
		}
		pat := strings.Join(parts, ".")
		if fixed < 4 {
			pat += ".*"
		}
		out = append(out, pat)
	}
	return out
}

// addJavaOptions appends minimesh's -D options to the container's
// JAVA_TOOL_OPTIONS, after the app's own options, except those the app
// sets itself: as with HTTP_PROXY, the app's value wins, with a warning.
// A value from valueFrom cannot be appended to, and a container with
// envFrom may get JAVA_TOOL_OPTIONS from it, which a JAVA_TOOL_OPTIONS in
// env would replace whole (heap size, agents): both are left alone, with
// a warning.
func addJavaOptions(c *corev1.Container, props []javaProperty) []string {
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == javaToolOptions })
	var own string
	switch {
	case i >= 0 && c.Env[i].ValueFrom != nil:
		return []string{fmt.Sprintf("minimesh: container %s sets %s from valueFrom, which minimesh cannot append to: its JVM's HTTP bypasses the sidecar unless that value has -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=%s",
			quote(c.Name), javaToolOptions, propValue(props, "http.proxyPort"))}
	case i < 0 && len(c.EnvFrom) > 0:
		return []string{fmt.Sprintf("minimesh: container %s has envFrom, which may set %s: minimesh does not set it there, since its value would replace that one; its JVM's HTTP bypasses the sidecar unless %s has -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=%s",
			quote(c.Name), javaToolOptions, javaToolOptions, propValue(props, "http.proxyPort"))}
	case i >= 0:
		own = c.Env[i].Value
	}
	fields := strings.Fields(own)
	sets := func(name string) bool {
		return slices.ContainsFunc(fields, func(f string) bool { return f == "-D"+name || strings.HasPrefix(f, "-D"+name+"=") })
	}
	var add []string
	var warnings []string
	for _, p := range props {
		if sets(p.group) {
			if p.name == p.group {
				warnings = append(warnings, fmt.Sprintf("minimesh: container %s sets -D%s in %s itself; its value wins over minimesh's %s",
					quote(c.Name), p.name, javaToolOptions, p.value))
			}
			continue
		}
		if !sets(p.name) {
			add = append(add, "-D"+p.name+"="+p.value)
		}
	}
	if len(add) == 0 {
		return warnings
	}
	ours := strings.Join(add, " ")
	if i < 0 {
		c.Env = append(c.Env, corev1.EnvVar{Name: javaToolOptions, Value: ours})
		return warnings
	}
	if strings.TrimSpace(own) != "" {
		ours = own + " " + ours
	}
	c.Env[i].Value = ours
	return warnings
}

func propValue(props []javaProperty, name string) string {
	for _, p := range props {
		if p.name == name {
			return echo.Clip(p.value)
		}
	}
	return ""
}
