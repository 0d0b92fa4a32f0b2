package outbound

import (
	"net/http"
	"strings"

	"github.com/minimesh/minimesh/proxy/internal/field"
)

// DropH2CUpgrade takes an upgrade to h2c out of h, the header of an
// HTTP/1.x request that names an Upgrade: the Upgrade field's h2c token,
// HTTP2-Settings, and the Connection tokens that named them. The sidecar
// never passes an h2c upgrade on: RFC 9113 §3.1 dropped it, and the
// upstream could not take it anyway, HTTP2-Settings being a hop-by-hop
// field a proxy removes (RFC 9110 §7.6.1), which RFC 7540 §3.2.1 requires
// of it; served as an upgrade, the request lost its retries, the fast
// transport and its connection. Envoy likewise strips it and serves the
// request as any other. Upgrade names the protocols the client would
// take in its place, so a request that names others too (h2c, websocket)
// keeps them, as an upgrade.
//
// It reports whether an upgrade to another protocol is left, and, when
// none is, whether each Upgrade field held "h2c" alone (white space aside,
// any case): only such a request may keep its connection, the one the
// guard of the std server's connections (leanhttp.TE10Guard) still
// follows; for any other spelling the guard stops following, and the
// connection must close after the answer. A header without an h2c token
// is left as it is.
func DropH2CUpgrade(h http.Header) (upgrade, h2cOnly bool) {
	ups := h["Upgrade"]
	found, h2cOnly := false, true
	for _, v := range ups {
		if v = field.TrimOWS(v); !strings.EqualFold(v, "h2c") {
			h2cOnly = false
		}
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(field.TrimOWS(tok), "h2c") {
				found = true
			}
		}
	}
	if !found {
		return len(ups) > 0, false
	}
	var rest []string
	for _, v := range ups {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = field.TrimOWS(tok); tok != "" && !strings.EqualFold(tok, "h2c") {
				rest = append(rest, tok)
			}
		}
	}
	delete(h, "Http2-Settings")
	if len(rest) > 0 {
		h["Upgrade"] = []string{strings.Join(rest, ", ")}
		dropTokens(h, "Connection", "HTTP2-Settings", "")
		return true, false
	}
	delete(h, "Upgrade")
	dropTokens(h, "Connection", "HTTP2-Settings", "Upgrade")
	return false, h2cOnly
}

// dropTokens removes the tokens a and b (any case; "" none) from h's
// comma-separated key field, and the field when no token is left.
func dropTokens(h http.Header, key, a, b string) {
	vs := h[key]
	if len(vs) == 0 {
		return
	}
	var kept []string
	for _, v := range vs {
		for tok := range strings.SplitSeq(v, ",") {
			tok = field.TrimOWS(tok)
			if tok != "" && !strings.EqualFold(tok, a) && (b == "" || !strings.EqualFold(tok, b)) {
				kept = append(kept, tok)
			}
		}
	}
	if len(kept) == 0 {
		delete(h, key)
		return
	}
	h[key] = []string{strings.Join(kept, ", ")}
}
