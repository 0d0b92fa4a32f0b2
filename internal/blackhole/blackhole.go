// Package blackhole is a TCP proxy for tests whose open connections can
// go silent without closing: a peer whose node was lost, as the other
// side sees it (no FIN, no reset, no answer). Connections made after that
// go through, as to a peer that came back elsewhere.
package blackhole

import (
	"net"
	"sync"
	"testing"
)

// Proxy forwards the connections made to it to one address.
type Proxy struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	dead  chan struct{} // closed by Hole, for the connections open then
	conns []net.Conn
	n     int
}

// New starts a proxy to the address to, stopped with t.
func New(t testing.TB, to string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, to: to, dead: make(chan struct{})}
	go p.run()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

// Addr is the proxy's address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted is the number of connections made to the proxy so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// Hole silences every connection open now: what is sent on them either
// way is dropped, and both sockets stay open.
func (p *Proxy) Hole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.dead)
	p.dead = make(chan struct{})
}

func (p *Proxy) run() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.n++
		dead := p.dead
		p.mu.Unlock()
		go pipe(s, c, dead)
		go pipe(c, s, dead)
	}
}

// pipe copies src to dst until dead is closed; then it reads on and
// drops what it reads, so that the sender's writes never block.
func pipe(dst, src net.Conn, dead chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-dead:
			n = 0 // into the hole
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			select {
			case <-dead:
			default:
				dst.Close()
			}
			return
		}
	}
}
