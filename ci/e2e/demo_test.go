package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// TestDemoCluster runs the single-host demo (real pgnode image: PostgreSQL 17, Patroni,
// Consul 1.8.7 servers) and walks it through the non-destructive operations on one
// cluster: topology and health, Consul DNS from inside the network, replica restart,
// planned switchover under a writer, loss of one Consul server, loss of all Consul servers
// (failsafe mode), and a restart of the whole demo.
func TestDemoCluster(t *testing.T) {
	c := StartDemo(t, nil)
	leader := c.WaitTopology(2*time.Minute, 3)
	c.Exec(leader, CreateTableSQL)
	t.Logf("MEASURE cold start to 3 healthy nodes: %.1fs", c.ColdStart.Seconds())

	t.Run("health", func(t *testing.T) {
		for _, n := range Nodes {
			if out, err := c.P.Exec(n, "pgnode", "health"); err != nil {
				t.Errorf("pgnode health on %s: %v\n%s", n, err, out)
			}
		}
		for _, n := range Nodes {
			if ro, err := c.QueryString(n, "SHOW transaction_read_only"); err != nil {
				t.Errorf("%s: %v", n, err)
			} else if want := map[bool]string{true: "off", false: "on"}[n == leader]; ro != want {
				t.Errorf("%s: transaction_read_only=%s, want %s (leader %s)", n, ro, want, leader)
			}
		}
		// The image's extensions are really there.
		c.Exec(leader, "CREATE EXTENSION IF NOT EXISTS postgis")
		c.Exec(leader, "CREATE EXTENSION IF NOT EXISTS timescaledb")
	})

	t.Run("consul-dns", func(t *testing.T) {
		dnsq := buildDNSQ(t)
		want := c.IP(leader)
		for _, srv := range []string{"consul1", "consul2", "consul3"} {
			testenv.WaitFor(t, 60*time.Second, "master via "+srv, func() error {
				got, err := c.resolve(dnsq, srv, "master."+scope+".service.consul")
				if err != nil {
					return err
				}
				if strings.Join(got, ",") != want {
					return fmt.Errorf("master.%s.service.consul via %s = %v, want [%s]", scope, srv, got, want)
				}
				return nil
			})
		}
		var replicas []string
		for _, n := range Nodes {
			if n != leader {
				replicas = append(replicas, c.IP(n))
			}
		}
		sort.Strings(replicas)
		testenv.WaitFor(t, 60*time.Second, "replica DNS", func() error {
			got, err := c.resolve(dnsq, "consul1", "replica."+scope+".service.consul")
			if err != nil {
				return err
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(replicas, ",") {
				return fmt.Errorf("replica.%s.service.consul = %v, want %v", scope, got, replicas)
			}
			return nil
		})
	})

	t.Run("replica-restart", func(t *testing.T) {
		replica := other(leader)
		c.Exec(leader, "CREATE TABLE IF NOT EXISTS e2e_marks (id text PRIMARY KEY)")
		c.P.Kill(replica)
		c.Exec(leader, "INSERT INTO e2e_marks VALUES ('while-replica-down')")
		ensureRunning(c, replica)
		if got := c.WaitTopology(2*time.Minute, 3); got != leader {
			t.Fatalf("leader changed from %s to %s when a replica restarted", leader, got)
		}
		testenv.WaitFor(t, time.Minute, replica+" caught up", func() error {
			_, err := c.QueryString(replica, "SELECT id FROM e2e_marks WHERE id = 'while-replica-down'")
			return err
		})
	})

	t.Run("switchover", func(t *testing.T) {
		candidate := other(leader)
		w := c.Writer()
		w.Start(context.Background())
		time.Sleep(2 * time.Second)
		t0 := time.Now()
		out, err := c.Patronictl(leader, "switchover", "--leader", leader, "--candidate", candidate, "--force")
		if err != nil {
			w.Stop()
			t.Fatalf("patronictl switchover: %v\n%s", err, out)
		}
		got := c.WaitTopology(2*time.Minute, 3)
		time.Sleep(3 * time.Second)
		w.Stop()
		if got != candidate {
			t.Fatalf("leader after switchover = %s, want %s", got, candidate)
		}
		acks := w.Acks()
		window, first := Unavailability(acks, t0)
		if first.Node != candidate {
			t.Errorf("the longest write gap ended with an ack on %s, not the new leader %s", first.Node, candidate)
		}
		for _, o := range Overlaps(acks) {
			t.Errorf("two writable nodes: %s", o)
		}
		checkNoLoss(t, c, candidate, acks)
		t.Logf("MEASURE switchover %s -> %s: writes unavailable %.2fs", leader, candidate, window.Seconds())
		leader = candidate
	})

	t.Run("lose-one-consul-server", func(t *testing.T) {
		// The Consul server a replica uses: the Raft majority stays, the leader's agent stays.
		replica := other(leader)
		srv := "consul" + strings.TrimPrefix(replica, "pg")
		tl := timeline(t, c, leader)
		w := c.Writer()
		w.Start(context.Background())
		c.P.Kill(srv)
		t0 := time.Now()
		// Longer than the leader key's TTL (20 s): a lost session would have shown by now.
		time.Sleep(30 * time.Second)
		ms, err := c.Members(replica)
		w.Stop()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Role == "leader" && (m.Name != leader || m.Timeline != tl) {
				t.Fatalf("failover after losing %s: leader %s timeline %d, was %s timeline %d", srv, m.Name, m.Timeline, leader, tl)
			}
		}
		acks := w.Acks()
		late := 0
		for _, a := range acks {
			if a.Node == leader && a.At.After(t0.Add(25*time.Second)) {
				late++
			}
		}
		if late == 0 {
			t.Fatalf("the leader %s acknowledged no writes 25 s after %s was lost", leader, srv)
		}
		window, after := Unavailability(acks, t0)
		t.Logf("MEASURE one Consul server lost: longest write gap %.2fs (ended %s), no failover", window.Seconds(), after.At.Format("15:04:05.000"))
		logGap(t, w, leader, window)
		ensureRunning(c, srv)
		c.P.WaitHealthy(2*time.Minute, srv)
		if got := c.WaitTopology(2*time.Minute, 3); got != leader {
			t.Fatalf("leader changed to %s after %s came back", got, srv)
		}
	})

	t.Run("lose-all-consul-servers-failsafe", func(t *testing.T) {
		w := c.Writer()
		w.Start(context.Background())
		for _, s := range []string{"consul1", "consul2", "consul3"} {
			c.P.Kill(s)
		}
		t0 := time.Now()
		time.Sleep(35 * time.Second)
		w.Stop()
		acks := w.Acks()
		var served []Ack
		for _, a := range acks {
			if a.At.After(t0.Add(25 * time.Second)) {
				served = append(served, a)
			}
		}
		for _, s := range []string{"consul1", "consul2", "consul3"} {
			ensureRunning(c, s)
		}
		if len(served) == 0 {
			t.Fatalf("no writes acknowledged 25-35 s after all Consul servers were lost (failsafe_mode should keep the leader %s)", leader)
		}
		for _, a := range served {
			if a.Node != leader {
				t.Fatalf("writes acknowledged by %s, not the leader %s, without Consul", a.Node, leader)
			}
		}
		for _, o := range Overlaps(acks) {
			t.Errorf("two writable nodes: %s", o)
		}
		window, after := Unavailability(acks, t0)
		t.Logf("MEASURE all Consul servers lost (failsafe): %d writes in the last 10 s, longest gap %.2fs (ended %s)", len(served), window.Seconds(), after.At.Format("15:04:05.000"))
		logGap(t, w, leader, window)
		c.P.WaitHealthy(2*time.Minute, "consul1", "consul2", "consul3")
		leader = c.WaitTopology(2*time.Minute, 3)
	})

	t.Run("whole-demo-restart", func(t *testing.T) {
		c.Exec(leader, "INSERT INTO e2e_marks VALUES ('before-restart') ON CONFLICT DO NOTHING")
		c.P.Compose("down", "--timeout", "60") // containers and network go, volumes stay
		t0 := time.Now()
		c.P.Up()
		c.P.WaitHealthy(healthyLimit, Nodes...)
		newLeader := c.WaitTopology(2*time.Minute, 3)
		t.Logf("MEASURE whole demo restart: healthy %.1fs after up; leader %s (was %s)", time.Since(t0).Seconds(), newLeader, leader)
		for _, n := range Nodes {
			testenv.WaitFor(t, time.Minute, "data on "+n, func() error {
				_, err := c.QueryString(n, "SELECT id FROM e2e_marks WHERE id = 'before-restart'")
				return err
			})
		}
	})
}

