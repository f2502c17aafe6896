package entrypoint

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// cluster is a 3-node pgnode cluster on loopback with real Consul, Patroni and
// PostgreSQL 15 (Debian's packages).
type cluster struct {
	t      *testing.T
	consul *testenv.Consul
	ports  *testenv.Ports
	scope  string
	nodes  []*testenv.Node
	// consulAddr is a Consul HTTP address for clusters without the shared dev agent.
	consulAddr string
}

func startCluster(t *testing.T, ports *testenv.Ports, scope string, n int, extra map[string]string) *cluster {
	t.Helper()
	testenv.RequireBinary(t, "patroni")
	testenv.PGBinDir(t, 15)
	bin := testenv.BuildPgnode(t)
	c := &cluster{t: t, ports: ports, scope: scope}
	c.consul = testenv.StartConsul(t, ports)
	for i := 1; i <= n; i++ {
		c.nodes = append(c.nodes, testenv.NewNode(t, bin, ports, c.consul, scope, fmt.Sprintf("%s-n%d", scope, i), extra))
	}
	c.nodes[0].Start()
	c.waitLeader(90*time.Second, nil)
	for _, node := range c.nodes[1:] {
		node.Start()
	}
	c.waitStreaming(120*time.Second, n-1)
	t.Cleanup(func() {
		if t.Failed() {
			for _, node := range c.nodes {
				t.Logf("---- log of %s (last lines):\n%s", node.Name, testenv.TailFile(node.LogPath, 60))
			}
		}
	})
	return c
}

// waitLeader waits until exactly one node other than except is the running leader.
func (c *cluster) waitLeader(d time.Duration, except *testenv.Node) *testenv.Node {
	c.t.Helper()
	var leader *testenv.Node
	testenv.WaitFor(c.t, d, "a leader", func() error {
		leader = nil
		count := 0
		for _, n := range c.nodes {
			if n != except && n.IsLeader() {
				leader = n
				count++
			}
		}
		if count != 1 {
			return fmt.Errorf("%d leaders", count)
		}
		return nil
	})
	return leader
}

func (c *cluster) leader() *testenv.Node {
	for _, n := range c.nodes {
		if n.IsLeader() {
			return n
		}
	}
	return nil
}

