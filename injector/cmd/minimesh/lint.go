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
	var perNamespace bool
	cmd := &cobra.Command{
		Use:   "lint PATH...",
		Short: "Check ResiliencePolicy files",
		Long: "lint reads the policy files and directories (their .yaml, .yml and .json files)\n" +
			"the way the sidecar does (its --policy-dir, a minimesh-policies ConfigMap: one\n" +
			"policy per service, whatever its namespace), or with --per-namespace the way\n" +
			"`minimesh controller --policy-dir` does, and prints every problem as\n" +
			"file:line:col: field: message. It exits 1 when there is any, or when a directory\n" +
			"holds no policy file. The entries of a directory that it does not read (a file\n" +
			"without its extension, a subdirectory) are listed, as the sidecar's log lists them.",
		Example: "  minimesh policy lint policies/\n  minimesh policy lint auth.yaml orders.yaml\n  minimesh policy lint --per-namespace controller-policies/",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			scope := policy.OneSidecar
			if perNamespace {
				scope = policy.PerNamespace
			}
			if code := lint(args, scope, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&perNamespace, "per-namespace", false,
		"read the files as minimesh controller --policy-dir does: a service may have a policy in each namespace (metadata.namespace) and one cluster-wide (none)")
	return cmd
}

// lint loads paths as scope reads them and reports on stderr in the form
// editors and CI logs link to file positions; it returns the exit status.
//
// The scope is the user's to say, never guessed from the files: a set
// with `geo` cluster-wide and `geo` in shop is the control plane's
// override, and the same set in a minimesh-policies ConfigMap is refused
// whole by every sidecar that mounts it. Read as a sidecar reads them
// (the default, as `minimesh check` reads the ConfigMaps), a set that
// only --per-namespace accepts ends with a line that says so, so that
// the refusal names the reading that made it.
// lintSidecarMode ends a refusal that only the sidecar's reading makes.
const lintSidecarMode = "lint: read as one sidecar reads them (its --policy-dir, a minimesh-policies ConfigMap: one policy per service, whatever its metadata.namespace); " +
	"`minimesh controller --policy-dir` takes them (one per service in each namespace and one cluster-wide): lint its files with --per-namespace"

func lint(paths []string, scope policy.Scope, stdout, stderr io.Writer) int {
	ps, rep, err := scope.LoadReport(paths...)
	// A policy in a file the directory holds without its extension (a
	// ConfigMap key `geo`) is never loaded: say so before any verdict.
	for _, s := range rep.Skipped {
		fmt.Fprintln(stderr, s)
	}
	if err != nil {
		var list policy.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				fmt.Fprintln(stderr, e)
			}
			if scope == policy.OneSidecar {
				var other policy.ErrorList
				if _, err := policy.PerNamespace.Load(paths...); err == nil || errors.As(err, &other) && len(other) < len(list) {
					fmt.Fprintln(stderr, lintSidecarMode)
				}
			}
		} else {
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	if len(rep.Bare) > 0 {
		// "0 policies OK" here passed a directory of files named without
		// their extension, or the wrong directory, which every sidecar
		// given it serves without a policy.
		for _, dir := range rep.Bare {
			fmt.Fprintf(stderr, "lint: %s holds no policy file (.yaml, .yml or .json): a sidecar given it loads no policy\n", dir)
		}
		return 1
	}
	if len(ps) == 0 {
		fmt.Fprintln(stdout, "0 policies OK")
		return 0
	}
	if scope == policy.PerNamespace {
		fmt.Fprintf(stdout, "%d policies OK (%s)\n", len(ps), byNamespace(ps))
		return 0
	}
	fmt.Fprintf(stdout, "%d policies OK (%s)\n", len(ps), strings.Join(services(ps), ", "))
	return 0
}

// services are the policies' services in the order /debug/config shows
// them: by name, the default last.
func services(ps []*policy.ResiliencePolicy) []string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Spec.Service
	}
	slices.SortFunc(s, func(a, b string) int {
		return cmp.Or(cmp.Compare(boolInt(a == policy.DefaultService), boolInt(b == policy.DefaultService)), strings.Compare(a, b))
	})
	return s
}

// byNamespace lists the services of a per-namespace set by where they
// apply, the cluster-wide ones first: "cluster-wide: geo, *; shop: geo".
func byNamespace(ps []*policy.ResiliencePolicy) string {
	groups := map[string][]*policy.ResiliencePolicy{}
	for _, p := range ps {
		groups[p.Metadata.Namespace] = append(groups[p.Metadata.Namespace], p)
	}
	names := make([]string, 0, len(groups))
	for ns := range groups {
		names = append(names, ns)
	}
	slices.Sort(names) // "" (cluster-wide) first
	parts := make([]string, len(names))
	for i, ns := range names {
		label := ns
		if ns == "" {
			label = "cluster-wide"
		}
		parts[i] = label + ": " + strings.Join(services(groups[ns]), ", ")
	}
	return strings.Join(parts, "; ")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