// TestLeaderKill kills the leader's container (docker kill) under a writer in
// synchronous_mode: a replica takes over, not one acknowledged commit is lost, and the
// killed node rejoins as a replica.
func TestLeaderKill(t *testing.T) {
	c := StartDemo(t, map[string]string{"PATRONI_SYNCHRONOUS_MODE": "true"})
	leader := c.WaitTopology(2*time.Minute, 3)
	// In synchronous mode Patroni promotes only the standby named in the DCS's /sync key;
	// killing the leader before it named one leaves no candidate at all.
	testenv.WaitFor(t, time.Minute, "a synchronous standby in the /sync key", func() error {
		for _, srv := range []string{"consul1", "consul2", "consul3"} {
			if out, err := c.P.Exec(srv, "consul", "kv", "get", "service/"+scope+"/sync"); err == nil {
				if strings.Contains(strings.ReplaceAll(out, " ", ""), `"sync_standby":"pg`) {
					return nil
				}
				return fmt.Errorf("/sync = %s", strings.TrimSpace(out))
			}
		}
		return fmt.Errorf("no Consul server answered")
	})
	c.Exec(leader, CreateTableSQL)
	w := c.Writer()
	w.Start(context.Background())
	time.Sleep(3 * time.Second)
	t0 := time.Now()
	c.P.Kill(leader)
	newLeader := ""
	testenv.WaitFor(t, 2*time.Minute, "a new leader", func() error {
		ms, err := c.Members(leader)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Role == "leader" && m.State == "running" && m.Name != leader {
				newLeader = m.Name
				return nil
			}
		}
		return fmt.Errorf("no new leader: %s", describe(ms))
	})
	// Wait for writes to resume there, then a little more.
	testenv.WaitFor(t, time.Minute, "writes on "+newLeader, func() error {
		if _, ok := FirstAckAfter(w.Acks(), t0, leader); !ok {
			return fmt.Errorf("no write acknowledged since the kill")
		}
		return nil
	})
	time.Sleep(3 * time.Second)
	w.Stop()
	acks := w.Acks()
	first, _ := FirstAckAfter(acks, t0, leader)
	window, _ := Unavailability(acks, t0)
	for _, o := range Overlaps(acks) {
		t.Errorf("two writable nodes: %s", o)
	}
	checkNoLoss(t, c, newLeader, acks)
	t.Logf("MEASURE leader kill (docker kill %s, synchronous_mode): new leader %s, writes resumed %.2fs after the kill (longest gap %.2fs), %d acknowledged commits, 0 lost",
		leader, newLeader, first.At.Sub(t0).Seconds(), window.Seconds(), len(acks))

	ensureRunning(c, leader)
	if got := c.WaitTopology(3*time.Minute, 3); got != newLeader {
		t.Fatalf("leader changed again to %s when %s came back", got, leader)
	}
}

