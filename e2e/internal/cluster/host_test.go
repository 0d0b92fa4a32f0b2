package cluster

import "testing"

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/var/lib/kubelet/pods/a`:  `/var/lib/kubelet/pods/a`,
		`/tmp/with\040space/x`:     `/tmp/with space/x`,
		`/tmp/tab\011and\134slash`: "/tmp/tab\tand\\slash",
		`/tmp/trailing\04`:         `/tmp/trailing\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
