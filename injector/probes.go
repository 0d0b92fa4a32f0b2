package injector

import (
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// warnTCPProbes warns of each tcpSocket probe of an app port that
// capture-inbound redirects: the sidecar accepts the kubelet's connection
// itself before it connects to the app, so the probe checks the sidecar,
// not the app, and passes while the app is down (docs/interception.md,
// "Inbound"). httpGet probes go through the sidecar to the app and are
// fine. Native sidecars (init containers with restartPolicy Always) are
// probed as the app containers are, so theirs are looked at too.
func warnTCPProbes(pod *corev1.Pod, s *settings) {
	if !s.iptables || !s.captureInbound {
		return
	}
	probed := slices.Clone(pod.Spec.Containers)
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			probed = append(probed, c)
		}
	}
	for _, c := range probed {
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
		}{{"livenessProbe", c.LivenessProbe}, {"readinessProbe", c.ReadinessProbe}, {"startupProbe", c.StartupProbe}} {
			if p.probe == nil || p.probe.TCPSocket == nil {
				continue
			}
			port := probePort(c, p.probe.TCPSocket.Port.String())
			if port == 0 || skipped(s.skipInboundPorts, port) {
				continue
			}
			s.warnf("container %s: the %s is a tcpSocket probe of port %d, which %s: enabled redirects to the sidecar: it would check the sidecar, not the app (use httpGet or exec, or add %d to %s)",
				c.Name, p.kind, port, annCaptureInbound, port, annSkipInboundPorts)
		}
	}
}

// probePort is a probe's port, by number or by the name of one of the
// container's ports; 0 if neither.
func probePort(c corev1.Container, v string) int {
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	for _, p := range c.Ports {
		if p.Name == v {
			return int(p.ContainerPort)
		}
	}
	return 0
}

// skipped reports whether port is in a list of ports and ranges (checked
// already by ports()).
func skipped(list []string, port int) bool {
	for _, item := range list {
		lo, hi, isRange := strings.Cut(item, "-")
		first, _ := strconv.Atoi(lo)
		last := first
		if isRange {
			last, _ = strconv.Atoi(hi)
		}
		if port >= first && port <= last {
			return true
		}
	}
	return false
}
