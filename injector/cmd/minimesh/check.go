package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/minimesh/minimesh/injector/check"
)

const (
	// apiReachable is the name check.Run gives its first check.
	apiReachable = "Kubernetes API is reachable"
	noConfigHint = "pass --kubeconfig FILE or set KUBECONFIG to the file kubectl uses (kubectl config view)"
)

func newCheckCmd() *cobra.Command {
	var kubeconfig, namespace string
	var pre bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that minimesh is installed and working",
		Long: "check verifies a cluster's minimesh: the API server's version, the webhook\n" +
			"configuration and its certificate, the injector, pods that asked for a sidecar\n" +
			"and have none, workloads whose pods the webhook refuses, sidecars that are not\n" +
			"ready or of another image, and policies that do not validate. It prints one\n" +
			"line per check and exits 1 when any fails; a warning (‼: pods not yet\n" +
			"restarted after an upgrade) does not fail it. --pre runs the checks that make\n" +
			"sense before installing.",
		Example: "  minimesh check\n  minimesh check --pre\n  minimesh check --namespace mesh --kubeconfig ~/.kube/staging",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := restConfig(kubeconfig)
			if err != nil {
				// No client is the first check failing, reported as the
				// others are (docs/install.md), not as a usage error.
				printResults(cmd.OutOrStdout(), []check.Result{{Name: apiReachable, Err: err, Hint: noConfigHint}})
				return exitCode(1)
			}
			rc.Timeout = timeout
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			dyn, err := dynamic.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			results := check.Run(cmd.Context(), check.Options{Client: client, Dynamic: dyn, Namespace: namespace, Pre: pre, Timeout: timeout})
			if printResults(cmd.OutOrStdout(), results) > 0 {
				return exitCode(1)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "minimesh", "the namespace minimesh is installed in")
	cmd.Flags().BoolVar(&pre, "pre", false, "only the checks that make sense before installing")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "timeout of each request to the cluster and the injector")
	return cmd
}

// printResults writes a line per check, and a hint under each failure and
// warning, and returns the number of failures (warnings are not).
func printResults(w io.Writer, results []check.Result) int {
	failed, warned := 0, 0
	for _, r := range results {
		if r.Err == nil {
			fmt.Fprintf(w, "✔ %s\n", r.Name)
			continue
		}
		mark := "✖"
		if r.Warn {
			mark = "‼"
			warned++
		} else {
			failed++
		}
		msg := strings.ReplaceAll(r.Err.Error(), "\n", "\n      ")
		fmt.Fprintf(w, "%s %s: %s\n", mark, r.Name, msg)
		if r.Hint != "" {
			fmt.Fprintf(w, "    hint: %s\n", r.Hint)
		}
	}
	warnings := ""
	if warned > 0 {
		warnings = fmt.Sprintf(", %d with a warning", warned)
	}
	if failed == 0 {
		fmt.Fprintf(w, "\nStatus check results are ✔ (%d checks%s)\n", len(results), warnings)
	} else {
		fmt.Fprintf(w, "\nStatus check results are ✖: %d of %d checks failed%s\n", failed, len(results), warnings)
	}
	return failed
}
