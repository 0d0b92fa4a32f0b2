// Package check is `minimesh check`: the health of an installation, one
// verdict per check with a hint, like `linkerd check`. Each check is a
// function of the cluster's state, read through a kubernetes.Interface, so
// the whole list runs against a fake clientset in unit tests and against
// the real API server in e2e.
package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/internal/textcut"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
)

// Names the chart gives the objects the checks read.
const (
	WebhookLabel   = "app.kubernetes.io/name=minimesh"
	Deployment     = "minimesh-injector"
	TLSSecret      = "minimesh-injector-tls"
	PolicyConfig   = "minimesh-policies"
	minMinor       = 29 // native sidecars on by default
	expiryWarning  = 7 * 24 * time.Hour
	maxListedPods  = 10
	defaultTimeout = 10 * time.Second
)

// Result is one check's verdict: Err nil is ✔. A warning (Warn) is a
// state that is expected for a while, such as the pods of an upgrade not
// yet restarted: it is printed, but it does not fail the command, as
// `linkerd check`'s warnings do not.
type Result struct {
	Name string
	Err  error
	Hint string
	Warn bool
}

// Options say what to check.
type Options struct {
	Client kubernetes.Interface
	// Dynamic reads ResiliencePolicy objects; nil skips that check.
	Dynamic   dynamic.Interface
	Namespace string // the release's
	// Pre runs the checks that make sense before installing.
	Pre     bool
	Timeout time.Duration // for network checks
	Now     func() time.Time
}

