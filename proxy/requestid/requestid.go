// Package requestid keeps or creates the X-Request-ID of a request.
package requestid

import (
	"encoding/hex"
	"math/rand/v2"
)

// MaxLen bounds an incoming ID; longer ones are replaced, so that an ID
// cannot be used to smuggle large data into every log line.
const MaxLen = 128

// Valid reports whether an incoming ID is kept: 1 to 128 bytes of
// printable ASCII.
func Valid(id string) bool {
	if len(id) == 0 || len(id) > MaxLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// New returns a random (version 4) UUID. It draws from the runtime's
// per-thread ChaCha8 generator: no lock and no syscall, unlike
// crypto/rand, and IDs need to be unique, not secret.
func New() string {
	var u [16]byte
	a, b := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		u[i] = byte(a >> (8 * i))
		u[8+i] = byte(b >> (8 * i))
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], u[10:16])
	return string(s[:])
}
