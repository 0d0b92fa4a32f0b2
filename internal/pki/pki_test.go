package pki

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.PEM) {
		t.Fatal("CA PEM does not parse")
	}
	good, err := ca.IssueValid("127.0.0.1", "minimesh.minimesh.svc")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	expired, err := ca.Issue([]string{"127.0.0.1"}, now.Add(-48*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	verify := func(p *Pair, host string) error {
		pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		_, err = pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host})
		return err
	}
	for _, h := range []string{"127.0.0.1", "minimesh.minimesh.svc"} {
		if err := verify(good, h); err != nil {
			t.Errorf("valid cert for %s: %v", h, err)
		}
	}
	if err := verify(good, "other.svc"); err == nil {
		t.Error("cert verified for a host it does not name")
	}
	if err := verify(expired, "127.0.0.1"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired cert: %v, want an expiry error", err)
	}
	cf, kf, err := good.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(cf, kf); err != nil {
		t.Fatal(err)
	}
}
