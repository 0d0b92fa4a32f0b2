package leanhttp

import (
	"errors"
	"math"
	"net"

	"github.com/minimesh/minimesh/internal/netconn"
)

// TE10Guard follows the HTTP/1.x requests of one connection as the
// standard server reads them (Scan on every read, in order) and spoils,
// in place, each HTTP/1.0 request head that carries Transfer-Encoding,
// so that net/http answers it 400 Bad Request and closes the connection.
//
// net/http ignores Transfer-Encoding in an HTTP/1.0 request
// (golang/go#12785): it forwards the request without its body and, on a
// kept-alive connection, reads the body's bytes as the next request, a
// request smuggling primitive. RFC 9112 §6.1 says a server must treat
// such framing as faulty and close the connection after its answer;
// nginx and hyper answer 400. The guard turns the colon of every
// Transfer-Encoding field of such a head into a space: a malformed field
// line, which net/http refuses with 400 and "Connection: close" before
// any handler runs, whatever the spelling or count of the fields
// ("chunked", "Chunked", "gzip, chunked", two fields).
//
// To know where each head starts, it follows the bodies between them:
// Content-Length bytes, and chunked framing (HTTP/1.1). It stops looking
// (and passes every byte as it is) after a request that may turn the
// connection into something else (CONNECT, an Upgrade but to h2c alone,
// the h2c preface) and
// after framing
// net/http refuses anyway, which closes the connection. It holds no
// buffer: a few counters per connection.
type TE10Guard struct {
	state  uint8
	method [8]byte // the request line's first bytes, for CONNECT
	tail   [9]byte // the request line's last bytes (CR aside), for " HTTP/1.0"
	line   int     // bytes of the current line so far
	name   [17]byte
	nlen   int  // bytes of the current field's name so far (up to len(name)+1)
	inName bool // before the current field line's colon
	field  uint8
	// hadLine: the request line is behind (the head's fields follow).
	hadLine bool
	http10  bool
	te      bool
	up      bool    // Upgrade or CONNECT: the connection may stop being HTTP
	upv     [3]byte // an Upgrade field's value so far, to tell "h2c" alone
	// upFirst is what the head's first Upgrade field said: upNone (no
	// field yet), upEmpty, or upSome. The handlers read an Upgrade as
	// net/http's Header.Get does, the first field's value: a head whose
	// first Upgrade is empty is no upgrade to them, whatever follows.
	upFirst uint8
	clSeen  bool
	clBad   bool
	cl      int64 // the Content-Length so far / of the head
	val     int64 // the Content-Length field being read
	valN    int   // its digits
	valEnd  bool  // white space after its digits
	left    int64 // body or chunk bytes to pass
	sizeN   int   // digits of the chunk size line
	sizeX   bool  // the chunk size ended (extension, white space)
	crlf    uint8 // bytes of the CRLF after a chunk's data
}

// The guard's states.
const (
	gHead      = iota // in a request head (or before one)
	gBody             // in a Content-Length body
	gChunkSize        // in a chunk size line
	gChunkData        // in a chunk's data
	gChunkCRLF        // in the CRLF after a chunk's data
	gTrailer          // in the trailer section of a chunked body
	gOff              // not following any more
)

// upFirst's values.
const (
	upNone = iota
	upEmpty
	upSome
)

// Fields the guard reads.
const (
	fOther = iota
	fTE
	fCL
	fUpgrade
)

// Scan follows p, the next bytes read from the connection, spoiling
// what it must in place. Call it on every read, in order, before the
// server sees the bytes.
func (g *TE10Guard) Scan(p []byte) {
	for i := 0; i < len(p); {
		switch g.state {
		case gOff:
			return
		case gBody, gChunkData:
			n := int(min(g.left, int64(len(p)-i)))
			g.left -= int64(n)
			i += n
			if g.left == 0 {
				if g.state == gBody {
					g.state = gHead
				} else {
					g.state, g.crlf = gChunkCRLF, 0
				}
			}
			continue
		case gChunkCRLF:
			if c := p[i]; g.crlf == 0 && c != '\r' || g.crlf == 1 && c != '\n' {
				g.state = gOff // net/http's malformed chunked encoding: it closes
				return
			}
			if g.crlf++; g.crlf == 2 {
				g.state, g.line = gChunkSize, 0
			}
		case gChunkSize:
			g.chunkSize(p[i])
		case gTrailer:
			c := p[i]
			if c == '\n' {
				if g.line == 0 {
					g.state = gHead // the body's end: the next request's head
				}
				g.line = 0
			} else if c != '\r' || g.line > 0 {
				g.line++
			}
		case gHead:
			g.head(p, i)
		}
		i++
	}
}

