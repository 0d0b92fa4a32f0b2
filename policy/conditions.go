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

// Conditions is a parsed retryOn or failOn list: outcome classes,
// individual status codes and gRPC status codes.
type Conditions struct {
	Classes Class
	Codes   []int // sorted, 100–599
	// GRPC has bit n set for gRPC status code n (1–16), named
	// grpc-unavailable and so on (GRPCCodeNames): a gRPC call whose
	// grpc-status is one of them matches (docs/grpc.md).
	GRPC uint32
}

// GRPCCodeNames are the condition names of the gRPC status codes, by
// value (grpc-cancelled is code 1); code 0, OK, has none.
var GRPCCodeNames = [...]string{"", "grpc-cancelled", "grpc-unknown", "grpc-invalid-argument", "grpc-deadline-exceeded",
	"grpc-not-found", "grpc-already-exists", "grpc-permission-denied", "grpc-resource-exhausted", "grpc-failed-precondition",
	"grpc-aborted", "grpc-out-of-range", "grpc-unimplemented", "grpc-internal", "grpc-unavailable", "grpc-data-loss",
	"grpc-unauthenticated"}

// GRPCConditionBase is added to a gRPC status code where ParseCondition
// and Add carry it in their code: GRPCConditionBase+14 is grpc-unavailable.
const GRPCConditionBase = 1000

// ParseCondition parses one retryOn/failOn item: a class name, a
// three-digit status code, or a gRPC code's name (returned as code
// GRPCConditionBase + its value).
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
	if strings.HasPrefix(s, "grpc-") {
		for n, name := range GRPCCodeNames {
			if n > 0 && s == name {
				return 0, GRPCConditionBase + n, nil
			}
		}
		return 0, 0, fmt.Errorf("unknown gRPC code %q: want grpc- and a code's name in lower case, words joined by '-': grpc-unavailable, grpc-deadline-exceeded, grpc-resource-exhausted, grpc-internal, grpc-unknown, … (any code but OK)", s)
	}
	names := make([]string, len(classNames))
	for i, cn := range classNames {
		names[i] = cn.name
	}
	return 0, 0, fmt.Errorf("unknown condition %q: want one of %s, a status code 100-599 or a gRPC code (grpc-unavailable, …)", s, strings.Join(names, ", "))
}

// Add adds one parsed condition.
func (c *Conditions) Add(class Class, code int) {
	c.Classes |= class
	if code > GRPCConditionBase && code < GRPCConditionBase+len(GRPCCodeNames) {
		c.GRPC |= 1 << (code - GRPCConditionBase)
		return
	}
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

// GRPCStatus reports whether a gRPC call that ended with this status
// code matches.
func (c Conditions) GRPCStatus(code int) bool {
	return code > 0 && code < len(GRPCCodeNames) && c.GRPC&(1<<code) != 0
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
	for n, name := range GRPCCodeNames {
		if c.GRPCStatus(n) {
			out = append(out, name)
		}
	}
	return out
}

// MarshalJSON writes the YAML spelling, for /debug/config.
func (c Conditions) MarshalJSON() ([]byte, error) { return json.Marshal(c.Strings()) }
