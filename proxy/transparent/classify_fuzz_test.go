package transparent

import "testing"

// FuzzClassify checks that detection does not depend on how the bytes
// were cut into reads: once Classify decides, more bytes never change the
// protocol (nor, for TLS, the SNI), and it never panics.
func FuzzClassify(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 3)
	f.Add([]byte(h2Preface+"\x00\x00"), 10)
	f.Add(clientHello(f, "a.example"), 40)
	f.Add(splitHello(clientHello(f, "b.example"), 9), 70)
	f.Add([]byte("SET k v\r\n"), 2)
	f.Add([]byte{0x16, 3, 1, 0, 5, 1}, 4)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		if cut < 0 || cut > len(b) {
			return
		}
		p, more := Classify(b[:cut])
		if more {
			_ = Final(b[:cut])
			return
		}
		q, _ := Classify(b)
		if p != q {
			t.Fatalf("decided %s on %q, %s with more bytes %q", p, b[:cut], q, b)
		}
		if p == TLS {
			s1, _ := clientHelloSNI(b[:cut])
			s2, _ := clientHelloSNI(b)
			if s1 != s2 {
				t.Fatalf("SNI %q, then %q with more bytes", s1, s2)
			}
		}
	})
}
