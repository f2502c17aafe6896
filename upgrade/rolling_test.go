package upgrade

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// rollingResult is what one rolling upgrade measured.
type rollingResult struct {
	leaderUpgrade, writeDowntime, replicaResync time.Duration
}

// rollingUpgrade runs the host-level version of the cluster-wide upgrade: two real Patroni
// members on PostgreSQL 13 (real Consul) with PostGIS data plus pgbench data of the given
// scale (0: none). The replica's node is "rolled" first: its agent waits while the old
// leader runs. The leader's node is rolled: its agent upgrades in place and resets the
// scope; Patroni on PostgreSQL 15 leads the new system; the waiting replica's agent renames
// its old copy aside and Patroni re-clones it. Both must end on PostgreSQL 15, streaming,
// with identical data.
func rollingUpgrade(t testing.TB, scale int) rollingResult {
	consul := testenv.StartConsul(t, ports)
	scope := "rolling"
	r1, r2 := testenv.PostgresTempDir(t), testenv.PostgresTempDir(t)
	n1 := startPatroni(t, consul, scope, "n1", filepath.Join(r1, "data"), oldMajor)
	n1.waitRole(t, "primary")
	exec1 := func(m *patroniMember, q string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c, err := m.conn(ctx, t)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec1(n1, `CREATE EXTENSION postgis`)
	exec1(n1, `CREATE TABLE pts (id int PRIMARY KEY, geom geometry(Point, 4326));
		INSERT INTO pts SELECT i, ST_SetSRID(ST_MakePoint(i % 360 - 180, i % 180 - 90), 4326) FROM generate_series(1, 10000) i`)
	if scale > 0 {
		testenv.MustAsPostgres(t, filepath.Join(testenv.PGBinDir(t, oldMajor), "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
			"-h", n1.sock, "-p", strconv.Itoa(n1.pgPort), "-U", "postgres", "postgres")
	}
	fp := func(m *patroniMember) string {
		q := "SELECT (SELECT count(*) || '/' || md5(string_agg(ST_AsEWKT(geom), ',' ORDER BY id)) FROM pts)"
		if scale > 0 {
			q += " || ' ' || (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts)"
		}
		return m.sql(t, "postgres", "super-secret", q)
	}
	want := fp(n1)
	n2 := startPatroni(t, consul, scope, "n2", filepath.Join(r2, "data"), oldMajor)
	n2.waitRole(t, "replica")
	testenv.WaitFor(t, 10*time.Minute, "replica to catch up", func() error {
		if got := fp(n2); got != want {
			return fmt.Errorf("replica has %s", got)
		}
		return nil
	})

	node := func(root, name string) Node {
		n := testNode(t, root)
		n.Name, n.Scope, n.ConsulAddr = name, scope, consul.Addr
		return n
	}
	cfg := Config{AutoUpgrade: true, Mode: "link", Jobs: 2}
	old := waitInterval
	waitInterval = 300 * time.Millisecond
	defer func() { waitInterval = old }()

	// Roll the replica's node: its agent must wait, not upgrade a standby on its own.
	n2.stop()
	node2 := node(r2, "n2")
	type result struct {
		out Outcome
		err error
	}
	res2 := make(chan result, 1)
	go func() { o, err := Prepare(context.Background(), cfg, node2); res2 <- result{o, err} }()
	testenv.WaitFor(t, 20*time.Second, "replica agent waiting", func() error {
		st, _ := ReadStatus(node2.StatusFile)
		if st.Phase != PhaseWaiting {
			return fmt.Errorf("phase %q", st.Phase)
		}
		return nil
	})

	// Roll the leader's node: downtime runs from here until the new leader takes writes.
	down := time.Now()
	n1.stop()
	node1 := node(r1, "n1")
	out1, err := Prepare(context.Background(), cfg, node1)
	if err != nil {
		t.Fatalf("leader Prepare: %v", err)
	}
	if !out1.Upgraded || !out1.DCSReset {
		t.Fatalf("leader outcome: %+v", out1)
	}
	var res rollingResult
	res.leaderUpgrade = time.Since(down)
	n1 = startPatroni(t, consul, scope, "n1", node1.DataDir, newMajor)
	n1.waitRole(t, "primary")
	exec1(n1, "INSERT INTO pts VALUES (10001, ST_SetSRID(ST_MakePoint(1, 2), 4326))")
	res.writeDowntime = time.Since(down)
	want = fp(n1)

	var r result
	select {
	case r = <-res2:
	case <-time.After(60 * time.Second):
		t.Fatal("the replica's agent still waits after the leader upgraded")
	}
	if r.err != nil || r.out.RenamedAside == "" || r.out.Upgraded {
		t.Fatalf("replica outcome %+v, %v", r.out, r.err)
	}
	resync := time.Now()
	n2 = startPatroni(t, consul, scope, "n2", node2.DataDir, newMajor)
	n2.waitRole(t, "replica")
	testenv.WaitFor(t, 10*time.Minute, "re-cloned replica to catch up", func() error {
		if got := fp(n2); got != want {
			return fmt.Errorf("replica has %s, want %s", got, want)
		}
		return nil
	})
	res.replicaResync = time.Since(resync)
	for _, m := range []*patroniMember{n1, n2} {
		if v := m.sql(t, "postgres", "super-secret", "SELECT current_setting('server_version_num')"); !strings.HasPrefix(v, "15") {
			t.Fatalf("%s runs %s", m.name, v)
		}
	}
	// The re-cloned replica may hold every row before its WAL receiver reports
	// "streaming" (it can still be in catchup); wait for the state, not a snapshot of it.
	testenv.WaitFor(t, 60*time.Second, "n2 streaming from the new leader", func() error {
		if st := n1.sql(t, "postgres", "super-secret", "SELECT coalesce(string_agg(application_name || ':' || state, ','), '') FROM pg_stat_replication"); !strings.Contains(st, "n2:streaming") {
			return fmt.Errorf("replication on the new leader: %q", st)
		}
		return nil
	})
	if v := n2.sql(t, "postgres", "super-secret", "SELECT extversion FROM pg_extension WHERE extname = 'postgis'"); !strings.HasPrefix(v, "3.3") {
		t.Fatalf("PostGIS on the replica: %s", v)
	}
	return res
}

// TestRollingUpgrade: the cluster-wide upgrade with real Patroni members (see
// rollingUpgrade). The dockerized 3-node version belongs to the e2e suite with the image.
func TestRollingUpgrade(t *testing.T) {
	r := rollingUpgrade(t, 0)
	t.Logf("rolling upgrade (10k PostGIS rows, link): leader upgrade %.1fs, write downtime %.1fs, replica re-clone %.1fs",
		r.leaderUpgrade.Seconds(), r.writeDowntime.Seconds(), r.replicaResync.Seconds())
}

// BenchmarkRollingUpgrade measures write downtime and replica re-clone time of the
// cluster-wide upgrade against pgbench scale (PGNODE_BENCH_SCALES, default "10").
func BenchmarkRollingUpgrade(b *testing.B) {
	scales := strings.Fields(os.Getenv("PGNODE_BENCH_SCALES"))
	if len(scales) == 0 {
		scales = []string{"10"}
	}
	for _, sc := range scales {
		scale, err := strconv.Atoi(sc)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("scale="+sc, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				r := rollingUpgrade(b, scale)
				b.ReportMetric(r.writeDowntime.Seconds(), "write-downtime-s")
				b.ReportMetric(r.replicaResync.Seconds(), "resync-s")
				fmt.Printf("ROLLING scale=%d leader_upgrade_s=%.1f write_downtime_s=%.1f replica_resync_s=%.1f\n",
					scale, r.leaderUpgrade.Seconds(), r.writeDowntime.Seconds(), r.replicaResync.Seconds())
			}
		})
	}
}
