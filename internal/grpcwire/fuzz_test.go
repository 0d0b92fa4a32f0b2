package grpcwire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// FuzzReader: the length-prefixed messages of a response body, read by
// reader.next, are those the gRPC framing (1 byte compressed flag, 4
// bytes big-endian length, the message) gives, with the refusals it
// documents: a compressed message (12), one over the limit (8, before
// anything of that size is allocated), a truncated header or message
// (13); the end of the body between two messages is io.EOF.
func FuzzReader(f *testing.F) {
	m1, _ := proto.Marshal(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
	m2, _ := proto.Marshal(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
	f.Add(frame(frame(nil, m1), m2), uint16(100))
	f.Add(frame(nil, nil), uint16(0))
	f.Add(frame(nil, m1)[:4], uint16(100))
	f.Add(frame(nil, m1), uint16(1))
	f.Add([]byte{1, 0, 0, 0, 0}, uint16(10))
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff}, uint16(10))
	f.Fuzz(func(t *testing.T, data []byte, max uint16) {
		r := &reader{r: bufio.NewReaderSize(bytes.NewReader(data), 16), max: int(max)}
		rest := data
		for i := 0; ; i++ {
			got, err := r.next()
			var want []byte
			wantCode := -1 // io.EOF
			switch {
			case len(rest) == 0:
			case len(rest) < 5:
				wantCode = 13
			case rest[0] != 0:
				wantCode = 12
			case int64(binary.BigEndian.Uint32(rest[1:])) > int64(max):
				wantCode = 8
			case int64(binary.BigEndian.Uint32(rest[1:])) > int64(len(rest)-5):
				wantCode = 13
			default:
				n := int(binary.BigEndian.Uint32(rest[1:]))
				want, rest, wantCode = rest[5:5+n], rest[5+n:], 0
			}
			var e *Error
			switch {
			case wantCode == 0:
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("message %d: %x %v, want %x", i, got, err, want)
				}
				continue
			case wantCode < 0:
				if err != io.EOF || got != nil {
					t.Fatalf("message %d: %x %v, want io.EOF", i, got, err)
				}
			case !errors.As(err, &e) || e.Code != wantCode || got != nil:
				t.Fatalf("message %d: %x %v, want code %d", i, got, err, wantCode)
			}
			return
		}
	})
}

// decodeGrpcMessage is grpc-go's (internal/transport/http_util.go): the
// reference for grpc-message, percent-encoded, with a malformed escape
// kept as it is, as the gRPC protocol asks ("implementations MUST NOT
// error or throw away the message").
func decodeGrpcMessage(msg string) string {
	var sb strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '%' && i+2 < len(msg) {
			if parsed, err := strconv.ParseUint(msg[i+1:i+3], 16, 8); err == nil {
				sb.WriteByte(byte(parsed))
				i += 2
				continue
			}
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// encodeGrpcMessage is grpc-go's percent-encoding of a status message:
// the seeds are what a grpc-go server sends.
func encodeGrpcMessage(msg string) string {
	var sb strings.Builder
	for _, r := range msg {
		for _, b := range []byte(string(r)) {
			if b >= ' ' && b <= '~' && b != '%' {
				sb.WriteByte(b)
			} else {
				sb.WriteString("%" + strings.ToUpper(strconv.FormatUint(uint64(b)|0x100, 16)[1:]))
			}
		}
	}
	return sb.String()
}

// FuzzStatus: the status of a call from its trailers (or a
// trailers-only answer's headers), and checkResponse's reading of the
// answer's headers: grpc-status as grpc-go reads it (a decimal int32; a
// malformed one is an error, never OK), grpc-message decoded as
// grpc-go decodes it.
func FuzzStatus(f *testing.F) {
	for _, s := range []struct {
		status, msg, ct string
		http            int
	}{
		{"0", "", "application/grpc", 200},
		{"5", encodeGrpcMessage("unknown service"), "application/grpc+proto", 200},
		{"13", encodeGrpcMessage("no such service: é\n100%"), "application/grpc", 200},
		{"12", "", "application/grpc;charset=utf-8", 200},
		{"2", "100%", "application/grpcx", 200},
		{"", "", "text/html", 503},
		{"x", "%zz%4", "application/grpc", 200},
		{"99999999999", "%41", "application/grpc", 200},
	} {
		f.Add(s.status, s.msg, s.ct, s.http)
	}
	f.Fuzz(func(t *testing.T, st, msg, ct string, code int) {
		h := http.Header{}
		if st != "" {
			h.Set("Grpc-Status", st)
		}
		if msg != "" {
			h.Set("Grpc-Message", msg)
		}
		if ct != "" {
			h.Set("Content-Type", ct)
		}
		err, ok := status(h)
		if ok != (st != "") {
			t.Fatalf("status %q: ok %v", st, ok)
		}
		var e *Error
		n, perr := strconv.ParseInt(st, 10, 32)
		switch {
		case st == "":
			if err != nil {
				t.Fatalf("no status: %v", err)
			}
		case perr != nil:
			if !errors.As(err, &e) || e.Code == 0 {
				t.Fatalf("malformed status %q: %v", st, err)
			}
		case n == 0:
			if err != nil {
				t.Fatalf("status 0: %v", err)
			}
		default:
			if !errors.As(err, &e) || e.Code != int(n) || e.Message != decodeGrpcMessage(msg) {
				t.Fatalf("status %q message %q: %#v, want code %d message %q", st, msg, err, n, decodeGrpcMessage(msg))
			}
			_ = e.Error()
		}
		// The answer's headers: a status other than 200 is Unavailable,
		// then a trailers-only status, then the content type, which is
		// application/grpc or it followed by + or ; (grpc-go's rule).
		cerr := checkResponse(&http.Response{StatusCode: code, Status: strconv.Itoa(code), Header: h})
		grpcCT := ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
		switch {
		case code != http.StatusOK:
			if !errors.As(cerr, &e) || e.Code != 14 {
				t.Fatalf("HTTP %d: %v", code, cerr)
			}
		case err != nil:
			if cerr != err && cerr.Error() != err.Error() {
				t.Fatalf("trailers-only %v: %v", err, cerr)
			}
		case grpcCT != (cerr == nil):
			t.Fatalf("content-type %q: %v", ct, cerr)
		}
	})
}