// Run runs the checks in order. When one that the others need fails (the
// API is unreachable, there is no webhook configuration), those are not
// run: their failures would only repeat the first.
func Run(ctx context.Context, o Options) []Result {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var rs []Result
	add := func(name, hint string, err error) bool {
		rs = append(rs, Result{Name: name, Err: err, Hint: hint})
		return err == nil
	}
	warn := func(name, hint string, err error) {
		rs = append(rs, Result{Name: name, Err: err, Hint: hint, Warn: true})
	}
	minor, err := serverMinor(o.Client)
	if !add("Kubernetes API is reachable", "check the kubeconfig and the cluster (kubectl version)", err) {
		return rs
	}
	add("Kubernetes version supports native sidecars", "minimesh needs Kubernetes 1.29 or newer", versionOK(minor))
	if o.Pre {
		add("no minimesh webhook configuration yet", "minimesh is installed already: use helm upgrade", noWebhookYet(ctx, o.Client))
		add("can create cluster-scoped resources", "the chart creates a webhook configuration and ClusterRoles: install as a cluster admin", canCreate(ctx, o.Client))
		return rs
	}

	wh, hooks, err := webhook(ctx, o.Client)
	if !add("webhook configuration exists", "install the chart: helm install minimesh charts/minimesh -n "+o.Namespace, err) {
		return rs
	}
	// The webhook names the release's namespace (its Service's); --namespace
	// is only the fallback for an injector behind webhook.url, so that a
	// release in another namespace is checked, and hinted at, where it is.
	if s := wh.ClientConfig.Service; s != nil && s.Namespace != "" {
		o.Namespace = s.Namespace
	}
	// The injection config the chart rendered: the namespaces it excludes
	// are never injected, whatever their labels say.
	cfg, rendered := injectionConfig(ctx, o.Client, o.Namespace)
	secret := tlsSecretName(ctx, o, wh)
	cert, err := servingCert(ctx, o, wh, secret)
	add("webhook CA bundle verifies the serving certificate", "the CA bundle and the injector's certificate differ: helm upgrade (tls.mode=helm), check cert-manager's Certificate, or, with tls.mode=secret, set webhook.caBundle to the CA of the Secret "+secret, err)
	if err == nil {
		add("serving certificate is not about to expire", "delete the Secret "+o.Namespace+"/"+secret+" and helm upgrade to issue a new one (tls.mode=helm), renew it in cert-manager, or replace your own Secret (tls.mode=secret)", notExpiring(cert, o.Now()))
	}
	add("injector is ready", "kubectl -n "+o.Namespace+" describe deployment "+Deployment+"; kubectl -n "+o.Namespace+" logs deployment/"+Deployment, injectorReady(ctx, o, wh))

	pods, nsLabels, err := podsAndNamespaces(ctx, o.Client)
	if !add("pods can be listed", "the checks need to list pods and namespaces", err) {
		return rs
	}
	add("namespace labels "+wellknown.AnnotationInject+" are "+wellknown.InjectEnabled+" or "+wellknown.InjectDisabled,
		"the webhook opts in the namespaces labelled "+wellknown.AnnotationInject+"="+wellknown.InjectEnabled+" and ignores any other value without a word (the same value in a pod's annotation is refused): relabel them as above, or "+wellknown.InjectDisabled+" to keep them out (docs/annotations.md)",
		namespaceLabels(nsLabels, o.Namespace, cfg))
	add("pods that ask for injection have the sidecar", "they were created while the injector was down or before their namespace opted in: kubectl rollout restart their workloads", missingSidecars(pods, nsLabels, o.Namespace, cfg))
	add("sidecars are ready", "a container that restarts: kubectl -n NAMESPACE logs POD -c CONTAINER --previous says why it stopped (the sidecar's exit 2: a flag it refused); "+
		"an image not pulled: kubectl -n NAMESPACE describe pod POD; a sidecar running but not ready: kubectl -n NAMESPACE logs POD -c "+wellknown.ProxyContainerName+"; curl POD:15020/ready", sidecarsReady(pods))
	if rendered {
		warn("sidecars run the injector's images", "they were injected before the last helm upgrade (or a change of proxy.image): kubectl rollout restart their workloads", outdatedSidecars(pods, cfg))
	}
	// Both checks read the workloads; if they cannot be listed, both say so.
	w, err := listWorkloads(ctx, o.Client)
	conflicts, refused := err, err
	if err == nil {
		conflicts, refused = podSecurityConflicts(pods, w, nsLabels, o.Namespace, cfg), refusedWorkloads(ctx, o.Client, w, hooks)
	}
	add("iptables interception only where Pod Security allows it",
		"its init container needs NET_ADMIN and NET_RAW: annotate the pods "+injector.AnnotationInterception+": "+injector.InterceptionProxyEnv+
			", or label the namespace "+injector.PodSecurityEnforceLabel+"=privileged if its pods may have them (docs/annotations.md)",
		conflicts)
	add("no workload's pods are refused by the webhook",
		"with failurePolicy Fail the API server refuses pods while the injector is unreachable (kubectl -n "+o.Namespace+" get pods -l app.kubernetes.io/component=injector); otherwise the message says why the injector refused them",
		refused)
	skipped, valid := policiesValid(ctx, o.Client)
	add("policies validate", "fix the files: minimesh policy lint FILE", valid)
	// A warning: a key such as a README is harmless, but a key `geo`
	// (kubectl create configmap --from-file=geo=geo.yaml) holds a policy
	// that no sidecar ever loads, and nothing else says so.
	warn("policy ConfigMaps hold no key the sidecars skip",
		"a sidecar reads only the keys named *.yaml, *.yml or *.json (docs/policy.md, \"Files\"): rename a key that holds a policy, kubectl create configmap "+PolicyConfig+" --from-file=geo.yaml=FILE, and remove any other",
		listed("keys the sidecars skip, "+policy.NotPolicyFile, skipped))
	if o.Dynamic != nil {
		if add("ResiliencePolicy CRD is installed", "kubectl apply -f charts/minimesh/crds/ (helm creates CRDs only on helm install: an upgrade never restores a deleted one)", crdInstalled(ctx, o.Dynamic)) {
			// A failure, not a warning: unlike sidecars awaiting a rollout,
			// an outdated CRD never mends itself (Helm never upgrades it),
			// and nothing else tells: the API server drops the fields
			// without an error until a policy turns invalid.
			add("ResiliencePolicy CRD is up to date", "apply the chart's CRD: kubectl apply -f charts/minimesh/crds/ (helm upgrade never updates a CRD: docs/install.md, \"Upgrade\")", crdCurrent(ctx, o.Dynamic))
			add("ResiliencePolicy objects are accepted", "kubectl describe rp -n NAMESPACE NAME; the last accepted version of each keeps serving", objectsAccepted(ctx, o.Dynamic))
		}
	}
	return rs
}

// InjectorConfig is the ConfigMap of the injection config the chart renders
// in the release's namespace (charts/minimesh/templates/config.yaml).
const InjectorConfig = "minimesh-injector-config"

// injectionConfig is the injector's config as the chart rendered it, or
// the default when it cannot be read (an injector run by hand); rendered
// says which.
func injectionConfig(ctx context.Context, c kubernetes.Interface, ns string) (cfg injector.Config, rendered bool) {
	cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, InjectorConfig, metav1.GetOptions{})
	if err != nil {
		return injector.DefaultConfig(), false
	}
	cfg, err = injector.ParseConfig([]byte(cm.Data["config.yaml"]))
	if err != nil {
		return injector.DefaultConfig(), false
	}
	return cfg, true
}

