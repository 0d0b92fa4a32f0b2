package policy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Class is a set of outcome classes, as named in retryOn and failOn.
type Class uint8

const (
	// Class5xx is any response status 500–599.
	Class5xx Class = 1 << iota
	// ClassGatewayError is a 502, 503 or 504 response.
	ClassGatewayError
	// ClassConnectFailure is a connection that could not be made: the
	// request was never sent.
	ClassConnectFailure
	// ClassReset is a connection closed or reset before the response
	// headers arrived.
	ClassReset
	// ClassTimeout is a try that ran out of time (per-try or whole).
	ClassTimeout
)

var classNames = []struct {
	c    Class
	name string
}{
	{Class5xx, "5xx"},
	{ClassGatewayError, "gateway-error"},
	{ClassConnectFailure, "connect-failure"},
	{ClassReset, "reset"},
	{ClassTimeout, "timeout"},
}

// Conditions is a parsed retryOn or failOn list: outcome classes and
// individual status codes.
type Conditions struct {
	Classes Class
	Codes   []int // sorted, 100–599
}

// ParseCondition parses one retryOn/failOn item: a class name or a
// three-digit status code.
func ParseCondition(s string) (Class, int, error) {
	for _, cn := range classNames {
		if s == cn.name {
			return cn.c, 0, nil
		}
	}
	if len(s) == 3 {
		if n, err := strconv.Atoi(s); err == nil && n >= 100 && n <= 599 {
			return 0, n, nil
		}
	}
	names := make([]string, len(classNames))
	for i, cn := range classNames {
		names[i] = cn.name
	}
	return 0, 0, fmt.Errorf("unknown condition %q: want one of %s or a status code 100-599", s, strings.Join(names, ", "))
}

// Add adds one parsed condition.
func (c *Conditions) Add(class Class, code int) {
	c.Classes |= class
	if code != 0 {
		if i, found := slices.BinarySearch(c.Codes, code); !found {
			c.Codes = slices.Insert(c.Codes, i, code)
		}
	}
}

// Has reports whether the class is in the set.
func (c Conditions) Has(class Class) bool { return c.Classes&class != 0 }

// Status reports whether a response with this status code matches.
func (c Conditions) Status(code int) bool {
	switch {
	case code >= 500 && code <= 599 && c.Classes&Class5xx != 0:
		return true
	case (code == 502 || code == 503 || code == 504) && c.Classes&ClassGatewayError != 0:
		return true
	}
	for _, x := range c.Codes {
		if x == code {
			return true
		}
	}
	return false
}

// Strings returns the conditions in their YAML spelling.
func (c Conditions) Strings() []string {
	out := make([]string, 0, len(classNames)+len(c.Codes))
	for _, cn := range classNames {
		if c.Classes&cn.c != 0 {
			out = append(out, cn.name)
		}
	}
	for _, code := range c.Codes {
		out = append(out, strconv.Itoa(code))
	}
	return out
}

// MarshalJSON writes the YAML spelling, for /debug/config.
func (c Conditions) MarshalJSON() ([]byte, error) { return json.Marshal(c.Strings()) }
