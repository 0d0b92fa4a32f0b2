package settle

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// geoPolicy is a valid policy file; Read hashes it without decoding.
const geoPolicy = "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec: {service: geo-service}\n"

// TestGate is the rule on its own: when a look at the directory may be
// applied, and how long until it may be when not.
func TestGate(t *testing.T) {
	const settle, grace = 200 * time.Millisecond, 3 * time.Second
	snap := func(id string, sizes map[string]int) Snapshot {
		return Snapshot{sum: sha256.Sum256([]byte(id)), sizes: sizes}
	}
	var (
		full      = snap("full", map[string]int{"p.yaml": 300})
		other     = snap("other", map[string]int{"p.yaml": 120})
		another   = snap("another", map[string]int{"p.yaml": 130})
		broken    = snap("broken", map[string]int{"p.yaml": 40})
		empty     = snap("empty", map[string]int{"p.yaml": 0})
		gone      = snap("gone", map[string]int{})
		emptyPlus = snap("empty plus", map[string]int{"p.yaml": 0, "q.yaml": 0})
	)
	type load struct {
		s    Snapshot
		good bool
	}
	type look struct {
		at    time.Duration
		s     Snapshot
		apply bool
		wait  time.Duration
		late  time.Duration // after the look was due
	}
	for _, c := range []struct {
		name  string
		loads []load // applied before the looks
		looks []look
	}{
		{"unchanged: nothing to do", nil, []look{{0, full, false, 0, 0}}},
		{"a change is applied once unchanged for Settle", nil, []look{
			{0, other, false, settle, 0}, {150 * time.Millisecond, other, false, 50 * time.Millisecond, 0}, {settle, other, true, 0, 0}}},
		{"a change that changes again starts over", nil, []look{
			{0, other, false, settle, 0}, {150 * time.Millisecond, another, false, settle, 0}, {350 * time.Millisecond, another, true, 0, 0}}},
		{"changed back before it settled: nothing to apply", nil, []look{
			{0, other, false, settle, 0}, {100 * time.Millisecond, full, false, 0, 0}, {time.Second, full, false, 0, 0}}},
		{"an emptied file waits EmptyGrace", nil, []look{
			{0, empty, false, grace, 0}, {settle, empty, false, grace - settle, 0}, {2 * time.Second, empty, false, time.Second, 0}, {grace, empty, true, 0, 0}}},
		{"emptied, then written: the content settles as usual", nil, []look{
			{0, empty, false, grace, 0}, {time.Second, other, false, settle, 0}, {time.Second + settle, other, true, 0, 0}}},
		{"a removed file waits Settle only", nil, []look{{0, gone, false, settle, 0}, {settle, gone, true, 0, 0}}},
		{"an error load keeps the sizes of the last good one", []load{{full, true}, {broken, false}}, []look{{0, empty, false, grace, 0}}},
		{"a file empty in the last good load is not held", []load{{empty, true}}, []look{{0, emptyPlus, false, settle, 0}, {settle, emptyPlus, true, 0, 0}}},
		{"a late look puts the change off by Settle", nil, []look{
			{0, other, false, settle, 0}, {400 * time.Millisecond, other, false, settle, 200 * time.Millisecond},
			{500 * time.Millisecond, other, false, 100 * time.Millisecond, 0}, {600 * time.Millisecond, other, true, 0, 0}}},
		{"a look late by Settle/2 or less counts", nil, []look{{0, other, false, settle, 0}, {300 * time.Millisecond, other, true, 0, settle / 2}}},
		{"late looks put a change off 3 times at most", nil, []look{
			{0, other, false, settle, 0},
			{time.Second, other, false, settle, time.Second}, {2 * time.Second, other, false, settle, time.Second},
			{3 * time.Second, other, false, settle, time.Second}, {4 * time.Second, other, true, 0, time.Second}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := &Gate{Settle: settle, EmptyGrace: grace}
			if c.loads == nil {
				c.loads = []load{{full, true}}
			}
			for _, l := range c.loads {
				g.Loaded(l.s, l.good)
			}
			t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
			for i, l := range c.looks {
				now := t0.Add(l.at)
				apply, wait := g.Decide(l.s, now, now.Add(-l.late))
				if apply != l.apply || wait != l.wait {
					t.Fatalf("look %d at +%v: apply %v, wait %v; want %v, %v", i, l.at, apply, wait, l.apply, l.wait)
				}
			}
		})
	}
}