// tlsSecretName is the Secret the injector Deployment mounts its serving
// certificate from: tls.secretName with tls.mode=secret, else TLSSecret.
func tlsSecretName(ctx context.Context, o Options, wh *admissionregistrationv1.MutatingWebhook) string {
	s := wh.ClientConfig.Service
	if s == nil {
		return TLSSecret
	}
	d, err := o.Client.AppsV1().Deployments(s.Namespace).Get(ctx, Deployment, metav1.GetOptions{})
	if err != nil {
		return TLSSecret
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "tls" && v.Secret != nil && v.Secret.SecretName != "" {
			return v.Secret.SecretName
		}
	}
	return TLSSecret
}

func serverMinor(c kubernetes.Interface) (int, error) {
	v, err := c.Discovery().ServerVersion()
	if err != nil {
		return 0, err
	}
	if v.Major != "1" {
		return 0, fmt.Errorf("unexpected major version %q", v.Major)
	}
	minor, err := strconv.Atoi(strings.TrimSuffix(v.Minor, "+"))
	if err != nil {
		return 0, fmt.Errorf("version %s: minor %q: %w", v.GitVersion, v.Minor, err)
	}
	return minor, nil
}

func versionOK(minor int) error {
	if minor < minMinor {
		return fmt.Errorf("the API server is 1.%d: pods would wait forever on the proxy as an ordinary init container", minor)
	}
	return nil
}

func noWebhookYet(ctx context.Context, c kubernetes.Interface) error {
	l, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{LabelSelector: WebhookLabel})
	if err != nil {
		return err
	}
	if len(l.Items) > 0 {
		return fmt.Errorf("found %s", l.Items[0].Name)
	}
	return nil
}

func canCreate(ctx context.Context, c kubernetes.Interface) error {
	var denied []string
	for _, r := range []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
	} {
		rev, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &r},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if !rev.Status.Allowed {
			denied = append(denied, r.Resource+"."+r.Group)
		}
	}
	if len(denied) > 0 {
		return fmt.Errorf("not allowed to create %s", strings.Join(denied, ", "))
	}
	return nil
}

// webhook is the first of minimesh's webhooks (they share the client
// config), and names are all of their names.
func webhook(ctx context.Context, c kubernetes.Interface) (wh *admissionregistrationv1.MutatingWebhook, names []string, err error) {
	l, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{LabelSelector: WebhookLabel})
	if err != nil {
		return nil, nil, err
	}
	if len(l.Items) == 0 || len(l.Items[0].Webhooks) == 0 {
		return nil, nil, errors.New("no MutatingWebhookConfiguration labelled " + WebhookLabel)
	}
	for _, h := range l.Items[0].Webhooks {
		names = append(names, h.Name)
	}
	return &l.Items[0].Webhooks[0], names, nil
}

func caPool(wh *admissionregistrationv1.MutatingWebhook) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if len(wh.ClientConfig.CABundle) == 0 || !pool.AppendCertsFromPEM(wh.ClientConfig.CABundle) {
		return nil, fmt.Errorf("webhook %s has no usable caBundle", wh.Name)
	}
	return pool, nil
}

// servingCert returns the certificate the injector serves, verified
// against the webhook's CA bundle for the name the API server dials: the
// URL's host (by a real handshake), or the Service's DNS name (from the
// Secret the injector mounts). Expiry is checked separately, for a
// clearer verdict.
func servingCert(ctx context.Context, o Options, wh *admissionregistrationv1.MutatingWebhook, secret string) (*x509.Certificate, error) {
	pool, err := caPool(wh)
	if err != nil {
		return nil, err
	}
	var cert *x509.Certificate
	var host string
	if u := wh.ClientConfig.URL; u != nil {
		pu, err := url.Parse(*u)
		if err != nil {
			return nil, fmt.Errorf("webhook url %q: %w", *u, err)
		}
		host = pu.Hostname()
		d := &tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}, NetDialer: &net.Dialer{Timeout: o.Timeout}}
		conn, err := d.DialContext(ctx, "tcp", hostPort(pu))
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", *u, err)
		}
		cert = conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		conn.Close()
	} else if s := wh.ClientConfig.Service; s != nil {
		host = s.Name + "." + s.Namespace + ".svc"
		sec, err := o.Client.CoreV1().Secrets(s.Namespace).Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("serving certificate: %w", err)
		}
		block, _ := pem.Decode(sec.Data[corev1.TLSCertKey])
		if block == nil {
			return nil, fmt.Errorf("secret %s/%s: %s is not PEM", s.Namespace, secret, corev1.TLSCertKey)
		}
		if cert, err = x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("secret %s/%s: %w", s.Namespace, secret, err)
		}
	} else {
		return nil, fmt.Errorf("webhook %s has neither url nor service", wh.Name)
	}
	// An expired leaf that is otherwise right reads as "expired" in the
	// next check, not as "does not verify" here.
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, CurrentTime: o.Now()})
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert == cert {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("certificate for %v does not verify for %s: %w", cert.Subject.CommonName, host, err)
	}
	return cert, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "443")
}

