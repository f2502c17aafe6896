package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"pgnode/ci/testenv"
	"pgnode/internal/envspec"
)

const (
	oldMajor = 13
	newMajor = 15
)

// helperSpec is what the re-executed test binary (the "agent" of the fault-injection
// tests) receives in PGNODE_UPGRADE_HELPER.
type helperSpec struct {
	Node      Node
	Passwords [3]string
	Config    Config
	KillAt    string
}

func TestMain(m *testing.M) {
	if spec := os.Getenv("PGNODE_UPGRADE_HELPER"); spec != "" {
		os.Exit(runHelper(spec))
	}
	code := m.Run()
	if fixture.root != "" {
		_ = os.RemoveAll(fixture.root)
	}
	os.Exit(code)
}

// runHelper runs Prepare like the agent would, killing itself and everything it started
// with SIGKILL (as a container's death does) when the step KillAt is reached.
func runHelper(raw string) int {
	var hs helperSpec
	if err := json.Unmarshal([]byte(raw), &hs); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 3
	}
	n := hs.Node
	n.SuperPassword, n.ReplicationPassword, n.RewindPassword = envspec.Secret(hs.Passwords[0]), envspec.Secret(hs.Passwords[1]), envspec.Secret(hs.Passwords[2])
	var once sync.Once
	die := func(why string) {
		once.Do(func() {
			fmt.Fprintln(os.Stderr, "helper: kill -9 at", why)
			killEverything(n)
		})
	}
	testHook = func(step string) {
		if step != hs.KillAt {
			return
		}
		if step == StepTransfer {
			// Die while pg_upgrade runs: as soon as it has disabled the old cluster
			// (link mode) or has started copying.
			go func() {
				ctl := filepath.Join(n.DataDir, "global", "pg_control.old")
				for {
					if exists(ctl) {
						die("pg_upgrade (pg_control.old present)")
					}
					time.Sleep(time.Millisecond)
				}
			}()
			return
		}
		die(step)
	}
	_, err := Prepare(context.Background(), hs.Config, n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: Prepare:", err)
		return 1
	}
	if hs.KillAt != "" {
		fmt.Fprintln(os.Stderr, "helper: finished without reaching", hs.KillAt)
		return 4
	}
	return 0
}

// killEverything SIGKILLs this process first (so none of its code runs after the "crash"),
// then its children (pg_upgrade, pg_ctl… in their own process groups) and every postmaster
// running on the volume, as a container's death does. A shell does the killing.
func killEverything(n Node) {
	self := os.Getpid()
	targets := []string{}
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndex(s, ")")+1:])
		if len(fields) > 2 {
			parent[pid], _ = strconv.Atoi(fields[1])
		}
	}
	for pid := range parent {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == self {
				targets = append(targets, strconv.Itoa(pid))
				break
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(n.root(), "*", "postmaster.pid"))
	for _, f := range dirs {
		if b, err := os.ReadFile(f); err == nil {
			if pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil && pid > 1 {
				targets = append(targets, strconv.Itoa(pid))
			}
		}
	}
	script := fmt.Sprintf("kill -9 %d; for p in %s; do kill -9 $p 2>/dev/null; done; true", self, strings.Join(targets, " "))
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	_ = cmd.Start()
	select {}
}

// fixture is one PostgreSQL 13 cluster with PostGIS data, built once and copied per test.
var fixture struct {
	once  sync.Once
	root  string
	sysid string
	fp    string
	err   error
}

// fingerprint is row counts and content checksums (geometries included) of the test data.
func fingerprint(t *testing.T, p *testenv.PG) string {
	t.Helper()
	a := p.SQL(t, "postgres", "SELECT count(*) || '/' || md5(string_agg(id || ':' || name || ':' || ST_AsEWKT(geom), ',' ORDER BY id)) FROM pts")
	b := p.SQL(t, "app2", "SELECT count(*) || '/' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t")
	return a + " " + b
}