// TestRelevant: which events may change what a load reads, and so
// count towards a look at the directory.
func TestRelevant(t *testing.T) {
	const dir = "/etc/minimesh/policies"
	g := &Gate{through: map[string]bool{"live": true}}
	for _, c := range []struct {
		name string
		want bool
	}{
		{dir, true},       // the directory itself: removed, renamed
		{dir + "/", true}, // as some backends name it
		{"", true},        // no name: an unknown change
		{dir + "/geo.yaml", true},
		{dir + "/GEO.YML", true},
		{dir + "/geo.json", true},
		{dir + "/..data", true}, // a ConfigMap volume's swap
		{dir + "/..data_tmp", true},
		{dir + "/..2026_12_06_10_00_00.000000001", true},
		{dir + "/live", true}, // a policy file's symlink goes through it
		{dir + "/app.log", false},
		{dir + "/.geo.yaml.swp", false},
		{dir + "/geo.yaml~", false},
		{dir + "/4913", false}, // vim's probe of the directory
		{dir + "/README.md", false},
	} {
		if got := g.Relevant(dir, c.name); got != c.want {
			t.Errorf("relevant(%q) = %v, want %v", c.name, got, c.want)
		}
	}
	// A policy symlink that leaves dir: any name may be its change.
	g.anyName = true
	for _, name := range []string{dir + "/app.log", dir + "/.geo.yaml.swp", dir + "/README.md"} {
		if !g.Relevant(dir, name) {
			t.Errorf("with a symlink out of dir: relevant(%q) = false, want true", name)
		}
	}
}