// TestLeaderPartition disconnects the leader's container from the network: the isolated
// node must stop accepting writes before another node starts (checked with a writer inside
// the isolated container and one on the host for the others), and it rejoins as a replica
// after the network comes back.
func TestLeaderPartition(t *testing.T) {
	c := StartDemo(t, nil)
	leader := c.WaitTopology(2*time.Minute, 3)
	c.Exec(leader, CreateTableSQL)
	w := c.Writer()
	w.Start(context.Background())
	c.LocalWriter(leader, 1_000_000_000)
	time.Sleep(3 * time.Second)
	t0 := time.Now()
	c.P.Disconnect("pgnode", leader)
	newLeader := ""
	testenv.WaitFor(t, 2*time.Minute, "a new leader", func() error {
		ms, err := c.Members(leader)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Role == "leader" && m.State == "running" && m.Name != leader {
				newLeader = m.Name
				return nil
			}
		}
		return fmt.Errorf("no new leader: %s", describe(ms))
	})
	// Keep writing past the leader key's TTL (20 s): the isolated node must have demoted.
	time.Sleep(25 * time.Second)
	w.Stop()
	local := c.LocalAcks(leader)
	w.AddAcks(local)
	acks := w.Acks()
	var lastOld time.Time
	before := 0
	for _, a := range local {
		if a.At.Before(t0) {
			before++
		}
		if a.At.After(lastOld) {
			lastOld = a.At
		}
	}
	if before == 0 {
		t.Fatalf("the writer inside %s acknowledged nothing even before the partition", leader)
	}
	first, ok := FirstAckAfter(acks, t0, leader)
	if !ok {
		t.Fatalf("no writes acknowledged by %s after the partition", newLeader)
	}
	for _, o := range Overlaps(acks) {
		t.Errorf("two writable nodes: %s", o)
	}
	if !lastOld.Before(acks[len(acks)-1].At.Add(-5 * time.Second)) {
		t.Errorf("the isolated old leader %s still acknowledged writes at the end (%s)", leader, lastOld.Format("15:04:05.000"))
	}
	window, _ := Unavailability(acks, t0)
	t.Logf("MEASURE partition of %s: it accepted its last write %.2fs after the partition; %s accepted writes %.2fs after it (longest gap %.2fs)",
		leader, lastOld.Sub(t0).Seconds(), newLeader, first.At.Sub(t0).Seconds(), window.Seconds())

	c.P.Connect("pgnode", leader, c.IP(leader))
	if got := c.WaitTopology(3*time.Minute, 3); got != newLeader {
		t.Fatalf("leader changed to %s when %s came back", got, leader)
	}
	// What the isolated node accepted locally in async mode is not on the new timeline; it was
	// rewound away. Report it (synchronous_mode is what guarantees no loss).
	present, err := ReadBack(context.Background(), c.DSN(newLeader))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURE partition: %d commits acknowledged after the partition by the isolated node were lost", len(Missing(local, present)))
}