// chunkSize reads one byte of a chunk size line: hex digits, then an
// extension or white space, up to LF.
func (g *TE10Guard) chunkSize(c byte) {
	switch {
	case c == '\n':
		if g.sizeN == 0 {
			g.state = gOff
			return
		}
		if g.left == 0 {
			g.state, g.line = gTrailer, 0
		} else {
			g.state = gChunkData
		}
		g.sizeN, g.sizeX = 0, false
	case g.sizeX || c == '\r':
		g.sizeX = true
	case c == ';' || c == ' ' || c == '\t':
		g.sizeX = true
	default:
		d := unhex(c)
		if g.sizeN == 0 {
			g.left = 0
		}
		if d < 0 || g.sizeN >= 16 || g.left > math.MaxInt64>>4 { // not hex, or more than net/http takes
			g.state = gOff
			return
		}
		g.left = g.left<<4 | int64(d)
		g.sizeN++
	}
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// head reads p[i], one byte of a request head.
func (g *TE10Guard) head(p []byte, i int) {
	c := p[i]
	first := !g.hadLine
	if c == '\n' {
		g.endLine(first)
		return
	}
	if c == '\r' {
		return // before LF, or net/http's to refuse
	}
	if first {
		if g.line < len(g.method) {
			g.method[g.line] = c
		}
		copy(g.tail[:], g.tail[1:])
		g.tail[len(g.tail)-1] = c
		g.line++
		return
	}
	if g.line == 0 {
		if (c == ' ' || c == '\t') && g.field == fUpgrade {
			// An obs-fold line of the Upgrade field: net/http joins it
			// to the value with one space (net/textproto), so its bytes
			// are more of the value, past what came before.
			g.valEnd = g.valN > 0
			g.line++
			return
		}
		if (c == ' ' || c == '\t') && g.field == fCL {
			// An obs-fold line of a Content-Length field, which net/http
			// joins to the value ("Content-Length:" then " 4" is 4): the
			// guard does not read it, so it spoils the fold into a line
			// without a colon, which net/http refuses (400 and close),
			// rather than follow a body of a length it did not read.
			p[i] = 'x'
			g.clBad = true
		}
		if g.field == fUpgrade {
			g.upgradeEnd()
		}
		g.inName, g.nlen, g.field = true, 0, fOther
		g.val, g.valN, g.valEnd = 0, 0, false
	}
	g.line++
	if g.inName {
		if c != ':' {
			if g.nlen < len(g.name) {
				g.name[g.nlen] = lower(c)
			}
			g.nlen++
			return
		}
		g.inName = false
		switch n := string(g.name[:min(g.nlen, len(g.name))]); {
		case g.nlen == 17 && n == "transfer-encoding":
			g.field, g.te = fTE, true
			if g.http10 {
				p[i] = ' ' // net/http: malformed field line, 400 and close
			}
		case g.nlen == 14 && n == "content-length":
			g.field = fCL
		case g.nlen == 7 && n == "upgrade":
			g.field = fUpgrade
		}
		return
	}
	if g.field == fUpgrade {
		// Leading white space aside, its bytes in upv (valN counts them,
		// and one more stands for anything past "h2c"), as endLine reads.
		switch {
		case (c == ' ' || c == '\t') && g.valN == 0:
		case g.valN < len(g.upv) && !g.valEnd:
			g.upv[g.valN] = lower(c)
			g.valN++
		case c == ' ' || c == '\t':
			g.valEnd = g.valN > 0
		default:
			g.valN = len(g.upv) + 1
		}
		return
	}
	if g.field == fCL {
		switch {
		case c == ' ' || c == '\t':
			g.valEnd = g.valN > 0
		case '0' <= c && c <= '9' && !g.valEnd && g.val < 1e17:
			// Leading zeros count as digits, not toward the bound:
			// net/http's ParseUint reads "0000000000000000004" as 4,
			// and a guard that called it bad stopped following a
			// connection net/http kept.
			g.val = g.val*10 + int64(c-'0')
			g.valN++
		default:
			g.clBad = true // net/http refuses it
		}
	}
}

// endLine ends a line of the head.
func (g *TE10Guard) endLine(first bool) {
	if first {
		if g.line == 0 {
			return // an empty line before the request line
		}
		g.http10 = string(g.tail[:]) == " HTTP/1.0"
		// CONNECT, and a version but HTTP/1.x (the h2c preface, "PRI *
		// HTTP/2.0"), may be followed by bytes of another protocol.
		g.up = string(g.method[:]) == "CONNECT " || string(g.tail[:8]) != " HTTP/1."
		g.hadLine, g.line = true, 0
		return
	}
	if g.line > 0 {
		// An Upgrade field is judged when it is whole, at the next line
		// that is not its fold (upgradeEnd).
		if g.field == fCL && !g.inName {
			if g.valN == 0 || g.clSeen && g.val != g.cl {
				g.clBad = true
			}
			g.cl, g.clSeen = g.val, true
		}
		g.line = 0
		return
	}
	// The blank line: the head's end.
	if g.field == fUpgrade {
		g.upgradeEnd()
	}
	switch {
	case g.up || g.clBad || g.te && g.http10:
		g.state = gOff // another protocol, or net/http's 400 and close
	case g.te:
		g.state, g.line, g.left, g.sizeN, g.sizeX = gChunkSize, 0, 0, 0, false
	case g.clSeen && g.cl > 0:
		g.state, g.left = gBody, g.cl
	}
	*g = TE10Guard{state: g.state, left: g.left} // the next head starts afresh
}

// upgradeEnd judges a whole Upgrade field as the handlers will read the
// head (docs/operations.md, "Upgrade requests"). An upgrade to h2c alone
// is no upgrade: they serve it as a plain request on a kept connection,
// whose next heads the guard must still follow; so is a head whose first
// Upgrade field is empty (net/http's Header.Get reads none). Behind a
// first Upgrade with a value, any field but h2c alone (another protocol,
// a list, a folded value with more in it) may switch the connection, and
// the guard stops following; the handlers close one they do not switch
// (an empty later field among h2c ones included). Judged on each line
// instead, a fold that added nothing but white space to "h2c", or an
// empty first field, left a kept connection unguarded.
func (g *TE10Guard) upgradeEnd() {
	g.field = fOther
	empty := g.valN == 0
	if g.upFirst == upNone {
		g.upFirst = upEmpty
		if !empty {
			g.upFirst = upSome
		}
	}
	if g.upFirst == upSome && !empty && (g.valN != len(g.upv) || string(g.upv[:]) != "h2c") {
		g.up = true
	}
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// guardedConn is a connection whose reads a TE10Guard follows.
type guardedConn struct {
	net.Conn
	g TE10Guard
}

// GuardConn returns c with a TE10Guard on its reads, for a standard
// server that does not read through the lean loop (--server=std, the
// inbound listener). Unwrap gives c back, for hooks that look for their
// own type.
func GuardConn(c net.Conn) net.Conn { return &guardedConn{Conn: c} }

func (c *guardedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.g.Scan(p[:n])
	return n, err
}

// Unwrap is the guarded connection.
func (c *guardedConn) Unwrap() net.Conn { return c.Conn }

// CloseWrite half-closes the guarded connection (or the one under it
// that can be), for the tunnels and relays that take it over after a
// CONNECT or an Upgrade.
func (c *guardedConn) CloseWrite() error {
	if cw, ok := netconn.Find[interface{ CloseWrite() error }](c.Conn); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// GuardListener guards every connection ln accepts (GuardConn), for a
// net/http server that serves without the lean loop.
func GuardListener(ln net.Listener) net.Listener { return guardedListener{ln} }

type guardedListener struct{ net.Listener }

func (l guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return GuardConn(c), nil
}
