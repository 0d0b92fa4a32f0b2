package main

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestControllerFlagsDocumented: every flag of minimesh controller has a
// row in docs/injector.md's table (--xds-addr, --xds-max-connections,
// --namespace and --policy-dir had none).
func TestControllerFlagsDocumented(t *testing.T) {
	b, err := os.ReadFile("../../../docs/injector.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "## `minimesh controller`\n")
	if !ok {
		t.Fatal("docs/injector.md has no section ## `minimesh controller`")
	}
	section, _, _ = strings.Cut(strings.TrimLeft(section, "\n"), "\n\n") // the table
	if !strings.HasPrefix(section, "| flag |") {
		t.Fatalf("no flag table at the start of the section:\n%s", section)
	}
	root := newRootCmd(io.Discard, io.Discard)
	cmd, _, err := root.Find([]string{"controller"})
	if err != nil {
		t.Fatal(err)
	}
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		if !strings.Contains(section, "`--"+f.Name+"`") {
			t.Errorf("--%s is not in docs/injector.md's table of minimesh controller's flags", f.Name)
		}
	})
}
