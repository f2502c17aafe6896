package entrypoint

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// leaderWatch polls every node's Patroni role and records leader changes and any instant
// with two running primaries.
type leaderWatch struct {
	mu       sync.Mutex
	changes  int
	last     string
	doubles  int
	stop     chan struct{}
	finished chan struct{}
}

func watchLeaders(nodes []*testenv.Node) *leaderWatch {
	w := &leaderWatch{stop: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(w.finished)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			var leaders []string
			for _, n := range nodes {
				if n.IsLeader() {
					leaders = append(leaders, n.Name)
				}
			}
			w.mu.Lock()
			if len(leaders) > 1 {
				w.doubles++
			}
			if len(leaders) == 1 && leaders[0] != w.last {
				if w.last != "" {
					w.changes++
				}
				w.last = leaders[0]
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *leaderWatch) counts() (changes, doubles int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changes, w.doubles
}

func (w *leaderWatch) Stop() { close(w.stop); <-w.finished }

// startClusterPerNodeConsul starts 3 real Consul servers and 3 pgnode nodes, each node
// talking to its own Consul agent as on real DB nodes.
func startClusterPerNodeConsul(t *testing.T, ports *testenv.Ports, scope string, extra map[string]string) (*cluster, []*testenv.ConsulServer) {
	t.Helper()
	testenv.RequireBinary(t, "patroni")
	servers := testenv.StartConsulCluster(t, ports, 3)
	bin := testenv.BuildPgnode(t)
	c := &cluster{t: t, ports: ports, scope: scope, consulAddr: servers[0].Addr}
	for i := 0; i < 3; i++ {
		c.nodes = append(c.nodes, testenv.NewNode(t, bin, ports, servers[i].AsConsul(), scope, fmt.Sprintf("%s-n%d", scope, i+1), extra))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("---- %s:\n%s", n.Name, testenv.TailFile(n.LogPath, 40))
			}
		}
	})
	c.nodes[0].Start()
	c.waitLeader(90*time.Second, nil)
	c.nodes[1].Start()
	c.nodes[2].Start()
	c.waitStreaming(120*time.Second, 2)
	return c, servers
}

// TestConsulAgentRestartsAndLoss gives every node its own Consul agent (3 real Consul
// servers on loopback, as on DB nodes) and restarts a replica's agent, then the leader's
// agent: no failover storm, never two primaries. Then the leader's agent is killed for
// good: its session ends with its serfHealth; still never two primaries, and one leader
// serves writes.
func TestConsulAgentRestartsAndLoss(t *testing.T) {
	c, servers := startClusterPerNodeConsul(t, testenv.NewPorts(25600), "agents", nil)
	agentOf := func(n *testenv.Node) *testenv.ConsulServer {
		for i, m := range c.nodes {
			if m == n {
				return servers[i]
			}
		}
		return nil
	}
	w := watchLeaders(c.nodes)
	defer w.Stop()

	leader := c.leader()
	var replica *testenv.Node
	for _, n := range c.nodes {
		if n != leader {
			replica = n
			break
		}
	}
	agentOf(replica).Restart()
	agentOf(replica).WaitLeader(60 * time.Second)
	agentOf(replica).WaitVoters(3, 120*time.Second)
	time.Sleep(20 * time.Second)
	changes, doubles := w.counts()
	t.Logf("replica's Consul agent restarted: %d leader changes, %d samples with two primaries", changes, doubles)
	if changes != 0 || doubles != 0 {
		t.Errorf("restarting a replica's Consul agent caused %d leader changes, %d double-primary samples", changes, doubles)
	}
	c.waitStreaming(120*time.Second, 2)

	agentOf(leader).Restart()
	agentOf(leader).WaitLeader(60 * time.Second)
	agentOf(leader).WaitVoters(3, 120*time.Second)
	time.Sleep(20 * time.Second)
	changes2, doubles := w.counts()
	t.Logf("leader's Consul agent restarted: %d leader changes, %d samples with two primaries", changes2-changes, doubles)
	if changes2-changes > 1 || doubles != 0 {
		t.Errorf("restarting the leader's Consul agent: %d leader changes (a storm), %d double-primary samples", changes2-changes, doubles)
	}
	c.waitLeader(120*time.Second, nil)

	leader = c.leader()
	agentOf(leader).Kill()
	ctx := context.Background()
	testenv.WaitFor(t, 90*time.Second, "one leader serving writes", func() error {
		for _, n := range c.nodes {
			if n.IsLeader() {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				return n.Exec(cctx, "SELECT 1")
			}
		}
		return fmt.Errorf("no leader")
	})
	time.Sleep(15 * time.Second)
	_, doubles = w.counts()
	if doubles != 0 {
		t.Errorf("%d samples with two primaries after the leader's agent was killed", doubles)
	}
}
