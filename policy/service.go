package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// NormalizeService checks a spec.service value and returns its canonical
// spelling: lowercase, no trailing dot on the host, the port without
// leading zeros. Policies are compared and matched in that spelling, so
// "Auth-Service." and "auth-service" are the same service.
func NormalizeService(s string) (string, error) {
	if s == DefaultService {
		return s, nil
	}
	if s == "" {
		return "", errors.New(`must not be empty: want host[:port] or "*"`)
	}
	host, portStr, hasPort := cutLast(s, ':')
	if strings.Contains(host, ":") {
		return "", fmt.Errorf("invalid service %q: IPv6 addresses are not supported, use a host name", s)
	}
	if hasPort {
		port, err := parsePort(portStr)
		if err != nil {
			return "", fmt.Errorf("invalid service %q: %v", s, err)
		}
		portStr = strconv.Itoa(port)
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if err := checkHostname(host); err != nil {
		return "", fmt.Errorf("invalid service %q: %v", s, err)
	}
	if hasPort {
		return host + ":" + portStr, nil
	}
	return host, nil
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number 1-65535", s)
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number 1-65535", s)
	}
	return n, nil
}

// checkHostname applies RFC 1123: Kubernetes Service names and the DNS
// names of external hosts both follow it, so anything else can never be
// the authority of a request the sidecar sees.
func checkHostname(h string) error {
	if h == "" {
		return errors.New("host is empty")
	}
	if len(h) > 253 {
		return errors.New("host is longer than 253 characters")
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" {
			return errors.New("host has an empty label")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("label %q has %s: want a-z, 0-9 or '-'", label, charAt(label, i))
			}
		}
	}
	return nil
}

// charAt quotes the character that starts at s[i]: the byte alone is
// half of a multi-byte one ('ë' would show as 'Ã'). A byte that starts
// no valid UTF-8 is shown as itself.
func charAt(s string, i int) string {
	r, size := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf("byte %#02x", s[i])
	}
	return strconv.QuoteRune(r)
}

func cutLast(s string, sep byte) (before, after string, found bool) {
	if i := strings.LastIndexByte(s, sep); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}
