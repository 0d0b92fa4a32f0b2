package interception_test

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

// TestDatabasesUnchanged: a real PostgreSQL and a real Redis (Debian's) in
// another namespace, psql and redis-cli in the pod with the rules of
// minimesh-proxy init and the sidecar: both work as without a mesh. Their
// ports are in the default opaque list, so the sidecar relays them as TCP
// at once, without waiting for bytes to detect, and counts them
// (minimesh_tcp_connections_total by destination).
func TestDatabasesUnchanged(t *testing.T) {
	bin := needIPTables(t)
	const pgBin = "/usr/lib/postgresql/15/bin"
	var missing []string
	for _, p := range []string{pgBin + "/initdb", pgBin + "/postgres", "/usr/bin/psql", "/usr/bin/redis-server", "/usr/bin/redis-cli"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		missing = append(missing, "user postgres")
	}
	if len(missing) > 0 {
		proc.Unmet(t, "missing %s (make tools installs postgresql and redis-server)", strings.Join(missing, ", "))
	}
	pod, peer := newPodAndPeer(t)
	pod.minimeshInit(t, bin)
	sc := startPodSidecar(t, pod, bin, catchAll)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	host := peerV4.String()

	// PostgreSQL, as user postgres, listening on the peer's address only.
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	dir, err := os.MkdirTemp("", "minimesh-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	initdb := exec.Command(pgBin+"/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	initdb.Env = []string{"PATH=/usr/bin:/bin", "LANG=C"}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	hba, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = hba.WriteString("host all all " + podV4.String() + "/32 trust\n")
		hba.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	postgres := proc.StartT(t, "postgres", pgBin+"/postgres", []string{"-D", data,
		"-c", "listen_addresses=" + host, "-p", "5432", "-c", "unix_socket_directories=" + dir, "-c", "fsync=off"},
		proc.Options{Env: []string{"PATH=/usr/bin:/bin", "LANG=C"}, Dir: dir,
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, Start: startIn(peer.name, stop)})
	redis := proc.StartT(t, "redis-server", "/usr/bin/redis-server", []string{"--bind", host, "--port", "6379",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", "/tmp"},
		proc.Options{Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/",
			Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Start: startIn(peer.name, stop)})

	inPod := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", pod.name, "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp"}, args...)...)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// The servers take a moment to listen; the clients are what a user runs.
	until := func(name string, server *proc.Proc, want string, args ...string) {
		t.Helper()
		var out string
		err := server.WaitReady(30*time.Second, func() error {
			var err error
			if out, err = inPod(args...); err == nil && out != want {
				err = strconv.ErrSyntax
			}
			return err
		})
		if err != nil || out != want {
			t.Fatalf("%s in the pod: %q (%v), want %q\n%s's output:\n%s\nsidecar:\n%s", name, out, err, want, name, server.Output(), sc.proc.Output())
		}
	}
	until("postgres", postgres, "42", "psql", "-h", host, "-U", "postgres", "-d", "postgres", "-Atc", "select 40 + 2")
	if out, err := inPod("psql", "-h", host, "-U", "postgres", "-d", "postgres", "-Atc",
		"create table bakeries (name text); insert into bakeries values ('Karlova 4'); select name from bakeries"); err != nil || out != "CREATE TABLE\nINSERT 0 1\nKarlova 4" {
		t.Errorf("psql: a table written and read back: %q (%v)", out, err)
	}
	until("redis-server", redis, "PONG", "redis-cli", "-h", host, "-p", "6379", "ping")
	if out, err := inPod("redis-cli", "-h", host, "-p", "6379", "set", "bakery", "Karlova 4"); err != nil || out != "OK" {
		t.Errorf("redis-cli set: %q (%v)", out, err)
	}
	if out, err := inPod("redis-cli", "-h", host, "-p", "6379", "get", "bakery"); err != nil || out != "Karlova 4" {
		t.Errorf("redis-cli get: %q (%v)", out, err)
	}

	// Through the sidecar: it counted both destinations' connections.
	metrics, err := sc.admin("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{"5432", "6379"} {
		if !strings.Contains(metrics, `minimesh_tcp_connections_total{destination="`+host+":"+port+`"`) {
			t.Errorf("the sidecar counted no opaque connection to %s:%s:\n%s", host, port, grep(metrics, "minimesh_tcp_"))
		}
	}
}
