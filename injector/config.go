// Package injector turns a pod into the same pod with the minimesh sidecar:
// the pure mutation (Inject), the JSON patch the webhook answers with, the
// injection config the chart renders, and the admission webhook server.
package injector

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/minimesh/minimesh/wellknown"
)

// Config is the injection config: what every injected sidecar gets unless
// a pod's annotations say otherwise. `minimesh controller --config FILE`
// reads it; the chart renders it from its values.
type Config struct {
	Proxy ProxyConfig `yaml:"proxy"`
	// OTLPEndpoint is where sidecars send spans (host:port, OTLP/gRPC);
	// empty: tracing off.
	OTLPEndpoint string `yaml:"otlpEndpoint"`
	// TraceSampleRatio is the sidecars' sampling ratio for new traces;
	// nil: the sidecar's default.
	TraceSampleRatio *float64 `yaml:"traceSampleRatio"`
	// XDSAddress is the control plane the sidecars follow (host:port);
	// empty: policies only from the ConfigMap below. With it, the ConfigMap
	// is the fallback for a sidecar that starts while the control plane is
	// unreachable.
	XDSAddress string `yaml:"xdsAddress"`
	// PolicyConfigMap is the ConfigMap of the pod's namespace whose files
	// the sidecar loads as policies. It is mounted optional, so a namespace
	// without one runs with defaults.
	PolicyConfigMap string `yaml:"policyConfigMap"`
	// NoProxy is added to NO_PROXY after loopback and the API server:
	// hosts, domains (.example.com) or CIDRs that the apps reach directly.
	NoProxy []string `yaml:"noProxy"`
	// IgnoredNamespaces never get a sidecar, whatever their pods ask.
	IgnoredNamespaces []string `yaml:"ignoredNamespaces"`
}

// ProxyConfig is the sidecar container.
type ProxyConfig struct {
	Image string `yaml:"image"`
	// InitImage is the minimesh-init container's image under iptables
	// interception: minimesh-proxy with Debian's iptables, which the
	// sidecar's static image leaves out (docs/install.md). Empty:
	// DefaultInitImage of Image.
	InitImage       string `yaml:"initImage"`
	ImagePullPolicy string `yaml:"imagePullPolicy"`
	// Resources; the annotations proxy-cpu-request … override each.
	CPURequest    string `yaml:"cpuRequest"`
	MemoryRequest string `yaml:"memoryRequest"`
	CPULimit      string `yaml:"cpuLimit"`
	MemoryLimit   string `yaml:"memoryLimit"`
	LogLevel      string `yaml:"logLevel"`
	OutboundPort  int    `yaml:"outboundPort"`
	AdminPort     int    `yaml:"adminPort"`
	// InboundPort is where iptables interception with capture-inbound
	// redirects the pod's inbound connections.
	InboundPort int `yaml:"inboundPort"`
	// UID and GID the sidecar runs as; the image's nonroot user.
	UID int64 `yaml:"uid"`
}

// DefaultConfig is the config without a file. The sidecar's resources
// follow what it measured at 1,000 requests/s as injected
// (docs/benchmarks.md, "The rate sweep as injected"): 0.05–0.14 core (a
// quiet and a noisy machine), so a request of 100m, Linkerd's and Istio's
// too; a peak RSS of 14–15 MB with the GOGC=50 the sidecar gets (10 MB
// idle, most of it the binary's pages) and 8–13 KB per idle client
// connection, so a request of 32Mi and a limit of 128Mi, room to spare
// for the 1,024 connections --max-connections allows (Go's memory limit
// is 90 % of it). The CPU limit of one core comes with
// GOMAXPROCS=1 (Go would round a limit under two cores up to 2 Ps), which
// cut the sidecar's CPU per request by 28 % and its p99 latency; without
// a limit the request sets it (RuntimeEnv).
func DefaultConfig() Config {
	return Config{
		Proxy: ProxyConfig{
			Image:           "ghcr.io/minimesh/minimesh:" + imageTag(),
			ImagePullPolicy: "IfNotPresent",
			CPURequest:      "100m",
			MemoryRequest:   "32Mi",
			CPULimit:        "1",
			MemoryLimit:     "128Mi",
			LogLevel:        "info",
			OutboundPort:    wellknown.OutboundPort,
			AdminPort:       wellknown.AdminPort,
			InboundPort:     wellknown.InboundPort,
			UID:             65532,
		},
		PolicyConfigMap:   "minimesh-policies",
		IgnoredNamespaces: []string{"kube-system", "kube-node-lease"},
	}
}

// InitImageRef is the init container's image: InitImage, or
// DefaultInitImage of Image ("" when Image is pinned by digest, which
// Validate refuses).
func (p ProxyConfig) InitImageRef() string {
	if p.InitImage != "" {
		return p.InitImage
	}
	ref, _ := DefaultInitImage(p.Image)
	return ref
}

