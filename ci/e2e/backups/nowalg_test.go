package backups

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

var unavailable = regexp.MustCompile(`(?i)wal-?g.{0,200}(not installed|not found|unavailable)`)

// TestBackupsWithoutWALG runs a 2-node cluster with S3 (MinIO) configured on an image
// without WAL-G (or with WALG_BINARY pointing nowhere when the image has one): the cluster
// must come up healthy and stream (no restore_command that cannot run), say clearly that
// backups are unavailable (pgnode backup list, the agent's log), and report it in the
// metrics, without restarting.
func TestBackupsWithoutWALG(t *testing.T) {
	requireImages(t)
	extra := map[string]string{}
	if hasWALG(image()) {
		extra["WALG_BINARY"] = "/usr/local/bin/wal-g-not-installed"
	}
	c := startCluster(t, image(), extra, "pg1", "pg2")
	testenv.WaitFor(t, 3*time.Minute, "a leader", func() error {
		ms, err := c.members([]string{"pg1", "pg2"})
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Role == "leader" && m.State == "running" {
				return nil
			}
		}
		return fmt.Errorf("%s", describe(ms))
	})
	ms, _ := c.members([]string{"pg1", "pg2"})
	leader := ""
	for _, m := range ms {
		if m.Role == "leader" {
			leader = m.Name
		}
	}

	t.Run("cluster-healthy-and-streaming", func(t *testing.T) {
		if err := testenv.Poll(t.Context(), 2*time.Minute, func() error {
			_, err := c.topology([]string{"pg1", "pg2"})
			return err
		}); err != nil {
			t.Errorf("replica never streams: %v\nreplica log:\n%s", err, tail(c.logs(other(leader)), 30))
		}
		if err := testenv.Poll(t.Context(), time.Minute, func() error {
			for _, n := range []string{"pg1", "pg2"} {
				if h := c.p.Health(n); h != "healthy" {
					return fmt.Errorf("%s %s", n, h)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
	t.Run("no-crash-loop", func(t *testing.T) {
		for _, n := range []string{"pg1", "pg2"} {
			if r := c.restarts(n); r != "0" {
				t.Errorf("%s restarted %s times", n, r)
			}
			logs := c.logs(n)
			for _, bad := range []string{"failed to start postgres", "archive command failed", "could not restore file"} {
				if k := strings.Count(logs, bad); k > 0 {
					t.Errorf("%s log: %d x %q", n, k, bad)
				}
			}
		}
	})
	t.Run("backup-list-says-unavailable", func(t *testing.T) {
		out, err := c.pgnode(leader, "backup", "list")
		if err == nil {
			t.Errorf("pgnode backup list succeeded without WAL-G:\n%s", out)
		}
		if !unavailable.MatchString(out) {
			t.Errorf("pgnode backup list does not say WAL-G is unavailable:\n%s", out)
		}
		t.Logf("pgnode backup list: %s", firstLine(out))
	})
	t.Run("log-says-unavailable", func(t *testing.T) {
		for _, n := range []string{"pg1", "pg2"} {
			m := unavailable.FindString(c.logs(n))
			if m == "" {
				t.Errorf("%s's log never says WAL-G is unavailable", n)
				continue
			}
			if n == leader {
				t.Logf("%s log: %s", n, m)
			}
		}
	})
	t.Run("metrics-report-problem", func(t *testing.T) {
		text, err := c.metrics(leader)
		if err != nil {
			t.Fatalf("metrics endpoint of %s: %v", leader, err)
		}
		// Any of these says "backups do not work here": the storage/WAL-G check failed,
		// a WAL-G availability gauge is 0, or failures are counted.
		var reported []string
		if metric(text, "pgnode_backup_storage_ok") == "0" {
			reported = append(reported, "pgnode_backup_storage_ok 0")
		}
		for _, l := range strings.Split(text, "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && strings.Contains(f[0], "walg") && f[1] == "0" {
				reported = append(reported, l)
			}
		}
		if v := metric(text, "pgnode_backup_consecutive_failures"); v != "" && v != "0" {
			reported = append(reported, "pgnode_backup_consecutive_failures "+v)
		}
		if len(reported) == 0 {
			t.Errorf("metrics of %s do not report that WAL-G is missing:\n%s", leader, text)
		} else {
			t.Logf("metrics report: %s", strings.Join(reported, "; "))
		}
	})
}

func other(n string) string {
	if n == "pg1" {
		return "pg2"
	}
	return "pg1"
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