// waitStreaming waits until the leader reports want streaming replicas.
func (c *cluster) waitStreaming(d time.Duration, want int) {
	c.t.Helper()
	testenv.WaitFor(c.t, d, fmt.Sprintf("%d streaming replicas", want), func() error {
		l := c.leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		got, err := l.QueryInt(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
		if err != nil {
			return err
		}
		if int(got) != want {
			return fmt.Errorf("%d streaming", got)
		}
		return c.failsafeListsAll()
	})
}

// failsafeListsAll checks that the DCS's /failsafe key names every running member: with
// failsafe_mode Patroni lets only listed members take over, and the leader writes the key
// a loop after a member joins, so a fault injected earlier would leave no candidate.
func (c *cluster) failsafeListsAll() error {
	addr := c.consulAddr
	if addr == "" && c.consul != nil {
		addr = c.consul.Addr
	}
	resp, err := http.Get("http://" + addr + "/v1/kv/service/" + c.scope + "/failsafe?raw")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, n := range c.nodes {
		if n.Running() && !strings.Contains(string(b), `"`+n.Name+`"`) {
			return fmt.Errorf("%s not yet in the failsafe key", n.Name)
		}
	}
	return nil
}

// lookupSRV asks Consul's DNS interface for name's SRV record.
func lookupSRV(dnsPort int, name string) ([]*net.SRV, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", "127.0.0.1:"+strconv.Itoa(dnsPort))
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	return srvs, err
}

// TestClusterReplicatesFailsOverAndRejoins runs 3 `pgnode run` processes (real Consul
// 1.8, Patroni 3.0, PostgreSQL 15): one leader, two streaming replicas, a row written on
// the leader is read on both, Consul DNS points master.<scope> at the leader; kill -9 of
// the leader's processes promotes a replica; the old node rejoins as a replica.
func TestClusterReplicatesFailsOverAndRejoins(t *testing.T) {
	c := startCluster(t, testenv.NewPorts(20100), "itest", 3, nil)
	ctx := context.Background()
	leader := c.leader()
	if err := leader.Exec(ctx, "CREATE TABLE t (id int primary key, v text)"); err != nil {
		t.Fatal(err)
	}
	if err := leader.Exec(ctx, "INSERT INTO t VALUES (1, 'written on the leader')"); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		if n == leader {
			continue
		}
		n := n
		testenv.WaitFor(t, 30*time.Second, "row on "+n.Name, func() error {
			got, err := n.QueryInt(ctx, "SELECT count(*) FROM t WHERE id = 1")
			if err != nil {
				return err
			}
			if got != 1 {
				return fmt.Errorf("row not replicated yet")
			}
			return nil
		})
		if err := n.Exec(ctx, "INSERT INTO t VALUES (2, 'x')"); err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("replica %s accepted a write (err=%v)", n.Name, err)
		}
	}
	// Consul DNS: master.<scope>.service.consul -> the leader (its port tells it apart on
	// loopback); replica.<scope> -> the two others.
	testenv.WaitFor(t, 30*time.Second, "Consul DNS for the leader", func() error {
		srvs, err := lookupSRV(c.consul.DNSPort, "master."+c.scope+".service.consul")
		if err != nil {
			return err
		}
		if len(srvs) != 1 || int(srvs[0].Port) != leader.PGPort {
			return fmt.Errorf("master SRV = %v, leader port %d", srvs, leader.PGPort)
		}
		srvs, err = lookupSRV(c.consul.DNSPort, "replica."+c.scope+".service.consul")
		if err != nil {
			return err
		}
		if len(srvs) != 2 {
			return fmt.Errorf("replica SRV = %d records", len(srvs))
		}
		return nil
	})
	for _, n := range c.nodes {
		cmd := exec.Command(n.Bin, "health")
		cmd.Env = n.EnvList()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("pgnode health on %s: %v %s", n.Name, err, out)
		}
	}

	// Node crash: kill -9 pgnode, Patroni and PostgreSQL of the leader.
	killedAt := time.Now()
	leader.KillAll()
	newLeader := c.waitLeader(90*time.Second, leader)
	testenv.WaitFor(t, 30*time.Second, "a write on the new leader", func() error {
		return newLeader.Exec(ctx, "INSERT INTO t VALUES (3, 'after failover') ON CONFLICT DO NOTHING")
	})
	t.Logf("failover after kill -9 of the leader node: %.1f s until the new leader %s accepted a write", time.Since(killedAt).Seconds(), newLeader.Name)

	// The old leader comes back as a replica (pg_rewind or re-clone), with all rows.
	leader.Start()
	c.waitStreaming(120*time.Second, 2)
	testenv.WaitFor(t, 30*time.Second, "old leader caught up", func() error {
		if leader.IsLeader() {
			return fmt.Errorf("old leader is leader again")
		}
		got, err := leader.QueryInt(ctx, "SELECT count(*) FROM t")
		if err != nil {
			return err
		}
		if got != 2 {
			return fmt.Errorf("%d rows", got)
		}
		return nil
	})
}