// DefaultInitImage is the init image that goes with a proxy image: its
// repository with -init appended, and its tag (ghcr.io/minimesh/minimesh:v1
// → ghcr.io/minimesh/minimesh-init:v1). Both images are built and tagged
// together (the Dockerfile's two targets, `make image`), so whoever
// mirrors or pins the proxy image in their registry gets the matching init
// image without a second setting. A digest names one image only: an image
// pinned by digest has no default, and its init image must be named.
func DefaultInitImage(proxyImage string) (string, error) {
	if strings.Contains(proxyImage, "@") {
		return "", fmt.Errorf("%s is pinned by digest, which names no other image", proxyImage)
	}
	repo, tag, tagged := splitTag(proxyImage)
	if repo == "" {
		return "", fmt.Errorf("%s: no repository", quote(proxyImage))
	}
	if tagged {
		tag = ":" + tag
	}
	return repo + "-init" + tag, nil
}

// splitTag cuts an image reference without its digest at its tag: the
// last ':' after the last '/' (a registry's :port comes before one).
func splitTag(ref string) (name, tag string, tagged bool) {
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[:i], ref[i+1:], true
	}
	return ref, "", false
}

func imageTag() string {
	if wellknown.Version == "dev" || strings.ContainsAny(wellknown.Version, "+ ") {
		return "latest"
	}
	return wellknown.Version
}

// LoadConfig reads a config file over DefaultConfig: fields the file leaves
// out keep their defaults. Unknown fields are errors with their line.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig is LoadConfig of bytes.
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate reports every impossible value of the config at once.
func (c *Config) Validate() error {
	var errs []error
	p := &c.Proxy
	imageOK := false
	switch err := checkImageRef(p.Image); {
	case p.Image == "":
		errs = append(errs, errors.New("proxy.image: must be set"))
	case err != nil:
		errs = append(errs, fmt.Errorf("proxy.image: %s: %w", quote(p.Image), err))
	default:
		imageOK = true
	}
	switch {
	case p.InitImage != "":
		if err := checkImageRef(p.InitImage); err != nil {
			errs = append(errs, fmt.Errorf("proxy.initImage: %s: %w", quote(p.InitImage), err))
		}
	case imageOK:
		ref, err := DefaultInitImage(p.Image)
		if err == nil {
			// A repository path at the length limit has no room for -init.
			if err = checkImageRef(ref); err != nil {
				err = fmt.Errorf("%s gives the default %s: %w", quote(p.Image), quote(ref), err)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("proxy.initImage: must be set: proxy.image %w", err))
		}
	}
	switch p.ImagePullPolicy {
	case "Always", "IfNotPresent", "Never":
	default:
		errs = append(errs, fmt.Errorf("proxy.imagePullPolicy: %s is not Always, IfNotPresent or Never", quote(p.ImagePullPolicy)))
	}
	// The same bounds as the annotations: a default no pod could
	// override into a valid sidecar would refuse every pod.
	for _, r := range []struct {
		name     string
		req, lim string
		max      resource.Quantity
	}{
		{"cpu", p.CPURequest, p.CPULimit, maxProxyCPU},
		{"memory", p.MemoryRequest, p.MemoryLimit, maxProxyMemory},
	} {
		var qs [2]*resource.Quantity
		for i, v := range []string{r.req, r.lim} {
			if v == "" {
				continue
			}
			name := "proxy." + r.name + [2]string{"Request", "Limit"}[i]
			q, err := parseResource(v, r.max)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", name, quote(v), err))
				continue
			}
			qs[i] = &q
		}
		if qs[0] != nil && qs[1] != nil && qs[0].Cmp(*qs[1]) > 0 {
			errs = append(errs, fmt.Errorf("proxy.%sRequest: %s is more than proxy.%sLimit %s", r.name, r.req, r.name, r.lim))
		}
	}
	if !validLogLevel(p.LogLevel) {
		errs = append(errs, fmt.Errorf("proxy.logLevel: %s is not debug, info, warn or error", quote(p.LogLevel)))
	}
	for _, port := range []struct {
		name string
		v    int
	}{{"proxy.outboundPort", p.OutboundPort}, {"proxy.adminPort", p.AdminPort}, {"proxy.inboundPort", p.InboundPort}} {
		switch {
		case port.v < 1 || port.v > 65535:
			errs = append(errs, fmt.Errorf("%s: %d is not a port (1-65535)", port.name, port.v))
		case port.v < minSidecarPort:
			errs = append(errs, fmt.Errorf("%s: %d is below %d: the sidecar runs as a non-root user with every capability dropped, and cannot listen on it", port.name, port.v, minSidecarPort))
		}
	}
	if p.OutboundPort == p.AdminPort {
		errs = append(errs, fmt.Errorf("proxy.adminPort: %d is also the outbound port", p.AdminPort))
	}
	if p.InboundPort == p.OutboundPort || p.InboundPort == p.AdminPort {
		errs = append(errs, fmt.Errorf("proxy.inboundPort: %d is also the outbound or the admin port", p.InboundPort))
	}
	if p.UID <= 0 {
		errs = append(errs, fmt.Errorf("proxy.uid: %d: the sidecar must run as a non-root user", p.UID))
	}
	// The sidecar refuses these at start (exit 2), which would keep every
	// injected pod from starting.
	for _, a := range []struct{ name, v string }{{"xdsAddress", c.XDSAddress}, {"otlpEndpoint", c.OTLPEndpoint}} {
		if a.v != "" && !wellknown.ValidHostPort(a.v) {
			errs = append(errs, fmt.Errorf("%s: %s: want HOST:PORT with a port from 1 to 65535", a.name, quote(a.v)))
		}
	}
	if r := c.TraceSampleRatio; r != nil && (*r < 0 || *r > 1) {
		errs = append(errs, fmt.Errorf("traceSampleRatio: %v is not in [0, 1]", *r))
	}
	// NO_PROXY is a list of names, and -Dhttp.nonProxyHosts one option of
	// JAVA_TOOL_OPTIONS, which the JVM splits at white space.
	for i, h := range c.NoProxy {
		if h == "" || strings.ContainsAny(h, " \t\r\n,|'\"") {
			errs = append(errs, fmt.Errorf("noProxy[%d]: %s: want a host, a .domain or a CIDR, without spaces, commas, | or quotes", i, quote(h)))
		}
	}
	if _, _, ok := javaNonProxyHosts(noProxy(c.NoProxy, nil)); !ok {
		errs = append(errs, fmt.Errorf("noProxy: more than %d bytes in Java's -Dhttp.nonProxyHosts (CIDRs off octet boundaries take one pattern per address block)", maxJavaNonProxyBytes))
	}
	if c.PolicyConfigMap == "" {
		errs = append(errs, errors.New("policyConfigMap: must be set"))
	}
	return errors.Join(errs...)
}

