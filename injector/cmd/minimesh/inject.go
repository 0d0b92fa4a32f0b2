package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/injector/manifest"
)

func newInjectCmd() *cobra.Command {
	var file, config string
	cmd := &cobra.Command{
		Use:   "inject -f FILE|-",
		Short: "Add the sidecar to the workloads of a manifest stream",
		Long: "inject adds the minimesh sidecar to every Pod, Deployment, StatefulSet, DaemonSet,\n" +
			"ReplicaSet, Job and CronJob of a manifest stream (also inside a List), the same\n" +
			"way the webhook does, and marks them minimesh.io/inject: enabled. Workloads\n" +
			"annotated disabled, hostNetwork pods and injected ones are left alone, and so is\n" +
			"every other document, byte for byte. The stream goes to stdout, a line per\n" +
			"workload to stderr; nothing is written to stdout if any document is refused.",
		Example: "  minimesh inject -f deploy.yaml | kubectl apply -f -\n" +
			"  kustomize build overlays/prod | minimesh inject -f - > injected.yaml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := injector.DefaultConfig()
			if config != "" {
				var err error
				if cfg, err = injector.LoadConfig(config); err != nil {
					return err
				}
			}
			var in []byte
			var err error
			name := file
			if file == "-" {
				name = "stdin"
				in, err = io.ReadAll(cmd.InOrStdin())
			} else {
				in, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			out, events, err := manifest.Inject(in, &cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			stderr := cmd.ErrOrStderr()
			for _, e := range events {
				fmt.Fprintln(stderr, e)
				for _, w := range e.Warnings {
					fmt.Fprintf(stderr, "Warning: %s\n", w)
				}
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "manifest file, or - for stdin")
	cmd.Flags().StringVar(&config, "config", "", "injection config YAML, the one the cluster's injector uses (default: built-in)")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}
