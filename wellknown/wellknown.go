// Package wellknown holds the names and numbers that the sidecar, the
// injector and the chart must agree on: ports, headers, annotations, the
// environment variable prefix and the build version. It is a leaf: it
// imports nothing of minimesh, so any binary may import it.
package wellknown

import "strconv"

// Ports of the sidecar and the control plane (DESIGN.md, "Interfaces").
const (
	OutboundPort = 15001
	InboundPort  = 15006
	AdminPort    = 15020
	XDSPort      = 15010
	WebhookPort  = 8443
)

// Headers the sidecar reads or writes.
const (
	HeaderRequestID      = "X-Request-ID"
	HeaderError          = "X-Minimesh-Error"
	HeaderIdempotencyKey = "Idempotency-Key"
)

// Values of the X-Minimesh-Error header.
const (
	ErrorCircuitOpen    = "circuit-open"
	ErrorTimeout        = "timeout"
	ErrorConnectFailure = "connect-failure"
	ErrorReset          = "reset"
	ErrorBadRequest     = "bad-request"
	// ErrorForbidden: the request would have reached one of the sidecar's
	// own ports (403).
	ErrorForbidden = "forbidden"
	// ErrorLoop: the request had already passed through this sidecar (508).
	ErrorLoop = "loop"
	// ErrorOverloaded: the sidecar itself had no file descriptor or
	// memory left to connect upstream (503).
	ErrorOverloaded = "overloaded"
)

// EnvPrefix prefixes the environment variable that sets each flag of
// minimesh-proxy: --outbound-addr is MINIMESH_OUTBOUND_ADDR.
const EnvPrefix = "MINIMESH_"

// Annotation prefix and names on pods (DESIGN.md, "Pod annotations").
const (
	AnnotationPrefix = "minimesh.io/"
	AnnotationInject = AnnotationPrefix + "inject"
	AnnotationStatus = AnnotationPrefix + "status"

	// Values of AnnotationInject (and the namespace label of that name) and
	// of AnnotationStatus.
	InjectEnabled  = "enabled"
	InjectDisabled = "disabled"
	StatusInjected = "injected"
)

// ProxyContainerName is the sidecar's container name in an injected pod.
const ProxyContainerName = "minimesh-proxy"

// ProxyUID is the user the sidecar runs as with iptables interception: the
// rules of `minimesh-proxy init` let this UID's connections out unredirected
// (the sidecar's own upstream connections; anything else would loop back
// into it). It is no UID an image uses by default (distroless is 65532,
// Istio's proxy 1337, Linkerd's 2102), so an app is not excluded by accident.
const ProxyUID = 15000

// EndpointName is the EDS resource name of a Service port: its FQDN and
// the Service's port number. The control plane serves a Service's
// endpoints under it, the Envoy export names them by it, and the sidecar
// computes it from any spelling of the host (geo, geo.shop,
// geo.shop.svc...): all three must agree (docs/controlplane.md,
// "Endpoints (EDS)").
func EndpointName(service, namespace string, port int) string {
	return service + "." + namespace + ".svc.cluster.local:" + strconv.Itoa(port)
}

// Version is the build's version, set by the linker:
// -ldflags "-X github.com/minimesh/minimesh/wellknown.Version=v0.1.0".
var Version = "dev"
