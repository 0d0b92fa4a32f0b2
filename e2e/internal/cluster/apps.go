package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/minimesh/minimesh/e2e/internal/image"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// TestappImage is the image of e2e/cluster/testapp, the application of the
// cluster tests and of the cluster demo: a backend with a failure switch,
// and an app driven over HTTP that calls through its sidecar.
const TestappImage = "minimesh.local/testapp:e2e"

// ImportImages builds the test app into dir and imports it, with minimesh's
// images from the binaries of `make build` (the sidecar's and iptables
// interception's init image), into the node.
func (c *Cluster) ImportImages(ctx context.Context, dir string) error {
	mm, err := MinimeshImageOf()
	if err != nil {
		return err
	}
	mmInit, err := MinimeshInitImageOf()
	if err != nil {
		return err
	}
	app := filepath.Join(dir, "testapp")
	if err := BuildStatic(ctx, "./e2e/cluster/testapp", app); err != nil {
		return err
	}
	testapp := image.Image{Ref: TestappImage, User: "65532:65532", Entrypoint: []string{"/testapp"},
		Files: []image.File{{Name: "/testapp", Src: app}}}
	return c.Import(ctx, mm, mmInit, testapp)
}

// Helm runs helm against the cluster, with its configuration, cache and
// data under Home (never the user's own).
type Helm struct {
	Path, Kubeconfig, Home string
}

// Run runs helm with args and returns its combined output.
func (h Helm) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.Path, append(args, "--kubeconfig", h.Kubeconfig)...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+filepath.Join(h.Home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(h.Home, "cache"), "HELM_DATA_HOME="+filepath.Join(h.Home, "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Chart is the path of the repository's chart.
func Chart() (string, error) {
	root, err := tools.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "charts", "minimesh"), nil
}

// InstallChart installs the chart as release minimesh in namespace
// minimesh, its injector running in the cluster from MinimeshImage (no
// webhook.url), one replica, and waits until it is ready; sets are more
// --set values.
func (h Helm) InstallChart(ctx context.Context, sets ...string) (string, error) {
	chart, err := Chart()
	if err != nil {
		return "", err
	}
	repo, tag, _ := strings.Cut(MinimeshImage, ":")
	args := []string{"install", "minimesh", chart, "--namespace", "minimesh", "--create-namespace",
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag, "--set", "image.pullPolicy=Never",
		"--set", "injector.replicas=1", "--wait", "--timeout", "3m"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := h.Run(ctx, args...)
	if err != nil {
		return out, fmt.Errorf("helm install: %w", err)
	}
	return out, nil
}
