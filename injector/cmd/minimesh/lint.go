package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/minimesh/minimesh/policy"
	"github.com/spf13/cobra"
)

func newPolicyLintCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "lint PATH...",
		Short: "Check ResiliencePolicy files",
		Long: "lint reads the policy files and directories (their .yaml, .yml and .json files)\n" +
			"the way the sidecar and the controller do, and prints every problem as\n" +
			"file:line:col: field: message. It exits 1 when there is any.",
		Example: "  minimesh policy lint policies/\n  minimesh policy lint auth.yaml orders.yaml",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := lint(args, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
}

// lint loads paths and reports on stderr in the form editors and CI logs
// link to file positions; it returns the exit status.
func lint(paths []string, stdout, stderr io.Writer) int {
	ps, err := policy.Load(paths...)
	if err != nil {
		var list policy.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				fmt.Fprintln(stderr, e)
			}
		} else {
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	services := make([]string, len(ps))
	for i, p := range ps {
		services[i] = p.Spec.Service
	}
	// By service, the default last: the order /debug/config shows.
	slices.SortFunc(services, func(a, b string) int {
		return cmp.Or(cmp.Compare(boolInt(a == policy.DefaultService), boolInt(b == policy.DefaultService)), strings.Compare(a, b))
	})
	if len(services) == 0 {
		fmt.Fprintln(stdout, "0 policies OK")
		return 0
	}
	fmt.Fprintf(stdout, "%d policies OK (%s)\n", len(ps), strings.Join(services, ", "))
	return 0
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
