package main

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/policy/linkerd"
	"github.com/minimesh/minimesh/xds"
)

// defaultClusterNamespace is the controller's --namespace when neither it
// nor $POD_NAMESPACE is set (controller.go): its policies apply
// cluster-wide.
const defaultClusterNamespace = "minimesh"

func newPolicyExportCmd() *cobra.Command {
	var to, namespace, clusterNS string
	var eds bool
	cmd := &cobra.Command{
		Use:   "export --to linkerd|envoy PATH...",
		Short: "Print ResiliencePolicy files as Linkerd or Envoy configuration",
		Long: "export translates policies for a move to a full mesh.\n\n" +
			"--to linkerd prints, per policy, an HTTPRoute with Linkerd's timeout and retry\n" +
			"annotations (two for a policy that retries: one retries only the requests\n" +
			"minimesh would, the other takes the rest) and the destination Service's\n" +
			"failure-accrual annotations (apply it\n" +
			"with kubectl apply --server-side so that it merges into the existing Service).\n" +
			"--to envoy prints an Envoy v3 Cluster per destination and one RouteConfiguration:\n" +
			"what the control plane serves the proxies of --namespace (or of the one namespace\n" +
			"the policies name), so another namespace's policies are left out, with a warning.\n" +
			"With --eds a Service's cluster takes its pods from the minimesh controller (EDS\n" +
			"over ADS); without, it is STRICT_DNS on the Service's name.\n" +
			"What the target cannot express is printed as a comment: nothing is dropped\n" +
			"silently. docs/migrating-to-linkerd.md has the whole table.\n\n" +
			"A cluster-wide policy (one without metadata.namespace, or of --cluster-namespace)\n" +
			"whose service is a short name (reviews) governs reviews in every namespace, as each\n" +
			"sidecar reads it in its own: it is exported only for --namespace, and without\n" +
			"--namespace not at all (a warning names it).",
		Example: "  minimesh policy export --to linkerd policies/ | kubectl apply --server-side -f -\n" +
			"  minimesh policy export --to envoy --namespace shop policies/geo.yaml\n" +
			"  minimesh policy export --to envoy --eds --namespace shop policies/",
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
			if to != "linkerd" && to != "envoy" {
				return fmt.Errorf("--to %q: want linkerd or envoy", to)
			}
			if eds && to != "envoy" {
				return errors.New("--eds is for --to envoy")
			}
			pols, head := scopeClusterWide(pols, namespace, clusterNS)
			var out []byte
			switch to {
			case "linkerd":
				ns := namespace
				if ns == "" {
					ns = "default"
				}
				out, err = linkerd.Export(pols, ns, clusterNS)
			case "envoy":
				var ns string
				var more []headComment
				ns, pols, more, err = servedTo(pols, namespace, clusterNS)
				if err != nil {
					return fmt.Errorf("export --to envoy: %w", err)
				}
				head = append(head, more...)
				out, err = envoy.Export(pols, ns, envoy.Options{EDS: eds})
			}
			for _, h := range head {
				if h.skipped {
					fmt.Fprintln(cmd.ErrOrStderr(), "warning: "+h.text)
				}
			}
			if err != nil {
				return fmt.Errorf("export --to %s: %w", to, err)
			}
			var b bytes.Buffer
			for _, h := range head {
				if h.skipped {
					b.WriteString("# not carried over: ")
				} else {
					b.WriteString("# ")
				}
				b.WriteString(h.text + "\n")
			}
			b.Write(out)
			_, err = cmd.OutOrStdout().Write(b.Bytes())
			return err
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "linkerd or envoy")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "the namespace whose pods the export is for (--to envoy: whose proxies read the output, another namespace's policies being left out; without it, the one namespace the policies name): a cluster-wide policy (one naming no namespace, or --cluster-namespace's) with a short service name is exported for it; without --namespace such a policy is not exported")
	cmd.Flags().StringVar(&clusterNS, "cluster-namespace", defaultClusterNamespace, "the controller's namespace (its --namespace), whose policies apply cluster-wide")
	cmd.Flags().BoolVar(&eds, "eds", false, "--to envoy: clusters of Services take their pods over EDS (ADS) from the minimesh controller, instead of STRICT_DNS on the Service's name")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// headComment is a line the export prints above the target's own: what
// it did with a cluster-wide policy (skipped: not exported, also a
// warning on stderr).
type headComment struct {
	text    string
	skipped bool
}

