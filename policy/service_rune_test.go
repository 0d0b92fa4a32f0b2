package policy

import (
	"strings"
	"testing"
)

// TestServiceBadCharacter: the character a service name is refused for is
// the one written, not the first byte of its UTF-8 ('ë' showed as 'Ã').
func TestServiceBadCharacter(t *testing.T) {
	for _, tt := range []struct{ service, want string }{
		{"gëo", `label "gëo" has 'ë': want a-z, 0-9 or '-'`},
		{"GËO", `label "gëo" has 'ë': want a-z, 0-9 or '-'`}, // lowercased first
		{"geo.svc.日本", `label "日本" has '日': want a-z, 0-9 or '-'`},
		{"geo-😀:80", `label "geo-😀" has '😀': want a-z, 0-9 or '-'`},
		{"ge_o", `label "ge_o" has '_': want a-z, 0-9 or '-'`},
		{"ge\x00o", `label "ge\x00o" has '\x00': want a-z, 0-9 or '-'`},
		{"ge\u200bo", `label "ge\u200bo" has '\u200b': want a-z, 0-9 or '-'`}, // invisible: escaped
	} {
		_, err := NormalizeService(tt.service)
		if err == nil || !strings.HasSuffix(err.Error(), tt.want) {
			t.Errorf("NormalizeService(%q) = %v; want it to end %s", tt.service, err, tt.want)
		}
	}
	// Invalid UTF-8 does not reach checkHostname through NormalizeService
	// (lowercasing makes it U+FFFD) or the decoders (both refuse it); a
	// stray byte is named as a byte, not as a character it is not.
	if err := checkHostname("ge\xffo"); err == nil || err.Error() != `label "ge\xffo" has byte 0xff: want a-z, 0-9 or '-'` {
		t.Errorf("checkHostname of invalid UTF-8: %v", err)
	}
	// Through the decoder, positioned, as minimesh policy lint prints it.
	_, err := Decode("f.yaml", []byte(header+`spec: {service: "gëo"}`+"\n"))
	if err == nil || err.Error() != `f.yaml:3:17: spec.service: invalid service "gëo": label "gëo" has 'ë': want a-z, 0-9 or '-'` {
		t.Errorf("Decode: %v", err)
	}
}
