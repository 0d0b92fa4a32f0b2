package outbound

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// settingsUpstream is an h2c upstream written with x/net/http2's Framer
// that sends its first SETTINGS (SETTINGS_MAX_CONCURRENT_STREAMS limit)
// the way mode says, then answers every request 200 after 20 ms,
// counting what a client must not do: open a stream before it has
// acknowledged those SETTINGS (early), or more streams at once than the
// limit (over).
type settingsUpstream struct {
	mode         string
	limit        uint32
	early, over  atomic.Int32
	answered     atomic.Int32
	firstHeaders atomic.Int64 // unix nanoseconds of the first HEADERS seen, 0 before
}

// The modes of settingsUpstream.
const (
	modeFirst    = "SETTINGS first"                         // at once, before reading anything
	modePreface  = "SETTINGS after the client preface"      // as servers that detect h2c by its first bytes
	modeOneWrite = "SETTINGS, WINDOW_UPDATE and ACK in one" // after the client's SETTINGS, in one write
	modeLate     = "SETTINGS only once a request came"      // never within the wait
	modeHTTP1    = "HTTP/1 answer to the preface"
)

func (u *settingsUpstream) start(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { u.serve(t, c) })
		}
	})
	return ln.Addr().String()
}

func (u *settingsUpstream) serve(t *testing.T, c net.Conn) {
	defer c.Close()
	var wmu sync.Mutex
	fr := http2.NewFramer(c, c)
	settings := func(w *http2.Framer) {
		if err := w.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: u.limit}); err != nil {
			t.Errorf("writing SETTINGS: %v", err)
		}
	}
	readPreface := func() bool {
		b := make([]byte, len(http2.ClientPreface))
		_, err := io.ReadFull(c, b)
		if err == io.EOF {
			// Closed before a byte: a dial Go's transport no longer
			// needed (another connection took the request first).
			return false
		}
		if err != nil || string(b) != http2.ClientPreface {
			t.Errorf("client preface %q, %v", b, err)
			return false
		}
		return true
	}
	switch u.mode {
	case modeFirst:
		settings(fr)
		if !readPreface() {
			return
		}
	case modePreface:
		if !readPreface() {
			return
		}
		settings(fr)
	case modeOneWrite:
		if !readPreface() {
			return
		}
		if f, err := fr.ReadFrame(); err != nil {
			t.Errorf("reading the client's SETTINGS: %v", err)
			return
		} else if _, ok := f.(*http2.SettingsFrame); !ok {
			t.Errorf("client's first frame %v, want SETTINGS", f.Header())
			return
		}
		var buf bytes.Buffer
		w := http2.NewFramer(&buf, nil)
		settings(w)
		w.WriteWindowUpdate(0, 1<<20)
		w.WriteSettingsAck()
		if _, err := c.Write(buf.Bytes()); err != nil {
			t.Errorf("writing: %v", err)
		}
	case modeLate:
		if !readPreface() {
			return
		}
	case modeHTTP1:
		if !readPreface() {
			return
		}
		io.WriteString(c, "HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		return
	}
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	acked := false
	var open atomic.Int32
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				acked = true
				continue
			}
			wmu.Lock()
			fr.WriteSettingsAck()
			wmu.Unlock()
		case *http2.MetaHeadersFrame:
			u.firstHeaders.CompareAndSwap(0, time.Now().UnixNano())
			if !acked {
				u.early.Add(1)
				if u.mode == modeLate {
					wmu.Lock()
					settings(fr)
					wmu.Unlock()
				}
			}
			if open.Add(1) > int32(u.limit) {
				u.over.Add(1)
			}
			id := f.StreamID
			time.AfterFunc(20*time.Millisecond, func() {
				var hb bytes.Buffer
				hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				open.Add(-1)
				wmu.Lock()
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
				wmu.Unlock()
				u.answered.Add(1)
			})
		}
	}
}

// TestH2SettingsBeforeRequests: Go's transport places no request on a
// new upstream connection before it has read the upstream's first
// SETTINGS (awaitSettings), whenever the upstream sends them: the
// upstream sees no stream before its SETTINGS were acknowledged, and
// never more at once than its limit, with three times as many requests
// as the limit at once (before, the transport took 100 streams on a
// connection whose SETTINGS it had not read). An upstream that sends no
// SETTINGS within the wait gets its request after the wait, as it would
// have at once before; one that answers HTTP/1 fails the requests at
// once, as before.
func TestH2SettingsBeforeRequests(t *testing.T) {
	const wait = 300 * time.Millisecond
	for _, tc := range []struct {
		mode    string
		limit   uint32
		early   int32 // streams the upstream sees before its SETTINGS are acknowledged
		fail    bool  // the requests fail (HTTP/1)
		waitAll bool  // the first request goes only after the wait
	}{
		{mode: modeFirst, limit: 1},
		{mode: modeFirst, limit: 4},
		{mode: modePreface, limit: 1},
		{mode: modePreface, limit: 4},
		{mode: modeOneWrite, limit: 1},
		{mode: modeOneWrite, limit: 4},
		{mode: modeLate, limit: 100, early: 1, waitAll: true},
		{mode: modeHTTP1, limit: 1, fail: true},
	} {
		t.Run(fmt.Sprintf("%s, limit %d", tc.mode, tc.limit), func(t *testing.T) {
			u := &settingsUpstream{mode: tc.mode, limit: tc.limit}
			addr := u.start(t)
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			var nd net.Dialer
			tr := &http.Transport{DialContext: boundDials(nd.DialContext), MaxConnsPerHost: 1, Protocols: &p}
			awaitSettings(tr, wait)
			t.Cleanup(tr.CloseIdleConnections)
			n := 3 * int(min(tc.limit, 4))
			if tc.mode == modeLate {
				n = 1
			}
			start := time.Now()
			var wg sync.WaitGroup
			var failed atomic.Int32
			var firstErr atomic.Pointer[error]
			for range n {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
					resp, err := h2Tries{tr}.RoundTrip(req) // the sidecar's, with its GotConn (awaitSettled)
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode != 200 {
							err = io.ErrUnexpectedEOF
						}
					}
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, &err)
					}
				})
			}
			wg.Wait()
			took := time.Since(start)
			if tc.fail {
				if failed.Load() != int32(n) {
					t.Errorf("%d of %d requests failed, want all", failed.Load(), n)
				}
				if took >= wait {
					t.Errorf("the requests failed after %v, want before the wait (%v): nothing to wait for", took, wait)
				}
				return
			}
			if failed.Load() != 0 {
				t.Fatalf("%d of %d requests failed, first: %v", failed.Load(), n, *firstErr.Load())
			}
			if got := u.early.Load(); got != tc.early {
				t.Errorf("%d streams opened before the upstream's SETTINGS were acknowledged, want %d", got, tc.early)
			}
			if got := u.over.Load(); got != 0 {
				t.Errorf("%d streams opened past the upstream's limit of %d", got, tc.limit)
			}
			if first := time.Unix(0, u.firstHeaders.Load()); tc.waitAll && first.Sub(start) < wait {
				t.Errorf("the first request reached the upstream %v after it began, want after the wait (%v)", first.Sub(start), wait)
			}
		})
	}
}