func notExpiring(cert *x509.Certificate, now time.Time) error {
	switch left := cert.NotAfter.Sub(now); {
	case left <= 0:
		return fmt.Errorf("expired on %s", cert.NotAfter.UTC().Format(time.DateOnly))
	case left < expiryWarning:
		return fmt.Errorf("expires on %s, in %s", cert.NotAfter.UTC().Format(time.DateOnly), left.Round(time.Hour))
	}
	return nil
}

// injectorReady asks what the API server would reach: the Deployment's
// available replicas, or, for an injector outside the cluster, its
// /readyz over the webhook's TLS.
func injectorReady(ctx context.Context, o Options, wh *admissionregistrationv1.MutatingWebhook) error {
	if u := wh.ClientConfig.URL; u != nil {
		pool, err := caPool(wh)
		if err != nil {
			return err
		}
		pu, err := url.Parse(*u)
		if err != nil {
			return err
		}
		client := &http.Client{Timeout: o.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		ready := (&url.URL{Scheme: "https", Host: pu.Host, Path: "/readyz"}).String()
		resp, err := client.Get(ready)
		if err != nil {
			return fmt.Errorf("the injector at %s: %w", *u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %d", ready, resp.StatusCode)
		}
		return nil
	}
	ns := o.Namespace
	if s := wh.ClientConfig.Service; s != nil {
		ns = s.Namespace
	}
	d, err := o.Client.AppsV1().Deployments(ns).Get(ctx, Deployment, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if d.Status.AvailableReplicas < 1 {
		return fmt.Errorf("deployment %s/%s has no available replica (%d of %d ready)", ns, Deployment, d.Status.ReadyReplicas, d.Status.Replicas)
	}
	return nil
}

func podsAndNamespaces(ctx context.Context, c kubernetes.Interface) ([]corev1.Pod, map[string]map[string]string, error) {
	pods, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, err
	}
	nss, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, err
	}
	labels := map[string]map[string]string{}
	for _, n := range nss.Items {
		labels[n.Name] = n.Labels
	}
	return pods.Items, labels, nil
}

// namespaceLabels lists the namespaces whose minimesh.io/inject label is
// neither enabled nor disabled (true, yes, Enabled). The chart's webhook
// selects namespaces by the exact label enabled, so such a namespace's pods
// are never sent to the injector, which would refuse the same value in a
// pod's annotation: no pod is refused, none is injected, and the pods
// check, which asks the injector what it would do, sees nothing missing.
// The release's namespace and the ignored ones are left out: their pods
// are never injected whatever the label says. The error ends with the
// command that fixes every namespace listed.
func namespaceLabels(nsLabels map[string]map[string]string, release string, cfg injector.Config) error {
	var bad, names []string
	for ns, labels := range nsLabels {
		v, ok := labels[wellknown.AnnotationInject]
		if !ok || v == wellknown.InjectEnabled || v == wellknown.InjectDisabled || ns == release || slices.Contains(cfg.IgnoredNamespaces, ns) {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s (%s=%q)", ns, wellknown.AnnotationInject, v))
		names = append(names, ns)
	}
	if err := listed("namespaces labelled with a value the webhook ignores, not "+wellknown.InjectEnabled+" or "+wellknown.InjectDisabled, bad); err != nil {
		slices.Sort(names)
		return fmt.Errorf("%w: kubectl label namespace %s %s=%s --overwrite", err, strings.Join(names, " "), wellknown.AnnotationInject, wellknown.InjectEnabled)
	}
	return nil
}

// stillRuns reports whether a pod runs or will: not being deleted, and
// not finished (a Job's pod that Succeeded or Failed never runs again,
// whatever sidecar it had or lacked). The pod checks look at these only:
// a finished pod can stay listed for as long as its Job is kept, and
// restarting a workload does not touch it, so listing it would fail the
// check with no way to act on it.
func stillRuns(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// missingSidecars are pods the injector would inject now but that run
// without the sidecar: the webhook was down (failurePolicy Ignore) or the
// namespace opted in after they were created. Which pods should have one
// is injector.Inject's decision, not a second copy of its rule here: a pod
// it skips (hostNetwork, or for nodes other than Linux) is not listed.
func missingSidecars(pods []corev1.Pod, nsLabels map[string]map[string]string, release string, cfg injector.Config) error {
	// The chart's webhook never sees the release's own namespace.
	cfg.IgnoredNamespaces = append(slices.Clip(cfg.IgnoredNamespaces), release)
	var missing []string
	for i := range pods {
		p := &pods[i]
		if injector.IsInjected(p) || !stillRuns(p) {
			continue
		}
		res, err := injector.Inject(injector.Input{Pod: p, Namespace: p.Namespace, NamespaceLabels: nsLabels[p.Namespace]}, &cfg)
		var deny *injector.DenyError
		switch {
		case err == nil && res.Injected:
			missing = append(missing, p.Namespace+"/"+p.Name)
		case errors.As(err, &deny) && !errors.Is(err, injector.ErrPodSecurity) && !slices.Contains(cfg.IgnoredNamespaces, p.Namespace):
			// It asks in a way the injector refuses (minimesh.io/inject:
			// "true"): created before the webhook refused it, or while
			// the injector was down. The Pod Security check lists its own.
			missing = append(missing, p.Namespace+"/"+p.Name+" ("+err.Error()+")")
		}
	}
	return listed("pods without the sidecar", missing)
}

// workloads are the cluster's controllers of pods, listed once for the
// checks that read them.
type workloads struct {
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	daemonSets   []appsv1.DaemonSet
	replicaSets  []appsv1.ReplicaSet
	jobs         []batchv1.Job
	cronJobs     []batchv1.CronJob
}

func listWorkloads(ctx context.Context, c kubernetes.Interface) (*workloads, error) {
	apps, batch, all := c.AppsV1(), c.BatchV1(), metav1.ListOptions{}
	var w workloads
	deps, err := apps.Deployments("").List(ctx, all)
	if err != nil {
		return nil, err
	}
	sts, err := apps.StatefulSets("").List(ctx, all)
	if err != nil {
		return nil, err
	}
	dss, err := apps.DaemonSets("").List(ctx, all)
	if err != nil {
		return nil, err
	}
	rss, err := apps.ReplicaSets("").List(ctx, all)
	if err != nil {
		return nil, err
	}
	jobs, err := batch.Jobs("").List(ctx, all)
	if err != nil {
		return nil, err
	}
	cjs, err := batch.CronJobs("").List(ctx, all)
	if err != nil {
		return nil, err
	}
	w.deployments, w.statefulSets, w.daemonSets = deps.Items, sts.Items, dss.Items
	w.replicaSets, w.jobs, w.cronJobs = rss.Items, jobs.Items, cjs.Items
	return &w, nil
}

// podSecurityConflicts lists the pods and workloads that ask for iptables
// interception in a namespace whose Pod Security level forbids its init
// container's capabilities. The webhook refuses such pods when they are
// created, so what is listed here is a pod that will not come back once
// deleted, or a workload whose pods are refused (its ReplicaSet, Job or
// StatefulSet reports FailedCreate, and a rollout stalls). A pod or a
// workload owned by another is listed as its owner. Which pod would be
// refused so is injector.Inject's decision (ErrPodSecurity), as for
// missingSidecars: a pod it skips (hostNetwork, for nodes other than
// Linux) asks for nothing, and an injected pod counts by the init
// container the injector wrote into it.
func podSecurityConflicts(pods []corev1.Pod, w *workloads, nsLabels map[string]map[string]string, release string, cfg injector.Config) error {
	ignored := append(slices.Clip(cfg.IgnoredNamespaces), release)
	var found []string
	consider := func(kind string, meta metav1.ObjectMeta, template metav1.ObjectMeta, spec *corev1.PodSpec) {
		if metav1.GetControllerOf(&meta) != nil || slices.Contains(ignored, meta.Namespace) {
			return
		}
		p := &corev1.Pod{ObjectMeta: template, Spec: *spec}
		p.Namespace = meta.Namespace
		labels := nsLabels[meta.Namespace]
		if _, err := injector.Inject(injector.Input{Pod: p, Namespace: meta.Namespace, NamespaceLabels: labels}, &cfg); !errors.Is(err, injector.ErrPodSecurity) {
			return
		}
		level, _ := injector.ForbidsNetAdmin(labels)
		found = append(found, fmt.Sprintf("%s %s/%s (%s=%s)", kind, meta.Namespace, meta.Name, injector.PodSecurityEnforceLabel, level))
	}
	for i := range pods {
		consider("pod", pods[i].ObjectMeta, pods[i].ObjectMeta, &pods[i].Spec)
	}
	for _, o := range w.deployments {
		consider("deployment", o.ObjectMeta, o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	}
	for _, o := range w.statefulSets {
		consider("statefulset", o.ObjectMeta, o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	}
	for _, o := range w.daemonSets {
		consider("daemonset", o.ObjectMeta, o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	}
	for _, o := range w.replicaSets {
		consider("replicaset", o.ObjectMeta, o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	}
	for _, o := range w.jobs {
		consider("job", o.ObjectMeta, o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	}
	for _, o := range w.cronJobs {
		consider("cronjob", o.ObjectMeta, o.Spec.JobTemplate.Spec.Template.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.Spec)
	}
	return listed("ask for iptables interception where Pod Security forbids NET_ADMIN", found)
}

// refusedWorkloads are the workloads whose pods the API server refuses to
// create because of minimesh's webhook: with failurePolicy Fail and the
// injector unreachable, or the injector's own refusal (docs/injector.md).
// Such a workload has no pod for the other checks to see; its rollout
// just stalls. A ReplicaSet says so in its ReplicaFailure condition for as
// long as it lasts. A StatefulSet or a DaemonSet has no such condition, so
// its FailedCreate events that name the webhook count, while it has fewer
// pods than it wants (events outlive the fault by an hour). Jobs are left
// out: a finished Job's events would read as a fault.
func refusedWorkloads(ctx context.Context, c kubernetes.Interface, w *workloads, hooks []string) error {
	names := func(msg string) bool {
		return slices.ContainsFunc(hooks, func(h string) bool { return strings.Contains(msg, `"`+h+`"`) })
	}
	var found []string
	add := func(kind string, meta metav1.ObjectMeta, msg string) {
		if owner := metav1.GetControllerOf(&meta); owner != nil && owner.Kind == "Deployment" {
			kind, meta.Name = "deployment", owner.Name
		}
		found = append(found, fmt.Sprintf("%s %s/%s (%s)", kind, meta.Namespace, meta.Name, cut(msg, 300)))
	}
	for _, rs := range w.replicaSets {
		for _, cond := range rs.Status.Conditions {
			if cond.Type == appsv1.ReplicaSetReplicaFailure && cond.Status == corev1.ConditionTrue && names(cond.Message) {
				add("replicaset", rs.ObjectMeta, cond.Message)
			}
		}
	}
	short := map[string]bool{} // kind/namespace/name of workloads short of pods
	for _, o := range w.statefulSets {
		if o.Spec.Replicas != nil && o.Status.Replicas < *o.Spec.Replicas {
			short["StatefulSet/"+o.Namespace+"/"+o.Name] = true
		}
	}
	for _, o := range w.daemonSets {
		if o.Status.CurrentNumberScheduled < o.Status.DesiredNumberScheduled {
			short["DaemonSet/"+o.Namespace+"/"+o.Name] = true
		}
	}
	if len(short) == 0 {
		return listed("workloads whose pods are refused", found)
	}
	evs, err := c.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "reason=FailedCreate"})
	if err != nil {
		return err
	}
	for _, e := range evs.Items {
		o := e.InvolvedObject
		key := o.Kind + "/" + o.Namespace + "/" + o.Name
		if e.Reason == "FailedCreate" && short[key] && names(e.Message) {
			delete(short, key) // once per workload
			add(strings.ToLower(o.Kind), metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name}, e.Message)
		}
	}
	return listed("workloads whose pods are refused", found)
}

// cut shortens s to at most n bytes, on a rune boundary, marking the cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return textcut.Prefix(s, n) + "…"
}

// outdatedSidecars are injected pods whose sidecar (or init container)
// has another image than the injector would give them now: after a helm
// upgrade, pods keep the sidecar they were created with until they are
// recreated (docs/install.md, "Upgrade"), and a sidecar older than the
// control plane is the first thing to rule out when debugging (Linkerd's
// "data plane is up-to-date" check). A pod that is going away is not
// listed.
func outdatedSidecars(pods []corev1.Pod, cfg injector.Config) error {
	var old []string
	for i := range pods {
		p := &pods[i]
		proxy, init, ok := injector.Images(p)
		if !ok || !stillRuns(p) {
			continue
		}
		switch {
		case proxy != cfg.Proxy.Image:
			old = append(old, fmt.Sprintf("%s/%s (%s, not %s)", p.Namespace, p.Name, proxy, cfg.Proxy.Image))
		case init != "" && init != cfg.Proxy.InitImageRef():
			old = append(old, fmt.Sprintf("%s/%s (init %s, not %s)", p.Namespace, p.Name, init, cfg.Proxy.InitImageRef()))
		}
	}
	return listed("sidecars of another image", old)
}

// sidecarsReady lists the injected pods whose sidecar does not serve: a
// running pod's that is not ready, and a pending pod's sidecar or
// minimesh-init that will not start without a change (stuckReason). A
// native sidecar that never starts holds its pod in Pending
// (Init:CrashLoopBackOff, ImagePullBackOff), so running pods alone passed
// a cluster whose every sidecar crash-looped. A pending pod merely being
// scheduled or created is not a fault, and one being deleted has a
// draining sidecar, whose /ready says 503 on purpose.
func sidecarsReady(pods []corev1.Pod) error {
	var notReady []string
	for i := range pods {
		p := &pods[i]
		if !stillRuns(p) || !injector.IsInjected(p) {
			continue
		}
		name := p.Namespace + "/" + p.Name
		switch p.Status.Phase {
		case corev1.PodRunning:
			i := slices.IndexFunc(p.Status.InitContainerStatuses, func(s corev1.ContainerStatus) bool { return s.Name == wellknown.ProxyContainerName })
			switch {
			case i < 0:
				notReady = append(notReady, name)
			case !p.Status.InitContainerStatuses[i].Ready:
				if why := stuckReason(&p.Status.InitContainerStatuses[i]); why != "" {
					name += " (" + wellknown.ProxyContainerName + ": " + why + ")"
				}
				notReady = append(notReady, name)
			}
		case corev1.PodPending:
			for j := range p.Status.InitContainerStatuses {
				s := &p.Status.InitContainerStatuses[j]
				if s.Name != wellknown.ProxyContainerName && s.Name != injector.InitContainerName {
					continue
				}
				if why := stuckReason(s); why != "" {
					notReady = append(notReady, name+" ("+s.Name+": "+why+")")
					break
				}
			}
		}
	}
	return listed("sidecars not ready", notReady)
}

// stuckReasons are the waiting reasons of a container that the kubelet
// will not get running without a change: an image it cannot pull or
// parse, a reference to something missing (a Secret, a ConfigMap key), a
// container the runtime cannot create, or one that keeps exiting and
// waits out the back-off between restarts.
var stuckReasons = []string{
	"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
	"CreateContainerConfigError", "CreateContainerError",
}

// stuckReason says why a container of minimesh's will not start, "" if it
// may yet: one waiting for a reason of stuckReasons, or one that has
// restarted and has not started since (a sidecar that crashes before its
// startup probe passes is briefly running between its back-offs). Its
// last exit and its restarts follow; an image's or a config's message
// (which image, which Secret) too, cut.
func stuckReason(s *corev1.ContainerStatus) string {
	w := s.State.Waiting
	var why string
	switch {
	case w != nil && slices.Contains(stuckReasons, w.Reason):
		why = w.Reason
		if w.Reason != "CrashLoopBackOff" && w.Message != "" {
			why += ": " + cut(w.Message, 200)
		}
	case s.RestartCount > 0 && (s.Started == nil || !*s.Started) &&
		(s.State.Terminated == nil || s.State.Terminated.ExitCode != 0):
		why = "restarted, not started since"
	default:
		return ""
	}
	if t := s.LastTerminationState.Terminated; t != nil {
		why += fmt.Sprintf(", last exit %d", t.ExitCode)
		if t.Reason != "" && t.Reason != "Error" {
			why += " " + t.Reason // OOMKilled, ContainerCannotRun
		}
	}
	if s.RestartCount > 0 {
		why += fmt.Sprintf(", %d restarts", s.RestartCount)
	}
	return why
}

// policiesValid validates each namespace's policy ConfigMap as its
// sidecars read it: the injector mounts every key as a file of
// --policy-dir, and the sidecar decodes the policy files among them
// (policy.IsPolicyFile, in name order) as one set, refusing it whole if
// two keys govern one service. So does this check (policy.OneSidecar,
// the sidecar's own code): a key at a time, it passed a ConfigMap that
// every sidecar of the namespace refuses. binaryData keys are mounted
// too. skipped are the keys the sidecars pass over but for hidden ones,
// as the sidecar's log lists them: before, they went without a word.
func policiesValid(ctx context.Context, c kubernetes.Interface) (skipped []string, valid error) {
	cms, err := c.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + PolicyConfig})
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, cm := range cms.Items {
		if cm.Name != PolicyConfig {
			continue
		}
		var files []policy.File
		for k, v := range cm.Data {
			files = append(files, policy.File{Name: k, Data: []byte(v)})
		}
		for k, v := range cm.BinaryData {
			files = append(files, policy.File{Name: k, Data: v})
		}
		files = slices.DeleteFunc(files, func(f policy.File) bool {
			if policy.IsPolicyFile(f.Name) {
				return false
			}
			if !strings.HasPrefix(f.Name, ".") {
				skipped = append(skipped, cm.Namespace+"/"+cm.Name+"/"+f.Name)
			}
			return true
		})
		slices.SortFunc(files, func(a, b policy.File) int { return strings.Compare(a.Name, b.Name) })
		for i := range files {
			files[i].Name = cm.Namespace + "/" + cm.Name + "/" + files[i].Name
		}
		if _, err := policy.OneSidecar.Decode(files); err != nil {
			errs = append(errs, err)
		}
	}
	return skipped, errors.Join(errs...)
}

var resiliencePolicies = schema.GroupVersionResource{Group: "minimesh.io", Version: "v1alpha1", Resource: "resiliencepolicies"}

// crdInstalled: without the CRD, `kubectl apply` of a ResiliencePolicy
// fails, and the control plane serves none (its watch fails).
func crdInstalled(ctx context.Context, d dynamic.Interface) error {
	_, err := d.Resource(resiliencePolicies).List(ctx, metav1.ListOptions{Limit: 1})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("the API server does not serve %s/%s: the CustomResourceDefinition %s.%s is missing", resiliencePolicies.GroupResource(), resiliencePolicies.Version, resiliencePolicies.Resource, resiliencePolicies.Group)
	}
	return err
}

var crds = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// crdFields are the fields of the ResiliencePolicy schema that the
// controller writes and reads back, which a CRD from before them prunes
// without an error (structural schemas drop unknown fields): with
// status.lastValidSpec and lastValidGeneration pruned, a policy made
// invalid serves nothing instead of its last valid version
// (docs/controlplane.md, "The CRD"). A field the controller comes to
// depend on is added here with the CRD.
var crdFields = []string{"status.lastValidSpec", "status.lastValidGeneration"}

// crdCurrent reads the installed CRD and names the fields of crdFields its
// schema (of the version the controller uses) would prune: Helm installs
// a CRD but never upgrades it, so a release upgraded without `kubectl
// apply -f charts/minimesh/crds` keeps the CRD of its first install.
func crdCurrent(ctx context.Context, d dynamic.Interface) error {
	name := resiliencePolicies.Resource + "." + resiliencePolicies.Group
	u, err := d.Resource(crds).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read the CustomResourceDefinition %s: %w", name, err)
	}
	var sch map[string]any
	versions, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
	for _, v := range versions {
		if m, _ := v.(map[string]any); m["name"] == resiliencePolicies.Version {
			sch, _, _ = unstructured.NestedMap(m, "schema", "openAPIV3Schema")
		}
	}
	var missing []string
	for _, f := range crdFields {
		if !keeps(sch, strings.Split(f, ".")) {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the installed CustomResourceDefinition %s (%s) lacks %s: it predates them, and the API server drops them from every status the controller writes, so a policy made invalid serves nothing instead of its last valid version",
			name, resiliencePolicies.Version, strings.Join(missing, ", "))
	}
	return nil
}

