package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/policy/linkerd"
)

func newPolicyExportCmd() *cobra.Command {
	var to, namespace string
	cmd := &cobra.Command{
		Use:   "export --to linkerd|envoy PATH...",
		Short: "Print ResiliencePolicy files as Linkerd or Envoy configuration",
		Long: "export translates policies for a move to a full mesh.\n\n" +
			"--to linkerd prints, per policy, an HTTPRoute with Linkerd's timeout and retry\n" +
			"annotations (two for a policy that retries: one retries only the requests\n" +
			"minimesh would, the other takes the rest) and the destination Service's\n" +
			"failure-accrual annotations (apply it\n" +
			"with kubectl apply --server-side so that it merges into the existing Service).\n" +
			"--to envoy prints an Envoy v3 Cluster per destination and one RouteConfiguration.\n" +
			"What the target cannot express is printed as a comment: nothing is dropped\n" +
			"silently. docs/migrating-to-linkerd.md has the whole table.",
		Example: "  minimesh policy export --to linkerd policies/ | kubectl apply --server-side -f -\n" +
			"  minimesh policy export --to envoy --namespace shop policies/geo.yaml",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pols, err := policy.Load(args...)
			if err != nil {
				var list policy.ErrorList
				if errors.As(err, &list) {
					for _, e := range list {
						fmt.Fprintln(cmd.ErrOrStderr(), e)
					}
					return exitCode(1)
				}
				return err
			}
			var out []byte
			switch to {
			case "linkerd":
				out, err = linkerd.Export(pols, namespace)
			case "envoy":
				out, err = envoy.Export(pols, namespace)
			default:
				return fmt.Errorf("--to %q: want linkerd or envoy", to)
			}
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "linkerd or envoy")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of policies that name none (short service names resolve in it)")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}
