package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"pgnode/ci/testenv"
)

// runAgent runs Prepare in a child process (the test binary re-executed) that kills
// itself with SIGKILL at step killAt ("" = run to completion). It returns the child's
// stderr and whether it was killed.
func runAgent(t *testing.T, n Node, cfg Config, killAt string) (string, bool, int) {
	t.Helper()
	hs := helperSpec{Node: n, Config: cfg, KillAt: killAt,
		Passwords: [3]string{n.SuperPassword.Value(), n.ReplicationPassword.Value(), n.RewindPassword.Value()}}
	hs.Node.BinDir = nil
	raw, err := json.Marshal(hs)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// The agent's private socket directories go below a directory the test removes (a
	// killed agent cannot clean up after itself).
	cmd.Env = append(os.Environ(), "PGNODE_UPGRADE_HELPER="+string(raw), "TMPDIR="+testenv.PostgresTempDir(t))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return string(out), true, -1
		}
		return string(out), false, ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), false, 0
}

// checkNew starts the upgraded cluster with PostgreSQL 15 and compares the data with the
// fixture; pg_amcheck (heap and btree) must pass; PostGIS must report the new version.
func checkNew(t *testing.T, n Node) {
	t.Helper()
	if v, _ := os.ReadFile(filepath.Join(n.DataDir, "PG_VERSION")); strings.TrimSpace(string(v)) != "15" {
		t.Fatalf("data directory holds PostgreSQL %q, want 15", v)
	}
	p := testenv.StartPG(t, newMajor, n.DataDir, 0)
	defer p.Stop(t)
	if got := fingerprint(t, p); got != fixture.fp {
		t.Fatalf("data differs after the upgrade:\n got %s\nwant %s", got, fixture.fp)
	}
	if out, err := testenv.AsPostgres(t, filepath.Join(testenv.PGBinDir(t, newMajor), "pg_amcheck"),
		"--all", "--install-missing", "--heapallindexed", "-h", p.Sock, "-p", "5432", "-U", "postgres"); err != nil {
		t.Fatalf("pg_amcheck after the upgrade: %v\n%s", err, out)
	}
	lib := p.SQL(t, "postgres", "SELECT postgis_lib_version() || ' ' || extversion FROM pg_extension WHERE extname = 'postgis'")
	if !strings.HasPrefix(lib, "3.3") || !strings.Contains(lib, " 3.3") {
		t.Fatalf("PostGIS after the upgrade: %q, want library and extension 3.3.x", lib)
	}
	if r := p.SQL(t, "postgres", "SELECT rolreplication FROM pg_roles WHERE rolname = 'replicator'"); r != "t" {
		t.Fatalf("replicator role after the upgrade: %q", r)
	}
}

// checkOld starts the volume's cluster with PostgreSQL 13 and compares the data.
func checkOld(t *testing.T, n Node) {
	t.Helper()
	if v, _ := os.ReadFile(filepath.Join(n.DataDir, "PG_VERSION")); strings.TrimSpace(string(v)) != "13" {
		t.Fatalf("data directory holds PostgreSQL %q, want 13", v)
	}
	p := testenv.StartPG(t, oldMajor, n.DataDir, 0)
	defer p.Stop(t)
	if got := fingerprint(t, p); got != fixture.fp {
		t.Fatalf("old data differs:\n got %s\nwant %s", got, fixture.fp)
	}
	btreeCheck(t, p)
}

// TestUpgradePostGIS upgrades PostgreSQL 13 → 15 (real binaries from Debian: bullseye's
// postgresql-13 + postgis 3.1, bookworm's postgresql-15 + postgis 3.3) with PostGIS data in
// link and copy mode, with a real Consul holding the old cluster's Patroni keys.
func TestUpgradePostGIS(t *testing.T) {
	consul := testenv.StartConsul(t, ports)
	for _, mode := range []string{"link", "copy"} {
		t.Run(mode, func(t *testing.T) {
			root := oldVolume(t, "")
			n := testNode(t, root)
			n.ConsulAddr, n.Scope = consul.Addr, "upg-"+mode
			cli, err := n.consul()
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]string{"initialize": fixture.sysid, "config": "{}", "members/n1": "{}"} {
				if _, err := cli.KV().Put(&kvPair{Key: n.prefix() + k, Value: []byte(v)}, nil); err != nil {
					t.Fatal(err)
				}
			}
			out, err := Prepare(context.Background(), Config{AutoUpgrade: true, Mode: mode, Jobs: 2}, n)
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if !out.Upgraded || out.FromMajor != 13 || out.State != StateOlder || !out.RequestFullBackup || out.SystemID == "" || out.SystemID == fixture.sysid {
				t.Fatalf("outcome: %+v", out)
			}
			keys, _, err := cli.KV().Keys(n.prefix(), "", nil)
			if err != nil || len(keys) != 1 || keys[0] != n.prefix()+upgradedKey {
				t.Fatalf("Consul keys of the scope after the upgrade: %v %v (want only %s)", keys, err, upgradedKey)
			}
			kv, _, _ := cli.KV().Get(n.prefix()+upgradedKey, nil)
			if kv == nil || string(kv.Value) != fixture.sysid+" "+out.SystemID+" n1" {
				t.Fatalf("%s = %v", upgradedKey, kv)
			}
			st, err := ReadStatus(n.StatusFile)
			if err != nil || st.Phase != PhasePrepared {
				t.Fatalf("status: %+v %v", st, err)
			}
			if exists(markerPath(root)) {
				t.Fatal("marker left in place after a finished upgrade")
			}
			olds, _ := filepath.Glob(filepath.Join(root, "data.pg13-*"))
			if len(olds) != 1 {
				t.Fatalf("old cluster not kept beside the new one: %v", olds)
			}
			checkNew(t, n)
			if mode == "copy" {
				// copy mode keeps a startable old cluster: roll back with the CLI.
				var so, se strings.Builder
				if code := CLI(context.Background(), Config{Mode: "copy"}, n, []string{"rollback"}, &so, &se); code != 0 {
					t.Fatalf("rollback: %d %s %s", code, so.String(), se.String())
				}
				checkOld(t, n)
			}
			// A second Prepare is a no-op for the upgraded (now adopted) cluster.
		})
	}
}

// ports is the upgrade package's port block, shared by all its tests.
var ports = testenv.NewPorts(21000)

// kvPair keeps the consul import in one file.
type kvPair = consulKV
