package policy

import "strings"

// ServiceFQDN is the cluster-local name of the Kubernetes Service that
// host names from a pod in namespace ns: name, name.ns, name.ns.svc and
// name.ns.svc.cluster.local all reach name.ns.svc.cluster.local. Any other
// host (an external name, an IP address, a name with more labels) is not
// a Service: ok is false. host is lowercase, without port or trailing dot.
// It is the one reading of "which Service is this host": the policy
// table's aliases and the sidecar's endpoint lookup both use it.
func ServiceFQDN(host, ns string) (fqdn string, ok bool) {
	name, svcNS, ok := serviceOf(host, ns)
	if !ok {
		return "", false
	}
	return name + "." + svcNS + ".svc.cluster.local", true
}

// serviceOf splits a Service host into its name and namespace.
func serviceOf(host, ns string) (name, svcNS string, ok bool) {
	if host == "" || strings.Trim(host, "0123456789.") == "" {
		return "", "", false // an IPv4 address, not a name
	}
	labels := strings.Split(host, ".")
	switch {
	case len(labels) == 1:
		return labels[0], ns, ns != ""
	case len(labels) == 2,
		len(labels) == 3 && labels[2] == "svc",
		len(labels) == 5 && labels[2] == "svc" && labels[3] == "cluster" && labels[4] == "local":
		return labels[0], labels[1], labels[0] != "" && labels[1] != ""
	}
	return "", "", false
}
