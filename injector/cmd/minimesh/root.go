package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// newRootCmd builds the command tree. Each command group lives in its own
// file with a newXxxCmd constructor; add it here.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "minimesh",
		Short: "minimesh is a mini service mesh for Kubernetes",
		Long: "minimesh injects a resilience sidecar into pods and serves it ResiliencePolicy objects.\n" +
			"This binary is both the injector's controller and the command-line tool.",
		// Errors are printed once, by execute; usage only on request.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newVersionCmd(),
		newPolicyCmd(),
		newControllerCmd(),
		newInjectCmd(),
		newCheckCmd(),
	)
	return root
}

// exitCode is returned by commands that have already printed what went
// wrong and only need the process to exit with code.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// execute runs the command line and returns the process exit status, so
// that tests run the real command tree without exiting.
func execute(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	default:
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
}