// TestReadThrough: which entries of the directory Read records as gone
// through by its policy files' symlinks, whose events then count, and
// when it gives up and counts every event. Before, an absolute target
// was not followed at all: the rename of the directory it went through
// waited for the resync.
func TestReadThrough(t *testing.T) {
	for _, c := range []struct {
		name string
		// link is the target of p/geo.yaml, with {dir} for the absolute
		// path of p, {real} for that of the directory p links to, {out}
		// for a directory beside p; "" for a plain file.
		link    string
		viaLink bool   // the watcher is given p as a symlink to real
		chdir   bool   // the watcher is given p relative to the working directory
		through string // the entry recorded; "" none
		anyName bool
	}{
		{"a plain file", "", false, false, "", false},
		{"relative", "live/geo.yaml", false, false, "live", false},
		{"relative, through a file", "live", false, false, "live", false},
		{"a ConfigMap volume's ..data", "..data/geo.yaml", false, false, "..data", false},
		{"absolute, inside", "{dir}/live/geo.yaml", false, false, "live", false},
		{"absolute, not clean", "{dir}//live/./geo.yaml", false, false, "live", false},
		{"absolute, dir given relative", "{dir}/live/geo.yaml", false, true, "live", false},
		{"absolute by the real path of a linked dir", "{real}/live/geo.yaml", true, false, "live", false},
		{"absolute by the link of a linked dir", "{dir}/live/geo.yaml", true, false, "live", false},
		{"absolute, outside", "{out}/geo.yaml", false, false, "", true},
		{"relative, outside", "../out/geo.yaml", false, false, "", true},
		{"relative, out and back in", "../p/live/geo.yaml", false, false, "", true},
		{"the directory itself", "{dir}", false, false, "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			real := filepath.Join(root, "p")
			if c.viaLink {
				real = filepath.Join(root, "real")
			}
			for _, d := range []string{filepath.Join(real, "v1"), filepath.Join(root, "out")} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(root, "p")
			if c.viaLink {
				if err := os.Symlink(real, dir); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range []string{filepath.Join(real, "v1", "geo.yaml"), filepath.Join(root, "out", "geo.yaml")} {
				if err := os.WriteFile(f, []byte(geoPolicy), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Symlink("v1", filepath.Join(real, "live")); err != nil {
				t.Fatal(err)
			}
			geo := filepath.Join(real, "geo.yaml")
			if c.link == "" {
				if err := os.WriteFile(geo, []byte(geoPolicy), 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				target := strings.NewReplacer("{dir}", dir, "{real}", real, "{out}", filepath.Join(root, "out")).Replace(c.link)
				if err := os.Symlink(target, geo); err != nil {
					t.Fatal(err)
				}
			}
			if c.chdir {
				t.Chdir(root)
				dir = "p"
			}
			s := Read(dir)
			var got []string
			for e := range s.through {
				got = append(got, e)
			}
			want := []string{}
			if c.through != "" {
				want = []string{c.through}
			}
			if len(got) != len(want) || (len(got) == 1 && got[0] != want[0]) || s.anyName != c.anyName {
				t.Errorf("through %q, anyName %v; want %q, %v", got, s.anyName, want, c.anyName)
			}
		})
	}
}

// TestReadSame: what Read holds (the sum that spares a decode) changes
// with whatever a load reads, a ConfigMap's swap of ..data under its
// symlinked keys included, and not with what no load reads.
func TestReadSame(t *testing.T) {
	doc := func(svc string) string {
		return "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: " + svc + "}\nspec: {service: " + svc + "}\n"
	}
	// A ConfigMap volume: a.yaml -> ..data/a.yaml, ..data -> ..v1.
	volume := func(t *testing.T, dir string) {
		os.Mkdir(filepath.Join(dir, "..v1"), 0o755)
		write(t, dir, "..v1/a.yaml", doc("a"))
		os.Symlink("..v1", filepath.Join(dir, "..data"))
		os.Symlink("..data/a.yaml", filepath.Join(dir, "a.yaml"))
		write(t, dir, "b.yaml", doc("b"))
	}
	tests := []struct {
		name    string
		change  func(t *testing.T, dir string)
		changed bool
	}{
		{"a file rewritten", func(t *testing.T, dir string) { write(t, dir, "b.yaml", doc("c")) }, true},
		{"a file added", func(t *testing.T, dir string) { write(t, dir, "c.json", "{}") }, true},
		{"a file removed", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "b.yaml")) }, true},
		{"a file renamed", func(t *testing.T, dir string) {
			os.Rename(filepath.Join(dir, "b.yaml"), filepath.Join(dir, "c.yaml"))
		}, true},
		{"..data swapped", func(t *testing.T, dir string) {
			os.Mkdir(filepath.Join(dir, "..v2"), 0o755)
			write(t, dir, "..v2/a.yaml", doc("z"))
			os.Symlink("..v2", filepath.Join(dir, "..tmp"))
			os.Rename(filepath.Join(dir, "..tmp"), filepath.Join(dir, "..data"))
		}, true},
		{"the directory gone", func(t *testing.T, dir string) { os.RemoveAll(dir) }, true},
		{"a README", func(t *testing.T, dir string) { write(t, dir, "README", doc("r")) }, false},
		{"a hidden file", func(t *testing.T, dir string) { write(t, dir, ".b.yaml.swp", "x") }, false},
		{"a new mtime", func(t *testing.T, dir string) {
			later := time.Now().Add(time.Hour)
			os.Chtimes(filepath.Join(dir, "b.yaml"), later, later)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "p")
			os.Mkdir(dir, 0o755)
			volume(t, dir)
			before := Read(dir)
			if !Read(dir).Same(before) {
				t.Fatal("two reads of unchanged files differ")
			}
			tt.change(t, dir)
			if changed := !Read(dir).Same(before); changed != tt.changed {
				t.Errorf("sum changed: %v, want %v", changed, tt.changed)
			}
		})
	}
}

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGateDefaults: a Gate without figures holds a change for 200ms, and
// an emptied file for 5s, the figures docs/operations.md gives, which
// both the sidecar and the controller take when given none.
func TestGateDefaults(t *testing.T) {
	full := Snapshot{sum: sha256.Sum256([]byte("full")), sizes: map[string]int{"p.yaml": 300}}
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name  string
		sizes map[string]int
		wait  time.Duration
	}{
		{"changed", map[string]int{"p.yaml": 120}, 200 * time.Millisecond},
		{"emptied", map[string]int{"p.yaml": 0}, 5 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			var g Gate
			g.Loaded(full, true)
			s := Snapshot{sum: sha256.Sum256([]byte(c.name)), sizes: c.sizes}
			if load, wait := g.Decide(s, t0, t0); load || wait != c.wait {
				t.Fatalf("first look: load %v, wait %v; want false, %v", load, wait, c.wait)
			}
			at := t0.Add(c.wait)
			if load, wait := g.Decide(s, at, at); !load || wait != 0 {
				t.Fatalf("look at +%v: load %v, wait %v; want true, 0", c.wait, load, wait)
			}
		})
	}
}
