// Package controller runs the built `minimesh controller` for end-to-end
// tests, outside the cluster as DESIGN.md's webhook.url describes: on
// loopback, with a serving certificate from a test CA whose PEM is the
// webhook's caBundle.
package controller

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
	"github.com/minimesh/minimesh/internal/pki"
)

// Options are the optional parts of Start.
type Options struct {
	// Config is the injection config file's content (empty: built-in).
	Config string
	// Cert is the serving certificate; nil: a valid one for 127.0.0.1.
	Cert *pki.Pair
	// CA signed Cert; required with Cert.
	CA *pki.CA
	// ShutdownDelay is the controller's --shutdown-delay. Zero: none, so
	// that a test's stop is not 5 s (the flag's default) of serving on.
	ShutdownDelay time.Duration
}

// Controller is a running `minimesh controller`.
type Controller struct {
	Proc *proc.Proc
	CA   *pki.CA
	// URL is the webhook's clientConfig.url.
	URL string
	// AdminURL serves /healthz, /readyz and /metrics.
	AdminURL string
	// XDSAddr is the policy server's address.
	XDSAddr string
}

// Start runs the controller against the cluster of kubeconfig and waits
// until it is ready; it is stopped when t ends.
func Start(t testing.TB, kubeconfig string, opt Options) *Controller {
	t.Helper()
	dir := t.TempDir()
	ca, pair := opt.CA, opt.Cert
	var err error
	if pair == nil {
		if ca, err = pki.NewCA("minimesh-e2e-ca"); err != nil {
			t.Fatal(err)
		}
		if pair, err = ca.IssueValid("127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	certFile, keyFile, err := pair.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := tools.Binary("minimesh")
	if err != nil {
		t.Fatal(err)
	}
	var c *Controller
	// On other ports again if one was taken before the controller bound it.
	if _, err := freeport.Start(3, func(addrs []string) error {
		c = &Controller{
			CA:       ca,
			URL:      "https://" + addrs[0] + "/inject",
			AdminURL: "http://" + addrs[1],
			XDSAddr:  addrs[2],
		}
		args := []string{
			"controller",
			"--webhook-addr", addrs[0],
			"--admin-addr", addrs[1],
			"--xds-addr", addrs[2],
			"--tls-cert-file", certFile, "--tls-key-file", keyFile,
			"--kubeconfig", kubeconfig,
			"--shutdown-delay", opt.ShutdownDelay.String(),
		}
		if opt.Config != "" {
			path := filepath.Join(dir, "config.yaml")
			if err := os.WriteFile(path, []byte(opt.Config), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--config", path)
		}
		c.Proc = proc.StartT(t, "controller", bin, args, proc.Options{})
		return c.Proc.WaitReady(30*time.Second, proc.GetOK(c.AdminURL+"/readyz"))
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

// FreePorts returns n distinct loopback ports that were free a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	addrs, err := freeport.Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	ports := make([]int, n)
	for i, a := range addrs {
		_, p, _ := net.SplitHostPort(a)
		ports[i], _ = strconv.Atoi(p)
	}
	return ports
}
