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
			"ReplicaSet, ReplicationController, Job and CronJob of a manifest stream (also\n" +
			"inside a List), the same way the webhook does, and marks them minimesh.io/inject:\n" +
			"enabled. Workloads annotated disabled (their pod template, or their own\n" +
			"metadata: then with a warning that the webhook would inject their pods), hostNetwork pods,\n" +
			"pods for nodes other than Linux and injected ones are left alone, and so is every\n" +
			"other document, byte for byte; an injected document is rewritten and keeps only\n" +
			"the comments above it. The stream goes to stdout, a line per object to stderr\n" +
			"(injected, or skipped and why). It is read and written one document at a time\n" +
			"(at most 4 MiB each); up to 8 MiB of output is held until the input ends, so\n" +
			"that nothing is written if any document is refused. Past that the output\n" +
			"streams, and a refusal ends it with a line that makes it invalid YAML. --config\n" +
			"takes the injector's config file, so that the sidecar is the one the cluster\n" +
			"would add.",
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
			name, in, err := openManifest(files[0], cmd.InOrStdin())
			if err != nil {
				return err
			}
			defer in.Close()
			stderr := cmd.ErrOrStderr()
			err = manifest.Stream(in, cmd.OutOrStdout(), &cfg, func(e manifest.Event) {
				fmt.Fprintln(stderr, e)
				for _, w := range e.Warnings {
					fmt.Fprintf(stderr, "Warning: %s\n", w)
				}
			})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file, or - for stdin")
	cmd.Flags().StringVar(&config, "config", "", "injection config YAML, the one the cluster's injector uses (default: built-in)")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

// openManifest opens the file, or stdin for "-", and the name that errors
// call it by.
func openManifest(file string, stdin io.Reader) (string, io.ReadCloser, error) {
	if file == "-" {
		return "stdin", io.NopCloser(stdin), nil
	}
	f, err := os.Open(file)
	if err != nil {
		return file, nil, fmt.Errorf("read manifest: %w", err)
	}
	return file, f, nil
}
