package outbound

import (
	"bytes"
	"net/http"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"golang.org/x/net/http/httpguts"
)

// NoSniff keeps a response whose upstream sent no Content-Type without
// one on its way on: answer is the header map the server writes the
// response from. net/http's servers, HTTP/1 and HTTP/2, and the lean loop
// (its port) add the http.DetectContentType of the body's first bytes to
// a response without the field, which would make an echo of what a
// caller sent text/html (an X-Content-Type-Options: nosniff defeated,
// script run by a browser behind an ingress). Their documented way to
// suppress an automatic header is its key with a nil value, which writes
// nothing (docs/operations.md, "Answers the sidecar gives itself").
func NoSniff(upstream, answer http.Header) {
	if _, ok := upstream["Content-Type"]; ok {
		return
	}
	if _, ok := answer["Content-Type"]; !ok {
		answer["Content-Type"] = nil
	}
}

// closeListed appends to drop the names the Connection fields of the
// response head at the start of buf list, when one of them lists close
// (nil otherwise), and reports whether the whole head is in buf (none
// appended if not): http.ReadResponse deletes such a Connection field
// (net/http's shouldClose), so that neither removeHopByHop nor the
// ReverseProxy would see the names it lists, and a field the upstream
// meant for this hop alone would reach the app (RFC 9110 §7.6.1). The
// fast transport reads such heads with http.ReadResponse, from a buffer
// that most often holds the whole head, and keeps the bytes of one that
// goes on past it (send).
func closeListed(buf []byte, drop []string) (_ []string, whole bool) {
	var conn []string
	inConn := false // the line before was a Connection field's
	for i := 0; ; i++ {
		nl := bytes.IndexByte(buf, '\n')
		if nl < 0 {
			return nil, false // not all of the head
		}
		line := bytes.TrimSuffix(buf[:nl], []byte("\r"))
		buf = buf[nl+1:]
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			// obs-fold (RFC 9112 §5.2): net/http's reader joins it to
			// the field above, so a Connection field's names may go on
			// here ("Connection: close,\r\n X-Secret").
			if inConn {
				conn[len(conn)-1] += " " + string(line)
			}
			continue
		}
		name, v, ok := bytes.Cut(line, []byte(":"))
		inConn = ok && i > 0 && field.EqualFold(name, "Connection")
		if inConn {
			conn = append(conn, string(v))
		}
	}
	if !httpguts.HeaderValuesContainsToken(conn, "close") {
		return nil, true
	}
	return connectionListed(conn, drop), true
}
