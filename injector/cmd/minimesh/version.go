package main

import (
	"fmt"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/spf13/cobra"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of minimesh",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "minimesh %s\n", wellknown.Version)
			return err
		},
	}
}
