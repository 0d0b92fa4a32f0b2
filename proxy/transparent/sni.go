package transparent

// A ClientHello is read here only for its server_name (RFC 6066 §3), by a
// small parser rather than crypto/tls: crypto/tls gives ClientHelloInfo
// only from inside a server handshake, which wants a net.Conn to write
// alerts to, allocates a whole handshake state per connection and refuses
// hellos it would not itself accept; this parser reads the bytes already
// peeked, allocates nothing for a hello in one record, and is checked
// against crypto/tls by FuzzClientHelloSNI.

type helloStatus int

const (
	helloMore   helloStatus = iota // a proper prefix of a ClientHello: read on
	helloOK                        // a whole ClientHello (SNI may still be "")
	helloBad                       // TLS records, but no ClientHello the parser understands
	helloNotTLS                    // not a TLS handshake record at all
)

// maxRecord is the largest TLS plaintext record (RFC 8446 §5.1).
const maxRecord = 1 << 14

// clientHelloSNI returns the server name of the TLS ClientHello at the
// start of b. The hello may span several handshake records.
func clientHelloSNI(b []byte) (string, helloStatus) {
	// Records: type (1) = handshake (22), version (2) = 3.x, length (2).
	var msg []byte // the handshake message, gathered from its records
	need := -1     // its whole length, once its header is known
	for len(b) > 0 {
		if len(b) < 5 {
			if b[0] != 0x16 || (len(b) > 1 && b[1] != 3) {
				if msg == nil {
					return "", helloNotTLS
				}
				return "", helloBad
			}
			return "", helloMore
		}
		if b[0] != 0x16 || b[1] != 3 {
			if msg == nil {
				return "", helloNotTLS
			}
			return "", helloBad
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxRecord {
			return "", helloBad
		}
		if len(b) < 5+n {
			if need < 0 && len(msg)+len(b)-5 >= 1 && firstByte(msg, b[5:]) != 1 {
				return "", helloNotTLS // a handshake, but not a ClientHello
			}
			return "", helloMore
		}
		frag := b[5 : 5+n]
		b = b[5+n:]
		if msg == nil && need < 0 && len(frag) >= 4 && 4+int(frag[1])<<16|int(frag[2])<<8|int(frag[3]) <= len(frag) {
			msg = frag // the common case: the whole hello in one record
		} else {
			msg = append(msg[:len(msg):len(msg)], frag...)
		}
		if msg[0] != 1 { // client_hello
			return "", helloNotTLS
		}
		if need < 0 && len(msg) >= 4 {
			need = 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
			if need > maxRecord {
				return "", helloBad // more than detection reads: no SNI, and no waiting for it
			}
		}
		if need >= 0 && len(msg) >= need {
			sni, ok := parseClientHello(msg[4:need])
			if !ok {
				return "", helloBad
			}
			return sni, helloOK
		}
	}
	return "", helloMore
}

func firstByte(msg, rest []byte) byte {
	if len(msg) > 0 {
		return msg[0]
	}
	return rest[0]
}

// parseClientHello reads the body of a ClientHello (RFC 8446 §4.1.2) up to
// its server_name extension.
func parseClientHello(b []byte) (string, bool) {
	r := reader(b)
	if !r.skip(2+32) || !r.skipVec(1) || !r.skipVec(2) || !r.skipVec(1) {
		return "", false
	}
	if len(r) == 0 {
		return "", true // no extensions (an old client): no SNI
	}
	exts, ok := r.vec(2)
	if !ok || len(r) != 0 {
		return "", false
	}
	sni := ""
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.vec(2)
		if !ok1 || !ok2 {
			return "", false
		}
		if typ != 0 { // server_name
			continue
		}
		if sni != "" {
			return "", false // two server_name extensions
		}
		list, ok := data.vec(2)
		if !ok || len(data) != 0 || len(list) == 0 {
			return "", false
		}
		for len(list) > 0 {
			kind, ok1 := list.u8()
			name, ok2 := list.vec(2)
			if !ok1 || !ok2 || len(name) == 0 {
				return "", false
			}
			if kind != 0 { // host_name; no other kind is defined
				continue
			}
			if sni != "" || name[len(name)-1] == '.' {
				return "", false // two host names, or a trailing dot (RFC 6066 §3)
			}
			sni = string(name)
		}
	}
	if !validHost(sni) {
		sni = ""
	}
	return sni, true
}

// validHost accepts the names the sidecar may use as a destination: DNS
// labels of letters, digits, '-' and '_', at most 253 bytes, no trailing dot.
// Anything else is a client's junk and names nothing.
func validHost(s string) bool {
	if s == "" || len(s) > 253 || s[len(s)-1] == '.' || s[0] == '.' {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		if label++; label > 63 {
			return false
		}
	}
	return true
}

// reader is a cursor over TLS's length-prefixed vectors.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) u8() (int, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := int((*r)[0])
	*r = (*r)[1:]
	return v, true
}

func (r *reader) u16() (int, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := int((*r)[0])<<8 | int((*r)[1])
	*r = (*r)[2:]
	return v, true
}

// vec reads a vector whose length prefix has lenBytes bytes.
func (r *reader) vec(lenBytes int) (reader, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := 0
	for _, c := range (*r)[:lenBytes] {
		n = n<<8 | int(c)
	}
	*r = (*r)[lenBytes:]
	if len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) skipVec(lenBytes int) bool {
	_, ok := r.vec(lenBytes)
	return ok
}
