package check

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestSidecarsThatNeverStart: a pending pod whose sidecar (or
// minimesh-init) will not start without a change fails the check, named
// with the reason; a pending pod still being scheduled or created, or
// whose sidecar is starting, does not.
func TestSidecarsThatNeverStart(t *testing.T) {
	yes, no := true, false
	injected := map[string]string{"minimesh.io/status": "injected"}
	waiting := func(reason, msg string) corev1.ContainerState {
		return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	}
	exited := func(code int32, reason string) corev1.ContainerState {
		return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason}}
	}
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	tests := []struct {
		name   string
		phase  corev1.PodPhase
		status []corev1.ContainerStatus // the pod's init container statuses
		want   string                   // "" passes
	}{
		{"scheduled, no status yet", corev1.PodPending, nil, ""},
		{"sidecar being created", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("ContainerCreating", "")}}, ""},
		{"sidecar pulling its image", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("PodInitializing", "")}}, ""},
		{"sidecar starting, probe not yet passed", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: running, Started: &no}}, ""},
		{"sidecar crash-looping", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("CrashLoopBackOff", "back-off 40s restarting failed container=minimesh-proxy"),
				LastTerminationState: exited(2, "Error"), RestartCount: 3}},
			"1 sidecars not ready: shop/web (minimesh-proxy: CrashLoopBackOff, last exit 2, 3 restarts)"},
		{"sidecar running again between crashes", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: running, Started: &no, LastTerminationState: exited(137, "OOMKilled"), RestartCount: 1}},
			"1 sidecars not ready: shop/web (minimesh-proxy: restarted, not started since, last exit 137 OOMKilled, 1 restarts)"},
		{"sidecar exited, not yet waiting", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: exited(2, "Error"), RestartCount: 2}},
			"1 sidecars not ready: shop/web (minimesh-proxy: restarted, not started since, 2 restarts)"},
		{"image pull back-off", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("ImagePullBackOff", `Back-off pulling image "reg/mm:typo"`)}},
			`1 sidecars not ready: shop/web (minimesh-proxy: ImagePullBackOff: Back-off pulling image "reg/mm:typo")`},
		{"image pull error", corev1.PodPending, []corev1.ContainerStatus{{Name: "minimesh-proxy", State: waiting("ErrImagePull", "")}},
			"1 sidecars not ready: shop/web (minimesh-proxy: ErrImagePull)"},
		{"invalid image name", corev1.PodPending, []corev1.ContainerStatus{{Name: "minimesh-proxy", State: waiting("InvalidImageName", "")}},
			"1 sidecars not ready: shop/web (minimesh-proxy: InvalidImageName)"},
		{"config error", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("CreateContainerConfigError", `secret "x" not found`)}},
			`1 sidecars not ready: shop/web (minimesh-proxy: CreateContainerConfigError: secret "x" not found)`},
		{"init container's image not pulled", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-init", State: waiting("ImagePullBackOff", "")},
			{Name: "minimesh-proxy", State: waiting("PodInitializing", "")}},
			"1 sidecars not ready: shop/web (minimesh-init: ImagePullBackOff)"},
		{"init container crash-looping", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-init", State: waiting("CrashLoopBackOff", ""), LastTerminationState: exited(1, "Error"), RestartCount: 5},
			{Name: "minimesh-proxy", State: waiting("PodInitializing", "")}},
			"1 sidecars not ready: shop/web (minimesh-init: CrashLoopBackOff, last exit 1, 5 restarts)"},
		{"init container done after a retry", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "minimesh-init", State: exited(0, "Completed"), RestartCount: 1},
			{Name: "minimesh-proxy", State: running, Started: &no}}, ""},
		{"another init container's fault is not the sidecar's", corev1.PodPending, []corev1.ContainerStatus{
			{Name: "migrate", State: waiting("CrashLoopBackOff", ""), RestartCount: 4}}, ""},
		{"running, ready", corev1.PodRunning, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: running, Started: &yes, Ready: true}}, ""},
		{"running, sidecar crash-looping since", corev1.PodRunning, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("CrashLoopBackOff", ""), LastTerminationState: exited(2, "Error"), RestartCount: 2}},
			"1 sidecars not ready: shop/web (minimesh-proxy: CrashLoopBackOff, last exit 2, 2 restarts)"},
		{"running, not ready", corev1.PodRunning, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: running, Started: &yes}},
			"1 sidecars not ready: shop/web"},
		{"failed pod", corev1.PodFailed, []corev1.ContainerStatus{
			{Name: "minimesh-proxy", State: waiting("CrashLoopBackOff", ""), RestartCount: 4}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pod("shop", "web", injected, tt.phase, nil)
			p.Status.InitContainerStatuses = tt.status
			err := sidecarsReady([]corev1.Pod{*p})
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}