// TestStaleDCS is the playbook's known problem (a): all DB containers are recreated with
// empty volumes while Consul still holds the old cluster. pgnode must say so (and how to fix
// it) instead of waiting silently, and with PGNODE_REMOVE_STALE_DCS=true recover by itself.
func TestStaleDCS(t *testing.T) {
	c := StartDemo(t, map[string]string{"PGNODE_STALE_DCS_GRACE": "10s"})
	leader := c.WaitTopology(2*time.Minute, 3)
	oldID, err := c.QueryString(leader, "SELECT system_identifier::text FROM pg_control_system()")
	if err != nil {
		t.Fatal(err)
	}
	c.P.Compose("rm", "--stop", "--force", "-v", "pg1", "pg2", "pg3")
	for _, n := range Nodes {
		testenv.Docker(t, "volume", "rm", c.P.Name+"_"+n+"-data")
	}
	// The members' sessions end and Patroni's member keys go; the initialize key stays.
	testenv.WaitFor(t, time.Minute, "member keys gone from Consul", func() error {
		out, _ := c.P.Exec("consul1", "consul", "kv", "get", "-recurse", "service/"+scope+"/")
		if strings.Contains(out, "/members/") || strings.Contains(out, "/leader:") {
			return fmt.Errorf("still in Consul:\n%s", out)
		}
		if !strings.Contains(out, "/initialize:") {
			return fmt.Errorf("initialize key missing:\n%s", out)
		}
		return nil
	})

	c.P.Up("pg1", "pg2", "pg3")
	testenv.WaitFor(t, 2*time.Minute, "pgnode explaining the stale state", func() error {
		out, _ := c.P.ComposeErr("logs", "--no-color", "pg1", "pg2", "pg3")
		if strings.Contains(out, "stale cluster state") && strings.Contains(out, "PGNODE_REMOVE_STALE_DCS=true") {
			return nil
		}
		return fmt.Errorf("no explanation in the logs yet")
	})
	for _, n := range Nodes {
		if h := c.P.Health(n); h == "healthy" {
			t.Fatalf("%s is healthy although Consul holds a stale cluster", n)
		}
	}

	c.P.SetEnv(map[string]string{"PGNODE_REMOVE_STALE_DCS": "true"})
	t0 := time.Now()
	c.P.Up("pg1", "pg2", "pg3") // recreated with the new environment
	c.P.WaitHealthy(healthyLimit, Nodes...)
	leader = c.WaitTopology(2*time.Minute, 3)
	newID, err := c.QueryString(leader, "SELECT system_identifier::text FROM pg_control_system()")
	if err != nil {
		t.Fatal(err)
	}
	if newID == oldID {
		t.Fatalf("system identifier unchanged (%s): not a new cluster", newID)
	}
	t.Logf("MEASURE stale DCS recovery (PGNODE_REMOVE_STALE_DCS=true, grace 10s): healthy %.1fs after recreate", time.Since(t0).Seconds())
}

