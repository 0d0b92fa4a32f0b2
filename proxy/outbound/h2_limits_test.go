package outbound_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/outbound"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHTTP2Limits: the figures of docs/grpc.md ("Limits") and of
// docs/operations.md's limits table are what the outbound listener
// advertises, and a request header list over its limit ends as they say:
// 431 on its stream when the frame that crosses the limit ends the list;
// GOAWAY PROTOCOL_ERROR and the connection closed, no answer, when more
// CONTINUATION frames of it follow (Go's server reads none past the
// limit: its defence against CONTINUATION floods, CVE-2023-45288), which
// is what a client splitting its headers into 16 KiB frames, as curl
// does, gets. Go's and grpc-go's clients refuse to send a list over the
// advertised size.
func TestHTTP2Limits(t *testing.T) {
	up := startH2CUpstream(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	sc := startSidecar(t, "", resolve(up, geo))

	// open makes an h2c connection and returns what the sidecar said of
	// itself: its SETTINGS and the increment of its connection window.
	open := func(t *testing.T) (net.Conn, *http2.Framer, map[http2.SettingID]uint32, uint32) {
		c, err := net.Dial("tcp", sc.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		fr := http2.NewFramer(c, c)
		fr.MaxHeaderListSize = 1 << 20
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
		settings := map[http2.SettingID]uint32{}
		var window uint32
		for gotSettings := false; !gotSettings || window == 0; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading the sidecar's SETTINGS: %v", err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					gotSettings = true
					_ = f.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
					if err := fr.WriteSettingsAck(); err != nil {
						t.Fatal(err)
					}
				}
			case *http2.WindowUpdateFrame:
				if f.StreamID == 0 {
					window = f.Increment
				}
			}
		}
		return c, fr, settings, window
	}
	// block is a GET's header block with pads fields of 4,000 bytes.
	block := func(pads int) []byte {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", geo}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		for i := range pads {
			_ = enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%02d", i), Value: strings.Repeat("a", 4000)})
		}
		return b.Bytes()
	}
	// answer reads frames until stream id's answer (its :status) or the
	// connection's GOAWAY and end.
	answer := func(t *testing.T, fr *http2.Framer, id uint32) (status string, goAway *http2.ErrCode) {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				if errors.Is(err, io.EOF) || goAway != nil {
					return "", goAway
				}
				t.Fatalf("waiting for stream %d's answer: %v", id, err)
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID == id {
					return f.PseudoValue("status"), goAway
				}
			case *http2.GoAwayFrame:
				code := f.ErrCode
				goAway = &code
			}
		}
	}

	t.Run("settings", func(t *testing.T) {
		_, _, s, window := open(t)
		for _, w := range []struct {
			id   http2.SettingID
			want uint32
		}{
			{http2.SettingMaxConcurrentStreams, outbound.H2MaxConcurrentStreams}, // 250
			{http2.SettingMaxFrameSize, outbound.H2MaxReadFrameSize},             // 1 MiB
			{http2.SettingInitialWindowSize, outbound.H2MaxReceiveBuffer},        // 1 MiB per stream
			{http2.SettingHeaderTableSize, 4 << 10},                              // HPACK
			{http2.SettingMaxHeaderListSize, outbound.MaxHeaderBytes + 10*32},    // 65,856
		} {
			if got, ok := s[w.id]; !ok || got != w.want {
				t.Errorf("%v = %d (sent: %v), want %d", w.id, got, ok, w.want)
			}
		}
		if got, want := 65535+window, uint32(outbound.H2MaxReceiveBuffer); got != want {
			t.Errorf("connection window %d, want %d", got, want)
		}
		if outbound.H2ReadIdleTimeout != 30*time.Second || outbound.H2PingTimeout != 15*time.Second {
			t.Errorf("pings after %v, closed %v later, want 30s and 15s", outbound.H2ReadIdleTimeout, outbound.H2PingTimeout)
		}
	})

	t.Run("header list in one frame", func(t *testing.T) {
		_, fr, _, _ := open(t)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(20), EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
		if status, goAway := answer(t, fr, 1); status != "431" || goAway != nil {
			t.Fatalf("status %q, GOAWAY %v, want 431 and the connection kept", status, goAway)
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(1), EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
		if status, goAway := answer(t, fr, 3); status != "200" || goAway != nil {
			t.Fatalf("the next request on the connection: status %q, GOAWAY %v, want 200", status, goAway)
		}
	})

	t.Run("header list in 16 KiB frames", func(t *testing.T) {
		_, fr, _, _ := open(t)
		b := block(30)
		const frame = 16 << 10
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:frame], EndStream: true}); err != nil {
			t.Fatal(err)
		}
		for b = b[frame:]; len(b) > 0; {
			n := min(frame, len(b))
			if err := fr.WriteContinuation(1, n == len(b), b[:n]); err != nil {
				break // closed already
			}
			b = b[n:]
		}
		if status, goAway := answer(t, fr, 1); status != "" || goAway == nil || *goAway != http2.ErrCodeProtocol {
			t.Fatalf("status %q, GOAWAY %v, want no answer, GOAWAY PROTOCOL_ERROR and the connection closed", status, goAway)
		}
	})
}
