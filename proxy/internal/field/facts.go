package field

// Known is a set of the fields the lean loop's writeHeader decides on
// when a response's head comes as lines (leanhttp's SetRawHeader).
type Known uint8

const (
	ContentLength Known = 1 << iota
	ContentType
	ContentEncoding // a non-empty first one: what writeHeader asks
	Date
)

// KnownNames are the Known fields' names, bit by bit.
var KnownNames = [...]string{"Content-Length", "Content-Type", "Content-Encoding", "Date"}

// KnownOf is the Known bit of a canonical name, 0 for any other name.
func KnownOf(name []byte) Known {
	// One comparison at most, by length: most names are none of them,
	// and most heads hold three (a loop over the names was an eighth
	// of a response head's read). TestKnownOf holds it to KnownNames.
	switch len(name) {
	case 4:
		if string(name) == "Date" {
			return Date
		}
	case 12:
		if string(name) == "Content-Type" {
			return ContentType
		}
	case 14:
		if string(name) == "Content-Length" {
			return ContentLength
		}
	case 16:
		if string(name) == "Content-Encoding" {
			return ContentEncoding
		}
	}
	return 0
}

// Facts is what a head's lines tell writeHeader: which Known fields
// they hold, and the Content-Length. Whoever checks the lines notes
// each in it: SetRawHeader as it checks them, or the fast transport as
// it reads them from the upstream (SetCheckedRawHeader), so that lines
// are checked once per response, not twice.
type Facts struct {
	Has    Known
	Length int64 // the Content-Length, when Has holds it
	ceSeen bool
}

// Note notes one line, "name: value", name canonical and value checked.
// It reports false for a line the lean loop does not take as a line: a
// field that frames the message or names other fields (Connection,
// Transfer-Encoding, Trailer, Upgrade), or a second or invalid
// Content-Length.
func (f *Facts) Note(name, value []byte) bool {
	switch string(name) {
	case "Connection", "Transfer-Encoding", "Trailer", "Upgrade":
		return false
	}
	switch k := KnownOf(name); k {
	case ContentLength:
		n, ok := Length(value)
		if !ok || f.Has&k != 0 {
			return false
		}
		f.Length = n
		f.Has |= k
	case ContentEncoding:
		if !f.ceSeen && len(value) > 0 {
			f.Has |= k
		}
		f.ceSeen = true
	default:
		f.Has |= k
	}
	return true
}

// RequestLines are a request head's field lines as its client sent
// them, each name spelled as the header map spells it, for a proxy that
// sends them on as they are (outbound's fast transport) rather than
// from the header map made of them: the lean loop (leanhttp) gives them
// when every line is of the one form a header map writes back, so that
// the two ways write the same fields.
type RequestLines struct {
	// Text is the lines, "Name: value\r\n" each: a canonical name, a
	// colon and one space, a value without white space at either end
	// (or none), in the client's order, the Host line among them.
	Text string
	// Connection and Te say whether Text holds a Connection or a Te
	// line: the hop-by-hop fields whose values change what is sent on,
	// looked up in the header map only when there.
	Connection, Te bool
	// Upgrade and RequestID say whether Text holds an Upgrade or an
	// X-Request-Id line: the fields every request is asked for, looked
	// up only when there (most requests have neither).
	Upgrade, RequestID bool
	// ViaEnd is where the last Via line of Text ends (0: there is
	// none): a proxy's own Via entry follows the app's (RFC 9110 §7.6.3).
	ViaEnd int
}
