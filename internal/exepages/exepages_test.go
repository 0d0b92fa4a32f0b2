package exepages

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const exe = "/usr/local/bin/minimesh-proxy"

// figures are the two lines Release reads of a mapping.
func figures(anon, dirty int) string {
	return "Size:               1024 kB\nRss:                 512 kB\nPrivate_Dirty:      " + itoa(dirty) +
		" kB\nAnonymous:          " + itoa(anon) + " kB\nVmFlags: rd ex mr mw me\n"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestReleasable(t *testing.T) {
	for _, tc := range []struct {
		name, smaps string
		want        []span
	}{
		{"text and read-only data",
			"00400000-00800000 r-xp 00000000 fd:01 42     " + exe + "\n" + figures(0, 0) +
				"00800000-00a00000 r--p 00400000 fd:01 42     " + exe + "\n" + figures(0, 0),
			[]span{{0x400000, 0x800000}, {0x800000, 0xa00000}}},
		{"writable data, its own pages: kept",
			"00a00000-00a40000 rw-p 00600000 fd:01 42     " + exe + "\n" + figures(0, 0),
			nil},
		{"read-only with a page of its own (RELRO after relocation): kept",
			"00800000-00a00000 r--p 00400000 fd:01 42     " + exe + "\n" + figures(4, 0),
			nil},
		{"dirty in the page cache (a file just written), no page of its own: released",
			"00800000-00a00000 r--p 00400000 fd:01 42     " + exe + "\n" + figures(0, 512),
			[]span{{0x800000, 0xa00000}}},
		{"figures missing: kept",
			"00400000-00800000 r-xp 00000000 fd:01 42     " + exe + "\nSize: 1024 kB\n",
			nil},
		{"another file's text: kept",
			"7f0000000000-7f0000100000 r-xp 00000000 fd:01 7     /usr/lib/libc.so.6\n" + figures(0, 0),
			nil},
		{"shared mapping of the file: kept",
			"00400000-00800000 r-xs 00000000 fd:01 42     " + exe + "\n" + figures(0, 0),
			nil},
		{"anonymous and special mappings: kept",
			"c000000000-c000400000 rw-p 00000000 00:00 0 \n" + figures(1024, 1024) +
				"7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]\n" + figures(0, 0),
			nil},
		{"a path with spaces",
			"00400000-00800000 r-xp 00000000 fd:01 42     /opt/my app/minimesh-proxy\n" + figures(0, 0),
			nil}, // exe differs: kept; the next case names it
		{"the figures of one mapping do not carry over to the next",
			"00400000-00800000 r-xp 00000000 fd:01 42     " + exe + "\n" + figures(0, 0) +
				"00800000-00a00000 r--p 00400000 fd:01 42     " + exe + "\n" + "Size: 4 kB\n" +
				"00a00000-00a40000 r--p 00600000 fd:01 42     " + exe + "\nRss: 8 kB\n" +
				"00a40000-00a80000 rw-p 00640000 fd:01 42     " + exe + "\n" + figures(0, 8),
			[]span{{0x400000, 0x800000}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := releasable([]byte(tc.smaps), exe)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("releasable = %x, want %x", got, tc.want)
			}
		})
	}
	spaced := "/opt/my app/minimesh-proxy"
	got, err := releasable([]byte("00400000-00800000 r-xp 00000000 fd:01 42     "+spaced+"\n"+figures(0, 0)), spaced)
	if err != nil || !slices.Equal(got, []span{{0x400000, 0x800000}}) {
		t.Errorf("a path with spaces: %x, %v", got, err)
	}
}

func TestReleasableRefusesWhatItCannotRead(t *testing.T) {
	for _, smaps := range []string{
		"00400000 r-xp 00000000 fd:01 42 " + exe + "\n",
		"00800000-00400000 r-xp 00000000 fd:01 42 " + exe + "\n",
		"zz-00400000 r-xp 00000000 fd:01 42 " + exe + "\n",
		"00400000-00800000 r-xp\n",
		"00400000-00800000 r-xp 00000000 fd:01 42 " + exe + "\nAnonymous: many kB\n",
		"00400000-00800000 r-xp 00000000 fd:01 42 " + exe + "\nAnonymous: 4 MB\n",
	} {
		if got, err := releasable([]byte(smaps), exe); err == nil {
			t.Errorf("releasable(%q) = %x, want an error", smaps, got)
		} else if !strings.Contains(err.Error(), "smaps line ") {
			t.Errorf("error %q names no line", err)
		}
	}
}

// TestReleaseThisProcess lets go of the test binary's own start-up pages:
// its file-backed RSS falls, and the process goes on (the code it runs
// next is mapped again as it runs).
func TestReleaseThisProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Release does nothing but on Linux") // release_other.go
	}
	before := rssFile(t)
	n, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("released %d bytes of address space; RssFile %d kB -> %d kB", n, before, after)
	if n == 0 || after >= before {
		t.Errorf("released %d bytes, RssFile %d kB -> %d kB: want some let go", n, before, after)
	}
	// Everything still runs: the smaps parser again, from its pages.
	if _, err := Release(); err != nil {
		t.Fatal(err)
	}
}

func rssFile(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

func FuzzReleasable(f *testing.F) {
	f.Add([]byte("00400000-00800000 r-xp 00000000 fd:01 42     "+exe+"\n"+figures(0, 0)), exe)
	f.Add([]byte("00800000-00a00000 r--p 00400000 fd:01 42     "+exe+"\n"+figures(4, 0)), exe)
	f.Add([]byte("c000000000-c000400000 rw-p 00000000 00:00 0 \nAnonymous: 1 kB\n"), "")
	f.Fuzz(func(t *testing.T, smaps []byte, exe string) {
		spans, err := releasable(smaps, exe)
		if err != nil {
			return
		}
		for _, s := range spans {
			if s.end <= s.start {
				t.Fatalf("span %x", s)
			}
			// Every span is a mapping line of exe's, read-only.
			found := false
			for _, l := range strings.Split(string(smaps), "\n") {
				if m, err := header(l); err == nil && m.span == s && m.path == exe && (m.perms == "r-xp" || m.perms == "r--p") {
					found = true
				}
			}
			if !found {
				t.Fatalf("span %x of no read-only mapping of %q", s, exe)
			}
		}
	})
}
