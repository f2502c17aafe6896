package backups

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// TestBackupsWALG runs real WAL-G inside the pgnode containers against MinIO: WAL
// archiving, an on-demand full backup on the leader (and its refusal on a replica), PITR
// into a new cluster (PATRONI_BOOTSTRAP_METHOD=walg + PATRONI_RECOVERY_TARGET_TIME, cloned
// from the first cluster's S3 prefix) holding exactly the rows committed before the
// target, and a new replica created from S3 that streams. Needs wal-g in the image or
// PGNODE_E2E_WALG (then a throw-away derived image is built); otherwise one SKIP line.
func TestBackupsWALG(t *testing.T) {
	requireImages(t)
	img := walgImage(t)
	const scope = "e2ebk"
	c := startCluster(t, img, map[string]string{"PATRONI_SCOPE": scope}, "pg1", "pg2")
	c.p.WaitHealthy(4*time.Minute, "pg1", "pg2")
	leader := c.waitTopology(2*time.Minute, "pg1", "pg2")
	replica := other(leader)
	c.exec(leader, "postgres", `CREATE TABLE pitr (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())`)
	c.exec(leader, "postgres", `INSERT INTO pitr (id) SELECT generate_series(1, 500)`)

	t.Run("archiving", func(t *testing.T) {
		seg := c.mustQuery(leader, "postgres", "SELECT pg_walfile_name(pg_switch_wal())")[0]
		c.waitArchived(leader, seg)
		st := c.mustQuery(leader, "postgres", "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver")
		t.Logf("pg_stat_archiver: archived %s, failed %s, last %s", st[0], st[1], st[2])
	})

	var backupName string
	t.Run("push-on-leader", func(t *testing.T) {
		start := time.Now()
		out, err := c.pgnode(leader, "backup", "push")
		if err != nil {
			t.Fatalf("pgnode backup push on the leader %s: %v\n%s", leader, err, out)
		}
		t.Logf("MEASURE pgnode backup push (small database): %.1fs", time.Since(start).Seconds())
		list, err := c.pgnode(leader, "backup", "list")
		if err != nil {
			t.Fatalf("pgnode backup list: %v\n%s", err, list)
		}
		for _, f := range strings.Fields(list) {
			if strings.HasPrefix(f, "base_") {
				backupName = f
			}
		}
		if backupName == "" {
			t.Fatalf("pgnode backup list shows no backup:\n%s", list)
		}
		t.Logf("backup list:\n%s", list)
		// Observation only: the agent re-reads the backup list every 10 minutes
		// (docs/backup.md), so its metrics may not show an on-demand backup at once.
		err = testenv.Poll(t.Context(), 15*time.Second, func() error {
			text, err := c.metrics(leader)
			if err != nil {
				return err
			}
			if v := metric(text, "pgnode_backup_last_success_timestamp_seconds"); v == "" || v == "0" {
				return fmt.Errorf("pgnode_backup_last_success_timestamp_seconds %q, stale %s", v, metric(text, "pgnode_backup_stale"))
			}
			return nil
		})
		t.Logf("leader's metrics 15s after the on-demand backup: %v", errOrOK(err))
	})
	t.Run("push-on-replica-refuses", func(t *testing.T) {
		out, err := c.pgnode(replica, "backup", "push")
		if err == nil {
			t.Fatalf("pgnode backup push on the replica %s succeeded:\n%s", replica, out)
		}
		if !strings.Contains(strings.ToLower(out), "leader") {
			t.Errorf("refusal on the replica does not point at the leader:\n%s", out)
		}
		t.Logf("replica refuses: %s", strings.TrimSpace(lastLine(out)))
	})
	if backupName == "" {
		t.Fatal("no backup: the restore tests cannot run")
	}

	// Rows 501..1000 are committed before the target, 1001..1500 after it.
	c.exec(leader, "postgres", `INSERT INTO pitr (id) SELECT generate_series(501, 1000)`)
	time.Sleep(1100 * time.Millisecond)
	target := c.mustQuery(leader, "postgres", `SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'`)[0]
	time.Sleep(1500 * time.Millisecond)
	c.exec(leader, "postgres", `INSERT INTO pitr (id) SELECT generate_series(1001, 1500)`)
	seg := c.mustQuery(leader, "postgres", "SELECT pg_walfile_name(pg_switch_wal())")[0]
	c.waitArchived(leader, seg)
	if got := c.mustQuery(leader, "postgres", `SELECT count(*) FROM pitr WHERE at <= '`+target+`'::timestamptz`)[0]; got != "1000" {
		t.Fatalf("%s rows committed before the target %s on the leader, want 1000", got, target)
	}

	// Both at once: a new cluster restored to the target, and a new replica of the first
	// cluster created from S3.
	c.p.SetEnv(map[string]string{"RESTORE_SCOPE": scope + "-pitr", "RESTORE_TARGET_TIME": target,
		"RESTORE_FROM": "s3://e2ebk/clusters/" + scope + "/pg17"})
	started := time.Now()
	c.p.Up("pg3", "pgr")

	t.Run("pitr", func(t *testing.T) {
		c.waitTopology(4*time.Minute, "pgr")
		t.Logf("MEASURE PITR bootstrap of a new cluster until it leads: %.1fs", time.Since(started).Seconds())
		got := c.mustQuery("pgr", "postgres", "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM pitr")
		if got[0] != "1000" || got[1] != "1" || got[2] != "1000" {
			t.Errorf("restored to %s: count %s, ids %s..%s; want exactly the 1000 rows committed before the target", target, got[0], got[1], got[2])
		}
		if !strings.Contains(c.logs("pgr"), "walg") {
			t.Errorf("pgr's log does not mention the walg bootstrap")
		}
	})
	t.Run("replica-from-s3", func(t *testing.T) {
		l := c.waitTopology(4*time.Minute, "pg1", "pg2", "pg3")
		t.Logf("MEASURE new replica from S3 until 2 streaming: %.1fs", time.Since(started).Seconds())
		logs := c.logs("pg3")
		if !strings.Contains(logs, "replica has been created using walg") {
			t.Errorf("pg3 was not created with the walg replica method:\n%s", grepAny(logs, "replica", "walg", "basebackup"))
		}
		got := c.mustQuery(l, "postgres", "SELECT count(*) FILTER (WHERE state = 'streaming') FROM pg_stat_replication")
		if got[0] != "2" {
			t.Errorf("pg_stat_replication on %s: %s streaming, want 2", l, got[0])
		}
		rows := c.mustQuery("pg3", "postgres", "SELECT count(*) FROM pitr")
		if rows[0] != "1500" {
			t.Errorf("pg3 has %s rows of pitr, want 1500", rows[0])
		}
	})
}

// waitArchived waits until node's archiver has archived segment seg (or a later one) and
// fails on archive errors after that.
func (c *cluster) waitArchived(node, seg string) {
	c.t.Helper()
	testenv.WaitFor(c.t, 2*time.Minute, "WAL "+seg+" archived", func() error {
		st, err := c.query(node, "postgres", "SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver")
		if err != nil {
			return err
		}
		if st[0] == "" || st[0] < seg {
			n, _ := strconv.Atoi(st[1])
			return fmt.Errorf("last archived %q, %d failures (last failed %q)", st[0], n, st[2])
		}
		return nil
	})
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

func grepAny(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	if len(out) > 40 {
		out = out[len(out)-40:]
	}
	return strings.Join(out, "\n")
}

func errOrOK(err error) string {
	if err == nil {
		return "show it"
	}
	return "do not show it yet (" + err.Error() + ")"
}