// keeps reports whether the structural schema s keeps the field at path:
// each name of it a property, or under a node that preserves unknown
// fields.
func keeps(s map[string]any, path []string) bool {
	for _, name := range path {
		if s == nil {
			return false
		}
		next, ok, _ := unstructured.NestedMap(s, "properties", name)
		if !ok {
			preserve, _, _ := unstructured.NestedBool(s, "x-kubernetes-preserve-unknown-fields")
			return preserve
		}
		s = next
	}
	return true
}

// objectsAccepted lists the objects whose status the controller set to
// Accepted=False; without the CRD there is nothing to check.
func objectsAccepted(ctx context.Context, d dynamic.Interface) error {
	l, err := d.Resource(resiliencePolicies).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var bad []string
	for _, o := range l.Items {
		conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Accepted" && m["status"] == "False" {
				bad = append(bad, fmt.Sprintf("%s/%s (%v)", o.GetNamespace(), o.GetName(), m["message"]))
			}
		}
	}
	return listed("refused", bad)
}

func listed(what string, items []string) error {
	if len(items) == 0 {
		return nil
	}
	slices.Sort(items)
	shown := items
	more := ""
	if len(items) > maxListedPods {
		shown, more = items[:maxListedPods], fmt.Sprintf(" and %d more", len(items)-maxListedPods)
	}
	return fmt.Errorf("%d %s: %s%s", len(items), what, strings.Join(shown, ", "), more)
}