// logGap logs the writer's errors on node when a write gap was long (diagnostics only).
func logGap(t *testing.T, w *Writer, node string, window time.Duration) {
	if window < 3*time.Second {
		return
	}
	errs := w.Errors(node)
	if len(errs) > 20 {
		errs = append(errs[:10], errs[len(errs)-10:]...)
	}
	t.Logf("writer errors on %s:\n%s", node, strings.Join(errs, "\n"))
}

// checkNoLoss fails the test for every acknowledged commit missing on node.
func checkNoLoss(t *testing.T, c *Cluster, node string, acks []Ack) {
	t.Helper()
	present, err := ReadBack(context.Background(), c.DSN(node))
	if err != nil {
		t.Fatal(err)
	}
	if lost := Missing(acks, present); len(lost) > 0 {
		t.Errorf("%d acknowledged commits missing on %s, first: %+v", len(lost), node, lost[0])
	}
}

// other returns a DB node other than n.
func other(n string) string {
	for _, x := range Nodes {
		if x != n {
			return x
		}
	}
	return ""
}

// ensureRunning starts a service's container unless Docker's restart policy already did.
func ensureRunning(c *Cluster, service string) {
	id := c.P.Container(service)
	state, _ := testenv.DockerErr("inspect", "-f", "{{.State.Running}}", id)
	if state != "true" {
		testenv.Docker(c.t, "start", id)
	}
}

func timeline(t *testing.T, c *Cluster, leader string) int {
	ms, err := c.Members()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == leader {
			return m.Timeline
		}
	}
	t.Fatalf("%s not among the members", leader)
	return 0
}

// buildDNSQ compiles ./dnsq (static) for running inside containers.
func buildDNSQ(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dnsq")
	cmd := exec.Command("go", "build", "-o", bin, "./dnsq")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building dnsq: %v\n%s", err, out)
	}
	return bin
}

// resolve asks Consul's DNS on server (a demo service) for name, from a throw-away container
// on the demo's network.
func (c *Cluster) resolve(dnsq, server, name string) ([]string, error) {
	out, err := testenv.DockerErr("run", "--rm", "--network", c.P.Network("pgnode"),
		"-v", dnsq+":/dnsq:ro", "--entrypoint", "/dnsq", baseImage(), server+":8600", name)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	return strings.Fields(out), nil
}

func baseImage() string { return envOr("BASE_IMAGE", "debian:trixie-slim") }
