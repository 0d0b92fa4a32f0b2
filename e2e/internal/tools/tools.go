// Package tools locates the programs that the end-to-end tests and the
// benchmark harness run: minimesh's own binaries (built by `make build`) and
// the third-party tools that scripts/tools.sh installs.
//
// The Makefile exports MINIMESH_TOOLS_DIR and MINIMESH_BIN_DIR; without them
// (a plain `go test` in an editor) the same defaults as scripts/tools.sh and
// the Makefile apply.
package tools

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Dir is the tools cache: $MINIMESH_TOOLS_DIR, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/minimesh/tools.
func Dir() string {
	if d := os.Getenv("MINIMESH_TOOLS_DIR"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "minimesh", "tools")
}

// sbinDirs hold Debian's daemons (nginx, haproxy), which a non-login PATH
// may lack.
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// EnvName is the variable that overrides where tool name is found:
// MINIMESH_TOOL_ plus the upper-cased name with '-' as '_'
// (MINIMESH_TOOL_KUBE_APISERVER).
func EnvName(name string) string {
	return "MINIMESH_TOOL_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Find returns the path of tool name: the file named by EnvName(name), else
// Dir()/bin/name (the Go tools that scripts/tools.sh builds), else name on
// PATH, else in the sbin directories. The error says how to install it.
func Find(name string) (string, error) {
	if p := os.Getenv(EnvName(name)); p != "" {
		if isExec(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", EnvName(name), p)
	}
	if p := filepath.Join(Dir(), "bin", name); isExec(p) {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		if p := filepath.Join(d, name); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("tool %s not found in %s, $PATH or %s: run `make tools` (scripts/tools.sh)",
		name, filepath.Join(Dir(), "bin"), strings.Join(sbinDirs, ", "))
}

// BinDir is where `make build` writes minimesh's binaries:
// $MINIMESH_BIN_DIR, else bin/ at the root of the module that holds the
// working directory.
func BinDir() (string, error) {
	if d := os.Getenv("MINIMESH_BIN_DIR"); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

// Binary returns the path of one of minimesh's binaries ("minimesh-proxy",
// "minimesh") in BinDir.
func Binary(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if !isExec(p) {
		return "", fmt.Errorf("%s not found: run `make build`", p)
	}
	return p, nil
}

// RepoRoot is the nearest directory at or above the working directory that
// holds a go.mod declaring the minimesh module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && isMinimeshMod(string(b)) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("minimesh's go.mod not found above the working directory")
		}
		dir = parent
	}
}

func isMinimeshMod(gomod string) bool {
	for _, line := range strings.Split(gomod, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == "github.com/minimesh/minimesh"
		}
	}
	return false
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
