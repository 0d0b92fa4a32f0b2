package leanhttp

import (
	"bufio"
	"bytes"
	"net/http"

	"github.com/minimesh/minimesh/proxy/internal/field"
)

// rawHead is a response header given as lines (SetRawHeader): a proxy
// that read its upstream's head as bytes passes it on without a header
// map, a string per value and a sort. writeHeader asks it only about the
// few fields it decides on; the lines go out as they came, less those it
// drops and those the header map replaces.
type rawHead struct {
	lines []byte // "Name: value\r\n" each
	cl    int64  // the Content-Length, if has says there is one
	// Which of the fields writeHeader decides on the lines hold (as
	// their checker noted them), and which of those it dropped.
	has, drop field.Known
}

// keyField names the fields writeHeader decides on (0 for the others)
// by a header map's key.
func keyField(key string) field.Known {
	for i, n := range field.KnownNames {
		if key == n {
			return 1 << i
		}
	}
	return 0
}

// SetRawHeader sets lines, header fields as "Name: value\r\n" each, as
// part of the response's header (and of the 1xx answers' that follow):
// they are sent before the fields of Header's map, and a field the map
// has replaces the lines of its name (where Add would have appended to
// them). The lines are the response's from then on (not copied); they
// replace those given before, nil none. It reports false, doing nothing,
// after WriteHeader, and for lines not all of the one form net/http
// writes: a canonical name ("Content-Type"), a colon and one space, a
// value without control bytes (HTAB aside) nor white space at either
// end, CRLF. It also declines what frames the message or names other
// fields (Connection, Transfer-Encoding, Trailer, Upgrade) and a second
// or invalid Content-Length: those go in the map. As after SetHeader,
// WriteHeader keeps no copy of the header: the caller changes it after
// WriteHeader only once it is out (Flush, or the handler's end).
func (w *response) SetRawHeader(lines []byte) bool {
	var f field.Facts // (after WriteHeader, SetCheckedRawHeader refuses)
	for rest := lines; len(rest) > 0; {
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			return false
		}
		name, value, ok := rawLine(rest[:nl+1])
		if !ok || !f.Note(name, value) {
			return false
		}
		rest = rest[nl+1:]
	}
	return w.SetCheckedRawHeader(lines, f)
}

// SetCheckedRawHeader is SetRawHeader for lines the caller checked are
// all of its form, noting each in f (field.Facts.Note, every line
// accepted): a proxy that checked its upstream's head as it read it
// (the fast transport) does not pay for the same checks again.
func (w *response) SetCheckedRawHeader(lines []byte, f field.Facts) bool {
	if w.wroteHeader {
		return false
	}
	w.raw = rawHead{lines: lines, cl: f.Length, has: f.Has}
	w.calledHeader, w.setHeader = true, true
	return true
}

// rawLine splits a line of SetRawHeader's form.
func rawLine(line []byte) (name, value []byte, ok bool) {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, nil, false
	}
	line = line[:len(line)-2]
	colon := bytes.IndexByte(line, ':')
	if colon < 1 || len(line) < colon+2 || line[colon+1] != ' ' || !field.Canonical(line[:colon]) {
		return nil, nil, false
	}
	value = line[colon+2:]
	if !field.Bare(value) {
		return nil, nil, false
	}
	return line[:colon], value, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

// hasField reports whether the lines hold f, the field key names, for
// writeHeader: not if the map has key (it replaces the lines), nor if
// writeHeader dropped it.
func (rh *rawHead) hasField(header http.Header, f field.Known, key string) bool {
	if rh.has&f == 0 || rh.drop&f != 0 {
		return false
	}
	_, replaced := header[key]
	return !replaced
}

// write writes the lines, less those writeHeader dropped or drop names
// and those the header map replaces.
func (rh *rawHead) write(bw *bufio.Writer, header http.Header, drop field.Known) {
	drop |= rh.drop
	if drop == 0 && len(header) == 0 {
		// A proxy's answer most often: every line goes out, in one write.
		_, _ = bw.Write(rh.lines)
		return
	}
	for rest := rh.lines; len(rest) > 0; {
		nl := bytes.IndexByte(rest, '\n')
		line := rest[:nl+1]
		rest = rest[nl+1:]
		name := line[:bytes.IndexByte(line, ':')]
		if drop != 0 && drop&field.KnownOf(name) != 0 {
			continue
		}
		if _, replaced := header[string(name)]; replaced {
			continue
		}
		_, _ = bw.Write(line)
	}
}

// RequestLines gives the field lines of the request w answers as its
// client sent them, names spelled canonically (newRequest), when each
// is of the form its header map writes back (field.RequestLines): a
// proxy then sends them on as they are, with its own changes, and never
// walks, sorts and writes the map. ok is false for a head with a line
// of another form (white space around a value, or other than one space
// before it) or a field the map has and the lines lack (the
// Cache-Control a Pragma implies). The text is the request's until its
// response ends.
func (w *response) RequestLines() (field.RequestLines, bool) {
	return w.c.rs.lines, w.c.rs.lined
}
