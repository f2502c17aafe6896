// Package rolling is the dockerized cluster-wide major upgrade e2e test: a 3-node pgnode
// cluster (real pgnode image, Patroni, Consul 1.8.7 containers) first runs the image's
// older PostgreSQL major (PG_MAJOR=15 on the same image), gets PostGIS data, and then the
// new major is rolled out one container at a time with POSTGRES_DB_AUTOUPGRADE=true,
// keeping the volumes (see docs/upgrade.md and docs/e2e-upgrade-backup.md).
package rolling

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgnode/ci/e2e"
	"pgnode/ci/testenv"
)

const (
	oldMajor = 15
	newMajor = 17
)

// setup SQL run on the old major's leader (database app): PostGIS geometries with a GiST
// index and a plain table, so the upgrade carries both catalog-dependent and plain data.
var setupSQL = []string{
	`CREATE EXTENSION postgis`,
	`CREATE TABLE places (id int PRIMARY KEY, name text NOT NULL,
		pt geometry(Point, 4326) NOT NULL, area geometry(Polygon, 4326) NOT NULL)`,
	`INSERT INTO places
	   SELECT i, 'place ' || i,
	          ST_SetSRID(ST_MakePoint(-180 + (i * 7919 % 36000) / 100.0, -80 + (i * 104729 % 16000) / 100.0), 4326),
	          ST_SetSRID(ST_Buffer(ST_MakePoint(i % 170, (i % 80) - 40), 0.5 + (i % 7) / 10.0, 8), 4326)
	     FROM generate_series(1, 20000) i`,
	`CREATE INDEX places_pt ON places USING gist (pt)`,
	`CREATE TABLE items AS SELECT i AS id, md5(i::text) AS v FROM generate_series(1, 100000) i`,
	`ALTER TABLE items ADD PRIMARY KEY (id)`,
}

// fingerprintSQL returns what must be identical before and after: row counts, a checksum
// over every geometry's EWKB, a checksum of the plain table, and a GiST-index query.
const fingerprintSQL = `SELECT
	(SELECT count(*) FROM places),
	(SELECT md5(string_agg(ST_AsEWKB(pt)::text || ST_AsEWKB(area)::text, ',' ORDER BY id)) FROM places),
	(SELECT count(*) FROM items),
	(SELECT md5(string_agg(v, ',' ORDER BY id)) FROM items),
	(SELECT count(*) FROM places WHERE pt && ST_MakeEnvelope(-10, -10, 10, 10, 4326))`

func oldEnv() map[string]string {
	env := map[string]string{}
	for i := 1; i <= 3; i++ {
		env[fmt.Sprintf("PG%d_MAJOR", i)] = strconv.Itoa(oldMajor)
		env[fmt.Sprintf("PG%d_BIN_DIR", i)] = fmt.Sprintf("/usr/lib/postgresql/%d/bin", oldMajor)
		env[fmt.Sprintf("PG%d_AUTOUPGRADE", i)] = "false"
	}
	return env
}

// newEnvFor is the "new image" for one node: the image's own major, POSTGRES_BIN_DIR
// unset (empty = the image default), autoupgrade on.
func newEnvFor(node string) map[string]string {
	n := strings.TrimPrefix(node, "pg")
	return map[string]string{"PG" + n + "_MAJOR": strconv.Itoa(newMajor), "PG" + n + "_BIN_DIR": "",
		"PG" + n + "_AUTOUPGRADE": "true"}
}

// rollCase is one order in which the operator rolls the new image over the nodes.
type rollCase struct {
	name string
	// order returns the nodes in rolling order, given the old cluster's leader.
	order func(leader string) []string
	// keepsLeader: the old leader is the one upgraded in place and leads afterwards.
	keepsLeader bool
}

var rollCases = []rollCase{
	// docs/upgrade.md's procedure: replicas first (they wait, healthy-not-ready), then the
	// leader (it upgrades in place with pg_upgrade --link and resets the scope; the replicas
	// move their stale copies aside and re-clone).
	{name: "replicas-first", keepsLeader: true, order: func(l string) []string { return append(others(l), l) }},
	// Leader first: its replicas (still old) fail over, the ex-leader waits on the newer
	// timeline; the promoted member upgrades when its container is rolled.
	{name: "leader-first", order: func(l string) []string { return append([]string{l}, others(l)...) }},
}