// TestSecretsStayOutOfLogsArgvAndRender runs a node with secrets set and checks its log,
// every child's /proc/<pid>/cmdline and `pgnode render`.
func TestSecretsStayOutOfLogsArgvAndRender(t *testing.T) {
	ports := testenv.NewPorts(20400)
	c := startCluster(t, ports, "secrets", 1, map[string]string{
		"S3_BACKUP_PATH": "s3://bucket/pg", "S3_ACCESS_KEY_RW": "AKIA-test-rw-key", "S3_SECRET_KEY_RW": "test-s3-secret-rw",
		"S3_ENDPOINT": "http://127.0.0.1:1", "S3_PATH_STYLE": "true", "WALG_BINARY": "/bin/true",
	})
	n := c.nodes[0]
	secrets := []string{testenv.SuperPassword, testenv.ReplPassword, testenv.RewindPass, testenv.RestPassword, "test-s3-secret-rw", "AKIA-test-rw-key"}
	// Every process of the node: pgnode, Patroni, postgres and its children.
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cl, n.Dir) || pid == n.Pid() {
			pids = append(pids, pid)
			for _, s := range secrets {
				if strings.Contains(cl, s) {
					t.Errorf("process %d's command line holds a secret: %q", pid, cl)
				}
			}
		}
	}
	if len(pids) < 3 {
		t.Errorf("expected pgnode, patroni and postgres processes, found %v", pids)
	}
	cmd := exec.Command(n.Bin, "render")
	cmd.Env = n.EnvList()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("render: %v\n%s", err, out)
	}
	if n.Stop(60*time.Second) != 0 {
		t.Errorf("pgnode did not stop cleanly")
	}
	logText := n.Log()
	for _, s := range secrets {
		if strings.Contains(logText, s) {
			t.Errorf("the node's log holds a secret")
		}
		if strings.Contains(string(out), s) {
			t.Errorf("pgnode render shows a secret")
		}
	}
	st, err := os.Stat(n.Env["PGNODE_CONFIG_DIR"] + "/" + PatroniFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("patroni.yml mode: %v %v", st.Mode(), err)
	}
}

// TestStaleClusterStateInConsul reproduces the playbook's known problem (a): a cluster
// reinstalled with empty volumes while Consul remembers the old one. Without the opt-in
// the agent explains and leaves the state; with PGNODE_REMOVE_STALE_DCS=true it removes
// it and the node bootstraps; with a live member it never touches the state.
func TestStaleClusterStateInConsul(t *testing.T) {
	ports := testenv.NewPorts(20600)
	c := startCluster(t, ports, "stale", 1, nil)
	old := c.nodes[0]
	if code := old.Stop(60 * time.Second); code != 0 {
		t.Fatalf("clean stop exited %d", code)
	}
	bin := testenv.BuildPgnode(t)
	fresh := testenv.NewNode(t, bin, ports, c.consul, "stale", "stale-fresh", map[string]string{"PGNODE_STALE_DCS_GRACE": "3s"})
	fresh.Start()
	testenv.WaitFor(t, 60*time.Second, "the stale-state explanation", func() error {
		if !strings.Contains(fresh.Log(), "stale cluster state") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if !strings.Contains(fresh.Log(), "PGNODE_REMOVE_STALE_DCS=true") || !strings.Contains(fresh.Log(), "patronictl") {
		t.Errorf("the explanation lacks the remedy:\n%s", testenv.TailFile(fresh.LogPath, 20))
	}
	time.Sleep(5 * time.Second)
	if fresh.IsLeader() {
		t.Fatalf("without the opt-in the node must not take over")
	}
	fresh.Stop(60 * time.Second)

	fresh.Env["PGNODE_REMOVE_STALE_DCS"] = "true"
	fresh.Start()
	testenv.WaitFor(t, 90*time.Second, "the fresh node to bootstrap a new cluster", func() error {
		if !fresh.IsLeader() {
			return fmt.Errorf("not leader")
		}
		return nil
	})
	if !strings.Contains(fresh.Log(), "removed stale cluster state") {
		t.Errorf("no log line about the removal")
	}

	// A live member: an empty node with the opt-in joins as a replica and leaves the
	// cluster state alone.
	joiner := testenv.NewNode(t, bin, ports, c.consul, "stale", "stale-joiner", map[string]string{"PGNODE_REMOVE_STALE_DCS": "true", "PGNODE_STALE_DCS_GRACE": "1s"})
	joiner.Start()
	testenv.WaitFor(t, 120*time.Second, "the joiner to stream", func() error {
		st, err := joiner.Patroni()
		if err != nil {
			return err
		}
		if st.State != "running" || st.Role != "replica" {
			return fmt.Errorf("%s %s", st.Role, st.State)
		}
		return nil
	})
	if strings.Contains(joiner.Log(), "removed stale cluster state") {
		t.Errorf("a node removed the state of a live cluster")
	}
	if !fresh.IsLeader() {
		t.Errorf("the leader changed")
	}
}