// minSidecarPort is the lowest port the sidecar can listen on: it runs
// as a non-root user (proxy.uid, or 15000 under iptables) with every
// capability dropped, NET_BIND_SERVICE too, and the kernel keeps the
// ports below net.ipv4.ip_unprivileged_port_start (1024 unless the
// container runtime lowers it, which not every node's does) for those.
const minSidecarPort = 1024

// The grammar of an image reference, as the kubelet parses it before it
// pulls (the reference grammar of the distribution project,
// github.com/distribution/reference): a name of an optional registry
// host and a lower-case repository path, then an optional tag and an
// optional digest. The API server only refuses white space at the ends,
// so a reference it admits can still leave every injected pod in
// InvalidImageName.
var (
	imageHost     = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$`)
	imagePathPart = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	imageTagRE    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}$`)
	// The digests the kubelet can verify, each with its length in hex.
	imageDigestHex = map[string]int{"sha256": 64, "sha384": 96, "sha512": 128}
	lowerHex       = regexp.MustCompile(`^[a-f0-9]+$`)
)

// maxImagePath is the longest repository path (without the registry) a
// reference may have.
const maxImagePath = 255

// checkImageRef reports why ref is no image reference the kubelet could
// pull, nil if it is one.
func checkImageRef(ref string) error {
	if strings.ContainsFunc(ref, unicode.IsSpace) {
		return errors.New("contains white space")
	}
	if len(ref) == 64 && lowerHex.MatchString(ref) {
		return errors.New("64 hex digits name an image ID, not a repository")
	}
	name, digest, pinned := strings.Cut(ref, "@")
	if pinned {
		alg, hex, _ := strings.Cut(digest, ":")
		n, known := imageDigestHex[alg]
		if !known || len(hex) != n || !lowerHex.MatchString(hex) {
			return fmt.Errorf("digest %s: want sha256: and 64 lower-case hex digits (or sha384:, sha512: and 96, 128)", quote(digest))
		}
	}
	if repo, tag, tagged := splitTag(name); tagged {
		name = repo
		if !imageTagRE.MatchString(tag) {
			return fmt.Errorf("tag %s: want at most 128 letters, digits, _, . and -, not starting with . or -", quote(tag))
		}
	}
	if name == "" {
		return errors.New("no repository")
	}
	parts := strings.Split(name, "/")
	host := ""
	// The first part is a registry host when it looks like one, as the
	// kubelet decides: a dot, a port, localhost, or an upper-case letter
	// (which no repository has). One that is no host name but would do as
	// a repository part (a9.b_c) passes the kubelet's parser too.
	if first := parts[0]; len(parts) > 1 && (strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first) {
		if !imageHost.MatchString(first) && !imagePathPart.MatchString(first) {
			return fmt.Errorf("registry %s: want a host name or [IPv6 address], and an optional :port", quote(first))
		}
		host, parts = first, parts[1:]
	}
	path := strings.Join(parts, "/")
	for _, part := range parts {
		if !imagePathPart.MatchString(part) {
			return fmt.Errorf("repository %s: want lower-case letters and digits, separated by ., _, __ or -", quote(path))
		}
	}
	if len(parts) == 1 && (host == "" || host == "docker.io" || host == "index.docker.io") {
		path = "library/" + path // Docker Hub's official images
	}
	if len(path) > maxImagePath {
		return fmt.Errorf("repository path of %d bytes, more than %d", len(path), maxImagePath)
	}
	return nil
}

func validLogLevel(s string) bool {
	switch s {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}
