package outbound

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
)

// hop is this sidecar's entry in the Via header (RFC 9110 §7.6.3), added to
// every request it forwards. A request that arrives already carrying it has
// come back round a loop, through this sidecar alone (a name that resolves
// to itself) or through others (A → B → A), and is refused with 508 before
// it can multiply. The pseudonym is random per process: it names no pod to
// the upstream, and two sidecars never share one.
type hop struct {
	token string   // "minimesh-3f9a2c1b"
	value []string // {"1.1 minimesh-3f9a2c1b"}, shared and never written
}

// maxHops bounds the minimesh entries a request may carry, so that a loop
// through sidecars that somehow miss their own entry still ends.
const maxHops = 16

func newHop() hop {
	var b [4]byte
	_, _ = rand.Read(b[:])
	t := "minimesh-" + hex.EncodeToString(b[:])
	return hop{token: t, value: []string{"1.1 " + t}}
}

// seen reports whether the request has passed through this sidecar
// before, or through too many.
func (p hop) seen(h http.Header) bool {
	vs := h["Via"]
	if len(vs) == 0 {
		return false
	}
	n := 0
	for _, v := range vs {
		if strings.Contains(v, p.token) {
			return true
		}
		n += strings.Count(v, "minimesh-")
	}
	return n >= maxHops
}

// add appends this sidecar's entry to an outgoing request's Via.
func (p hop) add(h http.Header) {
	if vs, ok := h["Via"]; ok && len(vs) > 0 {
		h["Via"] = append(vs[:len(vs):len(vs)], p.value[0])
		return
	}
	h["Via"] = p.value
}
