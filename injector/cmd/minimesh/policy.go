package main

import "github.com/spf13/cobra"

// newPolicyCmd groups the commands that work on ResiliencePolicy files.
func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check and convert ResiliencePolicy files",
	}
	cmd.AddCommand(newPolicyLintCmd(), newPolicyExportCmd())
	return cmd
}
