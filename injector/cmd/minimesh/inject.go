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
	var files []string
	var config string
	cmd := &cobra.Command{
		Use:   "inject -f FILE|-",
		Short: "Add the sidecar to the workloads of a manifest stream",
		Long: "inject adds the minimesh sidecar to every Pod, Deployment, StatefulSet, DaemonSet,\n" +
			"ReplicaSet, Job and CronJob of a manifest stream (also inside a List), the same\n" +
			"way the webhook does, and marks them minimesh.io/inject: enabled. Workloads\n" +
			"annotated disabled, hostNetwork pods and injected ones are left alone, and so is\n" +
			"every other document, byte for byte; an injected document is rewritten and keeps\n" +
			"only the comments above it. The stream goes to stdout, a line per workload to\n" +
			"stderr; nothing is written to stdout if any document is refused. --config takes\n" +
			"the injector's config file, so that the sidecar is the one the cluster would add.",
		Example: "  minimesh inject -f deploy.yaml | kubectl apply -f -\n" +
			"  kustomize build overlays/prod | minimesh inject -f - --config injector.yaml > injected.yaml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) != 1 {
				return fmt.Errorf("-f: give one file, or - for stdin (cat a.yaml b.yaml | minimesh inject -f - injects several)")
			}
			cfg := injector.DefaultConfig()
			if config != "" {
				var err error
				if cfg, err = injector.LoadConfig(config); err != nil {
					return err
				}
			}
			name, in, err := readManifest(files[0], cmd.InOrStdin())
			if err != nil {
				return err
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
			if _, err := cmd.OutOrStdout().Write(out); err != nil {
				return fmt.Errorf("write the injected stream: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file, or - for stdin")
	cmd.Flags().StringVar(&config, "config", "", "injection config YAML, the one the cluster's injector uses (default: built-in)")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

// readManifest reads the file, or stdin for "-", and the name that errors
// call it by.
func readManifest(file string, stdin io.Reader) (string, []byte, error) {
	if file == "-" {
		in, err := io.ReadAll(stdin)
		if err != nil {
			return "stdin", nil, fmt.Errorf("read stdin: %w", err)
		}
		return "stdin", in, nil
	}
	in, err := os.ReadFile(file)
	if err != nil {
		return file, nil, fmt.Errorf("read manifest: %w", err)
	}
	return file, in, nil
}