func btreeCheck(t *testing.T, p *testenv.PG) {
	t.Helper()
	for _, db := range []string{"postgres", "app2"} {
		n := p.SQL(t, db, `SELECT count(bt_index_check(c.oid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
			JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND i.indisvalid`)
		if n == "0" {
			t.Fatalf("no btree index checked in %s", db)
		}
	}
}

func buildFixture(t *testing.T) {
	uid, gid := testenv.PostgresUser(t)
	root, err := os.MkdirTemp("", "pgnode-upgrade-fixture-")
	if err != nil {
		fixture.err = err
		return
	}
	_ = os.Chown(root, uid, gid)
	_ = os.Chmod(root, 0o755)
	fixture.root = root
	data := filepath.Join(root, "data")
	testenv.InitDB(t, oldMajor, data, "--data-checksums", "--encoding=UTF8", "--locale=C.UTF-8")
	p := testenv.StartPG(t, oldMajor, data, 0)
	p.SQL(t, "postgres", `CREATE EXTENSION postgis; CREATE EXTENSION amcheck;
		CREATE TABLE pts (id int PRIMARY KEY, name text, geom geometry(Point, 4326));
		INSERT INTO pts SELECT i, 'p' || i, ST_SetSRID(ST_MakePoint(i % 360 - 180, (i * 7) % 180 - 90), 4326) FROM generate_series(1, 20000) i;
		CREATE INDEX pts_gix ON pts USING gist (geom); CREATE INDEX pts_name ON pts (name);
`)
	p.SQL(t, "postgres", "CREATE DATABASE app2")
	p.SQL(t, "app2", `CREATE EXTENSION amcheck; CREATE TABLE t (id serial PRIMARY KEY, v text);
		INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, 5000) i`)
	btreeCheck(t, p)
	fixture.fp = fingerprint(t, p)
	p.Stop(t)
	out := testenv.MustAsPostgres(t, filepath.Join(testenv.PGBinDir(t, oldMajor), "pg_controldata"), "-D", data)
	cd, err := ParseControlData(out)
	if err != nil {
		fixture.err = err
		return
	}
	fixture.sysid = cd.SystemID
}

// oldVolume returns a fresh volume root holding a copy of the PostgreSQL 13 fixture in
// <root>/data, and the fixture's fingerprint.
func oldVolume(t *testing.T, under string) (root string) {
	t.Helper()
	testenv.PGBinDir(t, oldMajor)
	testenv.PGBinDir(t, newMajor)
	fixture.once.Do(func() { buildFixture(t) })
	if fixture.err != nil || fixture.fp == "" {
		t.Fatalf("fixture: %v", fixture.err)
	}
	if under == "" {
		root = testenv.PostgresTempDir(t)
	} else {
		root = under
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(fixture.root, "data"), filepath.Join(root, "data")).CombinedOutput(); err != nil {
		t.Fatalf("copying the fixture: %v %s", err, out)
	}
	return root
}

func testNode(t testing.TB, root string) Node {
	uid, gid := testenv.PostgresUser(t)
	return Node{
		DataDir: filepath.Join(root, "data"), Major: newMajor, UID: uid, GID: gid, Name: "n1",
		BinDir:    func(m int) string { return fmt.Sprintf("/usr/lib/postgresql/%d/bin", m) },
		SuperUser: "postgres", SuperPassword: "super-secret",
		ReplicationUser: "replicator", ReplicationPassword: "repl-secret",
		RewindUser: "rewind_user", RewindPassword: "rewind-secret",
		StatusFile: filepath.Join(t.TempDir(), "status.json"),
	}
}

// treeState is a listing of a directory tree (name, size, mode, mtime) to prove a refused
// volume was not touched.
func treeState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		fmt.Fprintf(&b, "%s %d %v %d\n", p, fi.Size(), fi.Mode(), fi.ModTime().UnixNano())
		return nil
	})
	return b.String()
}