// scopeClusterWide settles the cluster-wide policies whose service is a
// short name before either export reads them. The sidecar reads a short
// name in its own namespace, whatever the policy's (policy.NewTable;
// docs/policy.md, "Matching"), and the controller serves a cluster-wide
// policy to the sidecars of every namespace, those created later included
// (docs/controlplane.md): "reviews" there means reviews.<ns> for every
// <ns>, a set no export written now can name. The exports, which resolve
// a short name in the policy's own namespace, would have attached its
// routes (Linkerd) or domains (Envoy) to reviews.<cluster namespace>, a
// Service its sidecars never call. So such a policy is exported for
// namespace (--namespace), as the control plane translates it for that
// namespace's sidecars, with a comment; without --namespace it is left
// out, with a comment and a warning naming it and its host.
//
// Cluster-wide is the controller's reading (docs/controlplane.md): a
// policy of its namespace (clusterNS), or, from files, one that names no
// namespace, which without --namespace says nothing of where it applies.
func scopeClusterWide(pols []*policy.ResiliencePolicy, namespace, clusterNS string) ([]*policy.ResiliencePolicy, []headComment) {
	var out []*policy.ResiliencePolicy
	var head []headComment
	for _, p := range pols {
		host, short := shortClusterWide(p, clusterNS)
		if !short {
			out = append(out, p)
			continue
		}
		if namespace == "" {
			head = append(head, headComment{skipped: true, text: fmt.Sprintf(
				"cluster-wide policy %s: service %q is a short name, which each sidecar reads as %s.<its own namespace>, in every namespace: not exported, as no export can name those Services; write %s.NAMESPACE, or export it for one namespace with --namespace",
				describe(p), p.Spec.Service, host, host)})
			continue
		}
		c := *p
		c.Metadata.Namespace = namespace
		out = append(out, &c)
		head = append(head, headComment{text: fmt.Sprintf(
			"cluster-wide policy %s: service %q is a short name, which each sidecar reads in its own namespace: exported for namespace %s only (--namespace); export again for each other namespace",
			describe(p), p.Spec.Service, namespace)})
	}
	return out, head
}

// servedTo picks from pols what the control plane serves the proxies of
// one namespace, for the Envoy export, whose output is one namespace's
// (envoy.Export): that namespace's own policies and the cluster-wide ones,
// a namespace's own policy for a service replacing the cluster-wide one
// (xds.Merge, the control plane's own rule), never another namespace's
// (docs/controlplane.md). Exported as they were, another namespace's
// policies gave these proxies its bare Service names: web's `reviews`
// routed shop's `reviews` to reviews.web. The namespace is --namespace,
// or else the one namespace the policies are written in (a comment says
// so), "default" when they name none; policies of several namespaces
// without --namespace are an error, as the output can be only one's.
// Each policy left out gets a comment (and a warning, as it is not
// exported at all).
func servedTo(pols []*policy.ResiliencePolicy, namespace, clusterNS string) (ns string, served []*policy.ResiliencePolicy, head []headComment, err error) {
	clusterWide := func(p *policy.ResiliencePolicy) bool {
		return p.Metadata.Namespace == "" || p.Metadata.Namespace == clusterNS
	}
	ns = namespace
	if ns == "" {
		var named []string
		for _, p := range pols {
			if !clusterWide(p) && !slices.Contains(named, p.Metadata.Namespace) {
				named = append(named, p.Metadata.Namespace)
			}
		}
		switch len(named) {
		case 0:
			ns = "default"
		case 1:
			ns = named[0]
			head = append(head, headComment{text: fmt.Sprintf("the resources the proxies of namespace %s are served, the one namespace the policies name (--namespace chooses another)", ns)})
		default:
			return "", nil, nil, fmt.Errorf("the policies are of namespaces %s, and the output is what the proxies of one namespace are served: choose it with --namespace", strings.Join(named, ", "))
		}
	}
	var global, local []*policy.ResiliencePolicy
	for _, p := range pols {
		switch {
		case clusterWide(p):
			global = append(global, p)
		case p.Metadata.Namespace == ns:
			local = append(local, p)
		default:
			head = append(head, headComment{skipped: true, text: fmt.Sprintf(
				"policy %s: the control plane serves it to the proxies of namespace %s only, and this output is namespace %s's: not exported; export it with --namespace %s",
				describe(p), p.Metadata.Namespace, ns, p.Metadata.Namespace)})
		}
	}
	// policy.Load refuses two policies for one service today, so Merge
	// replaces nothing here; it is the control plane's rule all the same.
	return ns, xds.Merge(global, local), head, nil
}

// shortClusterWide reports whether p applies cluster-wide and names its
// service by a short name (a Service's shape, one label), and that name.
func shortClusterWide(p *policy.ResiliencePolicy, clusterNS string) (host string, ok bool) {
	if p.Spec.Service == policy.DefaultService {
		return "", false
	}
	if ns := p.Metadata.Namespace; ns != "" && ns != clusterNS {
		return "", false
	}
	host, _, _ = strings.Cut(p.Spec.Service, ":")
	if strings.Contains(host, ".") {
		return "", false // qualified or external: the same host from every namespace
	}
	if _, isSvc := policy.ServiceFQDN(host, "default"); !isSvc {
		return "", false
	}
	return host, true
}

// describe names a policy in a message: its name, namespace and file.
func describe(p *policy.ResiliencePolicy) string {
	s := p.Metadata.Name
	if s == "" {
		s = "(unnamed)"
	}
	var at []string
	if p.Metadata.Namespace != "" {
		at = append(at, "namespace "+p.Metadata.Namespace)
	}
	if p.Source != "" {
		at = append(at, p.Source)
	}
	if len(at) > 0 {
		s += " (" + strings.Join(at, ", ") + ")"
	}
	return s
}
