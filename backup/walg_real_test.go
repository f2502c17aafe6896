package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"pgnode/ci/testenv"
	"pgnode/internal/command"
)

// TestRealWALG runs the real wal-g (from PATH) against real MinIO and PostgreSQL 15:
// backup of a pgbench database, PITR to a recorded timestamp, restore checks on a good and
// a corrupted backup, a replica restored from S3 that then streams, retention and bad keys.
// Without wal-g on PATH it prints one SKIP line.
func TestRealWALG(t *testing.T) {
	walgBin, err := exec.LookPath("wal-g")
	if err != nil {
		t.Skip("SKIP: wal-g not on PATH; the real WAL-G tests (PITR, verify, replica from S3) need a wal-g binary (docs/backup.md)")
	}
	walgBin, _ = filepath.Abs(walgBin)
	captureLogs(t)
	mc := testenv.StartMinio(t, ports)
	consul := testenv.StartConsul(t, ports)
	cfg := minioConfig(t, mc, "pgnode-real", walgBin)
	cfg.KeepFull = 5

	// The primary archives WAL with wal-g (the archive_command Patroni would render).
	primary := startPG(t, "")
	node := primary.node("node-a")
	node.ConsulAddr = consul.Addr
	node.WalgConfigRW = filepath.Join(primary.dir, "walg.json")
	node.WalgConfigRO = filepath.Join(primary.dir, "walg-ro.json")
	writeWalgConfigs(t, cfg, node)
	ps := cfg.Patroni(node, false)
	primary.appendConf(fmt.Sprintf("archive_mode = on\narchive_command = '%s'\narchive_timeout = %s\n",
		ps.Parameters["archive_command"], ps.Parameters["archive_timeout"]))
	primary.stop()
	primary.start()
	var role atomic.Value
	role.Store("master")
	node.PatroniURL = patroniStub(t, &role).URL

	ctx := context.Background()
	cli := func(args ...string) (int, string) {
		var out, errb strings.Builder
		rc := CLI(ctx, cfg, node, args, &out, &errb)
		return rc, out.String() + errb.String()
	}
	if err := primary.run("pgbench", "-i", "-s", "2", "-q", "-h", primary.dir, "-p", fmt.Sprint(primary.port), "-U", "postgres", "postgres"); err != nil {
		t.Fatalf("pgbench -i: %v", err)
	}
	if rc, out := cli("push"); rc != 0 {
		t.Fatalf("backup push: %s", out)
	}
	if rc, out := cli("list"); rc != 0 || !strings.Contains(out, "base_") {
		t.Fatalf("backup list: rc %d %s", rc, out)
	}
	if rc, out := cli("wal-show"); rc != 0 {
		t.Fatalf("wal-show: rc %d %s", rc, out)
	}
	if rc, out := cli("check"); rc != 0 || strings.Count(out, "OK") != 2 {
		t.Fatalf("check: rc %d %s", rc, out)
	}

	// Rows 1..100, a recorded time, rows 101..200.
	primary.psql("postgres", "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
	for i := 1; i <= 100; i++ {
		primary.psql("postgres", fmt.Sprintf("INSERT INTO marks (id) VALUES (%d)", i))
	}
	time.Sleep(1100 * time.Millisecond)
	target := primary.psql("postgres", "SELECT clock_timestamp()::text")
	if _, err := ParseTargetTime(target); err != nil {
		t.Fatalf("PostgreSQL's timestamp %q is not accepted as PATRONI_RECOVERY_TARGET_TIME: %v", target, err)
	}
	time.Sleep(1100 * time.Millisecond)
	for i := 101; i <= 200; i++ {
		primary.psql("postgres", fmt.Sprintf("INSERT INTO marks (id) VALUES (%d)", i))
	}
	waitArchived(t, primary)

	t.Run("PITR to a timestamp restores exactly the rows committed before it", func(t *testing.T) {
		c := cfg
		c.RecoveryTargetTime = target
		bs := c.Patroni(node, true)
		restored := restoreWithBootstrap(t, primary, node, bs)
		if got := restored.psql("postgres", "SELECT count(*) || ' ' || max(id) FROM marks"); got != "100 100" {
			t.Fatalf("rows after PITR to %s: %s, want 100 rows up to id 100", target, got)
		}
		if got := restored.psql("postgres", "SELECT count(*) FROM pgbench_accounts"); got != "200000" {
			t.Fatalf("pgbench_accounts rows %s", got)
		}
	})

	verifyDir := testenv.PostgresTempDir(t)
	cfg.VerifyDir = verifyDir
	cfg.VerifyPort = ports.Next(t)
	t.Run("verify passes on a good backup", func(t *testing.T) {
		rc, out := cli("verify")
		if rc != 0 || !strings.HasPrefix(out, "PASS") {
			t.Fatalf("verify: rc %d %s", rc, out)
		}
		if left, _ := filepath.Glob(filepath.Join(verifyDir, "check-*")); len(left) != 0 {
			t.Fatalf("scratch left behind: %v", left)
		}
	})

	t.Run("verify fails on a corrupted backup and names the database", func(t *testing.T) {
		primary.psql("postgres", "CREATE DATABASE corruptme")
		primary.psql("corruptme", "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g; CREATE INDEX t_v ON t (v); CHECKPOINT")
		rel := primary.psql("corruptme", "SELECT pg_relation_filepath('t_v')")
		primary.stop()
		f, err := os.OpenFile(filepath.Join(primary.data, rel), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		garbage := []byte(strings.Repeat("\xde\xad\xbe\xef", 1024))
		if _, err := f.WriteAt(garbage, 3*8192+512); err != nil {
			t.Fatal(err)
		}
		f.Close()
		primary.start()
		if rc, out := cli("push"); rc != 0 {
			t.Fatalf("backup push: %s", out)
		}
		rc, out := cli("verify")
		if rc != 1 || !strings.HasPrefix(out, "FAIL") || !strings.Contains(out, "database corruptme") {
			t.Fatalf("verify of a corrupted backup: rc %d %s", rc, out)
		}
		// Repair the source for what follows.
		primary.psql("corruptme", "REINDEX INDEX t_v")
	})

	t.Run("a replica restored from S3 streams from the leader", func(t *testing.T) {
		if rc, out := cli("push"); rc != 0 {
			t.Fatalf("backup push: %s", out)
		}
		ps := cfg.Patroni(node, false)
		replica := &pgServer{t: t, bin: primary.bin, dir: primary.dir, port: ports.Next(t), cred: primary.cred}
		replica.data = filepath.Join(primary.dir, "replica")
		replica.logPath = filepath.Join(primary.dir, "replica.log")
		mkPGDir(t, replica.data, primary.cred)
		cmdline := strings.ReplaceAll(ps.ReplicaMethodConfs["walg"]["command"].(string), node.DataDir, replica.data)
		runAsPostgres(t, cmdline)
		writeRestoredConf(t, replica, map[string]string{
			"restore_command":  ps.RestoreCommand,
			"primary_conninfo": fmt.Sprintf("host=%s port=%d user=postgres application_name=replica", primary.dir, primary.port),
		}, "standby.signal")
		replica.start()
		t.Cleanup(replica.stop)
		primary.psql("postgres", "INSERT INTO marks (id) VALUES (1000)")
		testenv.WaitFor(t, 60*time.Second, "replica streaming and caught up", func() error {
			if s := replica.psql("postgres", "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')"); s != "streaming" {
				return fmt.Errorf("wal receiver %s", s)
			}
			if n := replica.psql("postgres", "SELECT count(*) FROM marks WHERE id = 1000"); n != "1" {
				return errors.New("row 1000 not replicated yet")
			}
			return nil
		})
	})

	t.Run("retention keeps exactly KEEP_FULL backups", func(t *testing.T) {
		c := cfg
		c.KeepFull = 1
		var out, errb strings.Builder
		if rc := CLI(ctx, c, node, []string{"push"}, &out, &errb); rc != 0 {
			t.Fatalf("push: %s", errb.String())
		}
		w := &walgRunner{cfg: &c, node: node}
		bs, err := w.list(ctx, ReadOnly)
		if err != nil || len(bs) != 1 {
			t.Fatalf("after retention 1: %d backups, %v", len(bs), err)
		}
	})

	t.Run("wrong secret key: backup fails clearly, nothing is deleted", func(t *testing.T) {
		bad := cfg
		bad.S3SecretKeyRW = "definitely-wrong-secret"
		n := node
		n.WalgConfigRW = filepath.Join(primary.dir, "walg-bad.json")
		n.WalgConfigRO = ""
		writeOne(t, bad, n, ReadWrite, n.WalgConfigRW)
		m := NewManager(bad, n)
		m.leaderCheck = func(context.Context) (bool, string, error) { return true, "", nil }
		m.RunScheduled(ctx, time.Time{})
		st := m.Status()
		if st.ConsecutiveFailures != 1 || !strings.Contains(st.LastError, "backup-push") || !strings.Contains(st.LastError, "S3_SECRET_KEY_RW") || st.LastSuccess.After(time.Now().Add(-time.Minute)) {
			t.Fatalf("status %+v", st)
		}
		w := &walgRunner{cfg: &cfg, node: node}
		if bs, err := w.list(ctx, ReadOnly); err != nil || len(bs) != 1 {
			t.Fatalf("backups after a failed push: %d, %v", len(bs), err)
		}
	})
}

func writeOne(t *testing.T, cfg Config, n Node, keys Keys, path string) {
	t.Helper()
	b, err := cfg.WalgConfig(keys, WalgParams{Prefix: cfg.Prefix(n.Scope, n.Major), PGHost: n.PGHost, PGPort: n.PGPort, PGUser: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if n.Credential != nil {
		_ = os.Chown(path, int(n.Credential.Uid), int(n.Credential.Gid))
	}
}

// waitArchived switches WAL and waits until the segment is in S3.
func waitArchived(t *testing.T, p *pgServer) {
	t.Helper()
	seg := p.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
	testenv.WaitFor(t, 60*time.Second, "WAL archived", func() error {
		last := p.psql("postgres", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if last < seg {
			return fmt.Errorf("last archived %q, want %s", last, seg)
		}
		return nil
	})
}

func mkPGDir(t *testing.T, dir string, cred *syscall.Credential) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
}

func runAsPostgres(t *testing.T, cmdline string) {
	t.Helper()
	f := strings.Fields(cmdline)
	if err := command.Run(context.Background(), command.Spec{Path: f[0], Args: f[1:], Name: "wal-g", Credential: postgresCred(t)}); err != nil {
		t.Fatalf("%s: %v", cmdline, err)
	}
}

// writeRestoredConf replaces the restored base backup's configuration (the old node's port,
// archive_command …) as Patroni does, with archive_mode off and the given recovery settings.
func writeRestoredConf(t *testing.T, p *pgServer, recovery map[string]string, signal string) {
	t.Helper()
	for _, f := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		_ = os.Rename(filepath.Join(p.data, f), filepath.Join(p.data, f+".restored"))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "port = %d\nunix_socket_directories = '%s'\nlisten_addresses = ''\narchive_mode = off\nfsync = off\nhba_file = '%s'\n",
		p.port, p.dir, filepath.Join(p.data, "pg_hba.conf"))
	for k, v := range recovery {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(v))
	}
	uid, gid := int(p.cred.Uid), int(p.cred.Gid)
	for name, content := range map[string]string{"postgresql.conf": b.String(), "postgresql.auto.conf": "", signal: ""} {
		path := filepath.Join(p.data, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_ = os.Chown(path, uid, gid)
	}
}

// restoreWithBootstrap runs the walg bootstrap Patroni would run (the rendered command, then
// recovery with the rendered recovery_conf) into a new data directory and waits until the
// restored server is promoted.
func restoreWithBootstrap(t *testing.T, src *pgServer, node Node, s PatroniSettings) *pgServer {
	t.Helper()
	r := &pgServer{t: t, bin: src.bin, dir: src.dir, port: ports.Next(t), cred: src.cred}
	r.data = filepath.Join(src.dir, "restored-"+strconv.Itoa(r.port))
	r.logPath = r.data + ".log"
	runAsPostgres(t, strings.ReplaceAll(s.BootstrapConf["command"].(string), node.DataDir, r.data))
	rec := map[string]string{}
	for k, v := range s.BootstrapConf["recovery_conf"].(map[string]any) {
		rec[k] = fmt.Sprint(v)
	}
	writeRestoredConf(t, r, rec, "recovery.signal")
	r.start()
	t.Cleanup(r.stop)
	testenv.WaitFor(t, 120*time.Second, "restored server promoted", func() error {
		if v := r.psql("postgres", "SELECT pg_is_in_recovery()"); v != "f" {
			return errors.New("still in recovery")
		}
		return nil
	})
	return r
}
