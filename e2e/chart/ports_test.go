package chart_test

import (
	"errors"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/wellknown"
)

// adviceField is the config field a refusal tells the user to set.
var adviceField = regexp.MustCompile(`set (proxy\.[A-Za-z]+) in the injector's config`)

// TestRefusedPortsSettable follows the injector's advice for an app port
// that is one of the sidecar's: the refusal names a field of the injection
// config, and the chart must render it from the value of the same name,
// else the advice cannot be followed by whoever installed with the chart
// (proxy.inboundPort once could not: the schema refused it). Each port of
// the config is tried (a field added later is too): the pod uses it, the
// refusal names it, `helm template --set` moves it, and the injector,
// reading the rendered config as the controller does, injects the pod with
// the sidecar on the new port.
func TestRefusedPortsSettable(t *testing.T) {
	def := injector.DefaultConfig()
	pt := reflect.TypeFor[injector.ProxyConfig]()
	pv := reflect.ValueOf(def.Proxy)
	n := 0
	for i := range pt.NumField() {
		tag := strings.Split(pt.Field(i).Tag.Get("yaml"), ",")[0]
		if !strings.HasSuffix(tag, "Port") {
			continue
		}
		n++
		port := int(pv.Field(i).Int())
		t.Run(tag, func(t *testing.T) {
			// Every port in use: the inbound one under iptables with
			// capture-inbound only.
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Annotations: map[string]string{
					wellknown.AnnotationInject:      wellknown.InjectEnabled,
					injector.AnnotationInterception: injector.InterceptionIPTables,
					"minimesh.io/capture-inbound":   "enabled",
				}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app",
					Ports: []corev1.ContainerPort{{ContainerPort: int32(port)}}}}},
			}
			_, err := injector.Inject(injector.Input{Pod: pod.DeepCopy(), Namespace: "shop"}, &def)
			var deny *injector.DenyError
			if !errors.As(err, &deny) {
				t.Fatalf("an app on the sidecar's port %d: %v, want a refusal", port, err)
			}
			m := adviceField.FindStringSubmatch(err.Error())
			if m == nil || m[1] != "proxy."+tag {
				t.Fatalf("refusal %q: want the advice to set proxy.%s", err, tag)
			}
			moved := port + 2000
			out, err := template(t, "--set", m[1]+"="+strconv.Itoa(moved))
			if err != nil {
				t.Fatalf("the advice cannot be followed with the chart: helm template --set %s=%d: %v\n%s", m[1], moved, err, out)
			}
			cm := find(docs(t, out), "ConfigMap", "minimesh-injector-config")
			if cm == nil {
				t.Fatal("no injector config")
			}
			cfg, err := injector.ParseConfig([]byte(cm["data"].(map[string]any)["config.yaml"].(string)))
			if err != nil {
				t.Fatalf("the rendered injection config does not load: %v", err)
			}
			if got := int(reflect.ValueOf(cfg.Proxy).Field(i).Int()); got != moved {
				t.Fatalf("rendered %s %d, want %d", m[1], got, moved)
			}
			res, err := injector.Inject(injector.Input{Pod: pod.DeepCopy(), Namespace: "shop"}, &cfg)
			if err != nil || !res.Injected {
				t.Fatalf("with %s=%d: %v, want the pod injected", m[1], moved, err)
			}
			for _, c := range res.Pod.Spec.InitContainers {
				if c.Name == wellknown.ProxyContainerName && !strings.Contains(strings.Join(c.Args, " "), ":"+strconv.Itoa(moved)) {
					t.Fatalf("the sidecar's args %q lack the port %d", c.Args, moved)
				}
			}
		})
	}
	if n != 3 {
		t.Fatalf("%d ports in the injection config, want outbound, admin and inbound", n)
	}
}
