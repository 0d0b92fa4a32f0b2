package chart_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/kube"
)

// TestRotationRollsInjector rotates tls.mode=helm's certificate as
// docs/install.md says (delete the Secret, helm upgrade --reuse-values)
// and rolls it back: each time the injector's pod template must change
// with the Secret (its checksum/tls, of the CA and certificate the
// Secret holds), so that the injector's pods are replaced onto the new
// Secret at once instead of serving the old certificate, which the
// caBundle no longer trusts, until the kubelet refreshes the volume. An
// upgrade that keeps the certificate must leave the template alone: a
// rollout nobody asked for.
func TestRotationRollsInjector(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	install(t, c)

	type state struct {
		ca, crt, checksum string
		bundles           []string
		generation        int64
	}
	read := func() state {
		t.Helper()
		s, err := c.Client.CoreV1().Secrets(release).Get(ctx, "minimesh-injector-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := c.Client.AppsV1().Deployments(release).Get(ctx, "minimesh-injector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "minimesh", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := state{ca: string(s.Data["ca.crt"]), crt: string(s.Data["tls.crt"]),
			checksum: d.Spec.Template.Annotations["checksum/tls"], generation: d.Generation}
		for _, wh := range w.Webhooks {
			st.bundles = append(st.bundles, string(wh.ClientConfig.CABundle))
		}
		if st.ca == "" || st.crt == "" || len(st.bundles) != 2 || st.bundles[0] != st.ca || st.bundles[1] != st.ca {
			t.Fatalf("the Secret's CA (%d bytes) is not both webhooks' caBundle", len(st.ca))
		}
		// The chart's checksum: of the Secret's two values as it
		// renders them, base64.
		sum := sha256.Sum256([]byte(base64.StdEncoding.EncodeToString(s.Data["ca.crt"]) + "\n" + base64.StdEncoding.EncodeToString(s.Data["tls.crt"])))
		if want := hex.EncodeToString(sum[:]); st.checksum != want {
			t.Fatalf("the injector's checksum/tls %q is not of the Secret's CA and certificate (%s)", st.checksum, want)
		}
		return st
	}
	helmOK := func(args ...string) {
		t.Helper()
		if out, err := helm(t, append(args, "--kubeconfig", c.Kubeconfig, "--namespace", release)...); err != nil {
			t.Fatalf("helm %v: %v\n%s", args, err, out)
		}
	}

	installed := read()
	helmOK("upgrade", release, chartDir, "--reuse-values") // revision 2
	if same := read(); same.ca != installed.ca || same.checksum != installed.checksum || same.generation != installed.generation {
		t.Fatalf("an upgrade with the same values changed the certificate or the injector's template (generation %d → %d)", installed.generation, same.generation)
	}

	if err := c.Client.CoreV1().Secrets(release).Delete(ctx, "minimesh-injector-tls", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	helmOK("upgrade", release, chartDir, "--reuse-values") // revision 3
	rotated := read()
	if rotated.ca == installed.ca || rotated.crt == installed.crt {
		t.Fatal("deleting the Secret and upgrading did not rotate the CA and certificate")
	}
	if rotated.checksum == installed.checksum || rotated.generation == installed.generation {
		t.Errorf("rotation: the injector's pod template did not change (generation %d), so its pods keep serving the old certificate", rotated.generation)
	}

	helmOK("rollback", release, "2")
	back := read()
	if back.ca != installed.ca || back.crt != installed.crt {
		t.Fatal("helm rollback did not bring the first CA and certificate back")
	}
	if back.checksum != installed.checksum || back.generation == rotated.generation {
		t.Errorf("rollback: the injector's pod template did not change back (generation %d), so its pods keep serving the rotated certificate", back.generation)
	}

	uninstall(t, c)
	assertNothingLeft(t, c)
}
