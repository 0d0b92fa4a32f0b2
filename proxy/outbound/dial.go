package outbound

import (
	"context"
	"net"
	"time"
)

// dialer makes upstream connections and tags their failures as
// connect-failure, the one failure after which any method may be retried.
type dialer struct {
	d net.Dialer
	// resolve maps host:port to the address to dial instead, like curl's
	// --resolve: for local development, where the app must name a service
	// that has no DNS entry.
	resolve map[string]string
}

func newDialer(connectTimeout time.Duration, resolve map[string]string) *dialer {
	return &dialer{d: net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}, resolve: resolve}
}

func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if to, ok := d.resolve[addr]; ok {
		addr = to
	}
	c, err := d.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, &dialError{err}
	}
	return c, nil
}
