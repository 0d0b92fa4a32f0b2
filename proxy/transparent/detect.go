package transparent

import "bytes"

// Protocol is what a redirected connection was found to carry. The values
// are those of the access log's "protocol" and of the sidecar's debug log
// (docs/interception.md, "Protocol detection").
type Protocol string

const (
	// HTTP1 is an HTTP/1.x request line: the connection gets the L7 path.
	HTTP1 Protocol = "http1"
	// HTTP1Proxy is an HTTP/1.x request in absolute form or a CONNECT: the
	// app talks to a forward proxy of its own at the original destination,
	// and the connection is relayed to it as opaque TCP.
	HTTP1Proxy Protocol = "http1-proxy"
	// HTTP2 is the HTTP/2 prior-knowledge preface (h2c, gRPC without
	// TLS): the connection gets the L7 path, as HTTP/2 (docs/grpc.md).
	HTTP2 Protocol = "http2"
	// TLS is a ClientHello: relayed as opaque TCP, named by its SNI.
	TLS Protocol = "tls"
	// OpaquePort is a connection to a port of --opaque-ports: relayed at
	// once without reading, so that a server that speaks first is not
	// kept waiting.
	OpaquePort Protocol = "opaque-port"
	// Unknown is first bytes of no protocol above: relayed as opaque TCP.
	Unknown Protocol = "unknown"
	// NoData is a client that sent nothing within the detection timeout
	// (or closed without sending): relayed as opaque TCP, since its server
	// may be the one to speak first.
	NoData Protocol = "no-data"
)

// h2Preface is the client connection preface of HTTP/2 (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxMethod bounds an HTTP method token. The longest registered method
// (UPDATEREDIRECTREF, VERSION-CONTROL, BASELINE-CONTROL) has 17 bytes.
const maxMethod = 24

// Classify decides the protocol of a connection from its first bytes. more
// is true while the bytes so far are a proper prefix of something that
// could still turn out to be HTTP/1.x, HTTP/2 or a TLS ClientHello: the
// caller reads on (within the detection timeout) and asks again. A TLS
// ClientHello asks for more until it is whole, so that its SNI can be read.
//
// When no more bytes will come (timeout, end of stream, buffer full), the
// caller uses Final instead.
func Classify(b []byte) (p Protocol, more bool) {
	if len(b) == 0 {
		return NoData, true
	}
	if b[0] == 0x16 { // a TLS handshake record; no HTTP token starts so
		switch _, st := clientHelloSNI(b); st {
		case helloMore:
			return TLS, true
		case helloNotTLS:
			return Unknown, false
		}
		return TLS, false
	}
	if n := min(len(b), len(h2Preface)); string(b[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return HTTP2, false
		}
		return HTTP2, true
	}
	switch requestLine(b) {
	case lineOK:
		if t := b[bytes.IndexByte(b, ' ')+1]; t != '/' && t != '*' {
			return HTTP1Proxy, false
		}
		return HTTP1, false
	case lineMore:
		return HTTP1, true
	}
	return Unknown, false
}

// Final is the protocol of bytes after which no more will come: a request
// line or preface cut short is no protocol the sidecar can speak, and is
// relayed as it is.
func Final(b []byte) Protocol {
	p, more := Classify(b)
	if !more || p == TLS {
		return p // a ClientHello too long or cut short is still TLS, without SNI
	}
	if len(b) == 0 {
		return NoData
	}
	return Unknown
}

type lineStatus int

const (
	lineBad lineStatus = iota
	lineMore
	lineOK
)

// requestLine checks for "method SP request-target SP HTTP/1.d" followed
// by CR or LF (RFC 9112 §3). The method is any token, so that extension
// methods (WebDAV's PROPFIND, say) are HTTP too; the version is what tells
// HTTP from text protocols whose commands look alike (Redis' "SET k v",
// SMTP's "HELO x").
func requestLine(b []byte) lineStatus {
	i := 0
	for i < len(b) && isTchar(b[i]) {
		i++
	}
	if i == len(b) {
		if i > maxMethod {
			return lineBad
		}
		return lineMore
	}
	if i == 0 || i > maxMethod || b[i] != ' ' {
		return lineBad
	}
	i++
	start := i
	for i < len(b) && b[i] > ' ' && b[i] != 0x7f {
		i++
	}
	if i == len(b) {
		return lineMore
	}
	if i == start || b[i] != ' ' {
		return lineBad
	}
	i++
	const version = "HTTP/1."
	rest := b[i:]
	if n := min(len(rest), len(version)); !bytes.Equal(rest[:n], []byte(version[:n])) {
		return lineBad
	} else if n < len(version) {
		return lineMore
	}
	rest = rest[len(version):]
	if len(rest) == 0 {
		return lineMore
	}
	if rest[0] < '0' || rest[0] > '9' {
		return lineBad
	}
	if len(rest) == 1 {
		return lineMore
	}
	if rest[1] == '\r' || rest[1] == '\n' {
		return lineOK
	}
	return lineBad
}

// isTchar reports whether c may be in an HTTP token (RFC 9110 §5.6.2).
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
