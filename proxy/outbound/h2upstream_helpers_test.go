package outbound

import (
	"io"
	"net"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serveH2c is the upstream's side of one raw h2c connection, for the
// rigs that script an upstream frame by frame: it reads the client's
// preface, sends the upstream's SETTINGS and hands handle every frame
// after but the SETTINGS and PINGs ackControl answers, until the
// connection or handle fails. Header blocks reach handle whole, as
// MetaHeadersFrames. The caller closes c.
func serveH2c(c net.Conn, handle func(fr *http2.Framer, f http2.Frame) error) {
	if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		if !ackControl(fr, f) && handle(fr, f) != nil {
			return
		}
	}
}

// ackControl answers f when it is a SETTINGS or PING frame that wants an
// acknowledgement (the peer of a raw HTTP/2 connection must send them, or
// Go's side stalls or closes), and reports whether it was one of those:
// the raw framer loops of the tests then go on to the next frame. A
// failed write is the connection's end, which the loop's next read sees.
func ackControl(fr *http2.Framer, f http2.Frame) bool {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			_ = fr.WriteSettingsAck()
		}
		return true
	case *http2.PingFrame:
		if !f.IsAck() {
			_ = fr.WritePing(true, f.Data)
		}
		return true
	}
	return false
}
