package kube

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestCluster checks what the other e2e tests rely on: version 1.37, Pod
// Security admission enforcing, and a kubeconfig that kubectl can use.
func TestCluster(t *testing.T) {
	c := Start(t)
	ctx := context.Background()

	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Major != "1" || v.Minor != "37" || !strings.HasPrefix(v.GitVersion, "v1.37.") {
		t.Fatalf("server version %s (%s.%s), want v1.37.x", v.GitVersion, v.Major, v.Minor)
	}

	c.CreateNamespace(t, "locked", map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	good := RestrictedPod("good", nil)
	if _, err := c.Client.CoreV1().Pods("locked").Create(ctx, good, metav1.CreateOptions{}); err != nil {
		t.Fatalf("a restricted pod was refused: %v", err)
	}
	bad := good.DeepCopy()
	bad.Name = "bad"
	yes := true
	bad.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: &yes}
	_, err = c.Client.CoreV1().Pods("locked").Create(ctx, bad, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) {
		t.Fatalf("a privileged pod in a restricted namespace: %v, want a PodSecurity refusal", err)
	}

	out, err := c.Kubectl(ctx, "get", "namespace", "locked", "-o", "name")
	if err != nil || strings.TrimSpace(out) != "namespace/locked" {
		t.Fatalf("kubectl get namespace: %q, %v", out, err)
	}
}