func others(leader string) []string {
	var out []string
	for _, n := range nodes {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

// TestRollingMajorUpgrade rolls PostgreSQL 15 -> 17 over a running 3-node cluster, one
// container at a time with the volumes kept, while a writer runs against all nodes.
func TestRollingMajorUpgrade(t *testing.T) {
	requireImages(t)
	for _, tc := range rollCases {
		t.Run(tc.name, func(t *testing.T) { testRolling(t, tc) })
	}
}

func testRolling(t *testing.T, tc rollCase) {
	c := startCluster(t, oldEnv())
	c.p.WaitHealthy(4*time.Minute, nodes...)
	leader := c.waitTopology(2 * time.Minute)
	t.Logf("old cluster up: leader %s", leader)
	for _, n := range nodes {
		v := c.mustQuery(n, "postgres", "SHOW server_version_num")[0]
		if !strings.HasPrefix(v, strconv.Itoa(oldMajor)) {
			t.Fatalf("%s runs server_version_num %s, want %d.x before the upgrade", n, v, oldMajor)
		}
	}

	c.exec(leader, "postgres", "CREATE DATABASE app")
	for _, s := range setupSQL {
		c.exec(leader, "app", s)
	}
	c.exec(leader, "postgres", e2e.CreateTableSQL)
	before := c.mustQuery(leader, "app", fingerprintSQL)
	oldPostGIS := c.mustQuery(leader, "app", "SELECT extversion FROM pg_extension WHERE extname = 'postgis'")[0]
	t.Logf("before: places=%s geom-md5=%s items=%s items-md5=%s gist-hits=%s postgis=%s",
		before[0], before[1], before[2], before[3], before[4], oldPostGIS)
	// The replicas hold the data too before we start rolling.
	testenv.WaitFor(t, time.Minute, "replicas caught up", func() error {
		for _, n := range nodes {
			got, err := c.query(n, "app", fingerprintSQL)
			if err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			if strings.Join(got, "|") != strings.Join(before, "|") {
				return fmt.Errorf("%s: %v", n, got)
			}
		}
		return nil
	})

	w := c.writer()
	w.Start(context.Background())
	defer w.Stop()
	time.Sleep(2 * time.Second)

	rollStart := time.Now()
	order := tc.order(leader)
	var starts []time.Time
	for i, n := range order {
		c.p.SetEnv(newEnvFor(n))
		start := time.Now()
		starts = append(starts, start)
		c.p.Compose("up", "-d", "--no-build", "--no-deps", n)
		// Settled: waiting for another member (healthy, not ready), or serving the new major.
		state := ""
		testenv.WaitFor(t, 5*time.Minute, n+" settled on the new image", func() error {
			if ph := c.agentStatus(n); ph == "waiting" {
				state = "waiting"
				return nil
			}
			if v, err := c.query(n, "postgres", "SHOW server_version_num"); err == nil && strings.HasPrefix(v[0], strconv.Itoa(newMajor)) {
				state = "running " + v[0]
				return nil
			}
			return fmt.Errorf("%s phase %q, health %s", n, c.agentStatus(n), c.p.Health(n))
		})
		t.Logf("rolled %d/3: %s (%s) after %.1fs", i+1, n, state, time.Since(start).Seconds())
		if tc.keepsLeader && i == len(order)-2 {
			// Both replicas wait; the old leader must still have taken writes since.
			waited := time.Now()
			testenv.WaitFor(t, 30*time.Second, "a write on the old leader while the replicas wait", func() error {
				if _, ok := e2e.FirstAckAfter(w.Acks(), waited, ""); !ok {
					return fmt.Errorf("no write on %s since %s", leader, waited.Format("15:04:05.000"))
				}
				return nil
			})
		}
	}
	newLeader := c.waitTopology(5 * time.Minute)
	streamingAt := time.Now()
	time.Sleep(time.Second)
	w.Stop()

	acks := w.Acks()
	for i, n := range order {
		var window []e2e.Ack
		for _, a := range acks {
			if i+1 == len(starts) || a.At.Before(starts[i+1]) {
				window = append(window, a)
			}
		}
		gap, _ := e2e.Unavailability(window, starts[i])
		t.Logf("MEASURE %s: longest write gap after rolling %s (until the next roll): %.1fs", tc.name, n, gap.Seconds())
	}
	downtime, resumed := e2e.Unavailability(acks, rollStart)
	t.Logf("MEASURE %s: longest write gap during the rolling: %.1fs (writes resumed on %s at %s)", tc.name,
		downtime.Seconds(), resumed.Node, resumed.At.Format("15:04:05.000"))
	if !resumed.At.IsZero() {
		t.Logf("MEASURE %s: writes resumed -> both replicas streaming again: %.1fs", tc.name, streamingAt.Sub(resumed.At).Seconds())
	}
	t.Logf("MEASURE %s: whole rolling (first recreate -> 1 leader + 2 streaming): %.1fs", tc.name, streamingAt.Sub(rollStart).Seconds())
	if tc.keepsLeader && newLeader != leader {
		t.Errorf("leader after the upgrade is %s, want the upgraded %s", newLeader, leader)
	}

	t.Run("all-on-new-major", func(t *testing.T) {
		for _, n := range nodes {
			v := c.mustQuery(n, "postgres", "SHOW server_version_num")[0]
			if !strings.HasPrefix(v, strconv.Itoa(newMajor)) {
				t.Errorf("%s runs server_version_num %s, want %d.x", n, v, newMajor)
			}
		}
	})
	t.Run("streaming", func(t *testing.T) {
		got := c.mustQuery(newLeader, "postgres", "SELECT count(*) FILTER (WHERE state = 'streaming'), count(*) FROM pg_stat_replication")
		if got[0] != "2" {
			t.Errorf("pg_stat_replication on %s: %s streaming of %s, want 2", newLeader, got[0], got[1])
		}
	})
	t.Run("data-identical", func(t *testing.T) {
		testenv.WaitFor(t, time.Minute, "same data on every node", func() error {
			for _, n := range nodes {
				got, err := c.query(n, "app", fingerprintSQL)
				if err != nil {
					return fmt.Errorf("%s: %w", n, err)
				}
				if strings.Join(got, "|") != strings.Join(before, "|") {
					return fmt.Errorf("%s: %v, want %v", n, got, before)
				}
			}
			return nil
		})
		// Every acknowledged write survived (including those during the rolling).
		present, err := e2e.ReadBack(context.Background(), c.dsn(newLeader, "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		acks := w.Acks()
		if lost := e2e.Missing(acks, present); len(lost) > 0 {
			t.Errorf("%d of %d acknowledged writes lost, first %+v", len(lost), len(acks), lost[0])
		}
		t.Logf("%d acknowledged writes, all present", len(acks))
	})
	t.Run("postgis-updated", func(t *testing.T) {
		got := c.mustQuery(newLeader, "app", `SELECT e.extversion, a.default_version, postgis_lib_version()
			FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'postgis'`)
		if got[0] != got[1] || got[0] == oldPostGIS {
			t.Errorf("postgis extversion %s (default %s, lib %s), was %s: want the new default", got[0], got[1], got[2], oldPostGIS)
		}
		full := c.mustQuery(newLeader, "app", "SELECT postgis_full_version()")[0]
		if strings.Contains(full, "procs need upgrade") || strings.Contains(full, "need upgrade") {
			t.Errorf("postgis_full_version: %s", full)
		}
		t.Logf("PostGIS %s -> %s", oldPostGIS, got[0])
	})
	t.Run("old-data-kept", func(t *testing.T) {
		// Nothing is deleted: the upgraded leader keeps the old cluster as data.pg15-<time>,
		// every re-cloned replica its stale copy as data.stale-<sysid>-<time>.
		for _, n := range nodes {
			out, err := c.p.Exec(n, "ls", "/var/lib/postgresql")
			if err != nil {
				t.Fatalf("ls on %s: %v\n%s", n, err, out)
			}
			want := "data.stale-"
			if n == newLeader {
				want = fmt.Sprintf("data.pg%d-", oldMajor)
			}
			if !strings.Contains(out, want) {
				t.Errorf("%s's volume has no %s* directory: %s", n, want, strings.Join(strings.Fields(out), " "))
			}
		}
	})
	t.Run("health", func(t *testing.T) {
		for _, n := range nodes {
			if out, err := c.p.Exec(n, "pgnode", "health"); err != nil {
				t.Errorf("pgnode health on %s: %v\n%s", n, err, out)
			}
			if ph := c.agentStatus(n); ph != "" && ph != "running" {
				t.Logf("%s agent phase %q", n, ph)
			}
		}
	})
}
