package chart_test

import (
	"context"
	"encoding/base64"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/wellknown"
)

// TestCheckSidecarThatNeverStarts: a native sidecar that crash-loops, or
// whose image is never pulled, holds its pod in Pending, where `minimesh
// check` once looked no further and passed. It fails now, naming the pod,
// the container and the reason, with the command that shows the log. A
// pending pod still being created passes. No kubelet runs here: the pod's
// status is written as the kubelet writes it, through UpdateStatus.
func TestCheckSidecarThatNeverStarts(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	ctrl := controller.Start(t, c.Kubeconfig, controller.Options{})
	install(t, c, "--set", "webhook.url="+ctrl.URL, "--set", "webhook.caBundle="+base64.StdEncoding.EncodeToString(ctrl.CA.PEM))
	defer uninstall(t, c)

	// The pod as the injector writes it, without waiting for the API
	// server to pick the webhook up.
	c.CreateNamespace(t, "stuck", nil)
	p := pod("web", map[string]string{wellknown.AnnotationStatus: wellknown.StatusInjected})
	always := corev1.ContainerRestartPolicyAlways
	const image = "minimesh.local/minimesh:e2e"
	p.Spec.InitContainers = []corev1.Container{{Name: wellknown.ProxyContainerName, Image: image,
		RestartPolicy: &always, Command: []string{"/minimesh-proxy"}, Args: []string{"run"}}}
	p, err := c.Client.CoreV1().Pods("stuck").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	waiting := func(reason, msg string) corev1.ContainerState {
		return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	}
	for _, tt := range []struct {
		name   string
		status corev1.ContainerStatus
		code   int
		want   string
	}{
		{"being created", corev1.ContainerStatus{State: waiting("PodInitializing", "")}, 0, "✔ sidecars are ready"},
		{"crash-looping", corev1.ContainerStatus{State: waiting("CrashLoopBackOff", "back-off 40s restarting failed container=minimesh-proxy"),
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error"}}, RestartCount: 3},
			1, "✖ sidecars are ready: 1 sidecars not ready: stuck/web (minimesh-proxy: CrashLoopBackOff, last exit 2, 3 restarts)"},
		{"image not pulled", corev1.ContainerStatus{State: waiting("ImagePullBackOff", `Back-off pulling image "`+image+`"`)},
			1, `✖ sidecars are ready: 1 sidecars not ready: stuck/web (minimesh-proxy: ImagePullBackOff: Back-off pulling image "` + image + `")`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.status
			s.Name, s.Image = wellknown.ProxyContainerName, image
			p.Status = corev1.PodStatus{Phase: corev1.PodPending, InitContainerStatuses: []corev1.ContainerStatus{s},
				ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Image: p.Spec.Containers[0].Image, State: waiting("PodInitializing", "")}}}
			if p, err = c.Client.CoreV1().Pods("stuck").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			code, out := check(t, c)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			wantCheck(t, out, tt.want)
			if tt.code != 0 {
				wantCheck(t, out, "logs POD -c CONTAINER --previous")
			}
		})
	}
}
