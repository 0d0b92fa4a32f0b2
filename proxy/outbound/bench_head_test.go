package outbound

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkReadResponseHead: a response head as fortio's echo server
// answers the bench's requests (docs/benchmarks.md), read as lines.
func BenchmarkReadResponseHead(b *testing.B) {
	const head = "HTTP/1.1 200 OK\r\nContent-Length: 256\r\nContent-Type: application/octet-stream\r\nDate: Fri, 04 Dec 2026 15:16:29 GMT\r\n\r\n"
	req, _ := http.NewRequest(http.MethodGet, "http://up/", nil)
	var sc respScratch
	sr := strings.NewReader(head)
	br := bufio.NewReaderSize(sr, 4096)
	for b.Loop() {
		sr.Reset(head)
		br.Reset(sr)
		br.Peek(1)
		if fr, lines := readResponseHead(br, req, true, &sc); fr == nil || len(lines) == 0 {
			b.Fatal("not read as lines")
		}
	}
}
