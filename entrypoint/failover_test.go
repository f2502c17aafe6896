package entrypoint

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"pgnode/ci/testenv"
)

// writeResult is one acknowledged or failed write of the writer.
type writeResult struct {
	node string
	at   time.Time
	ok   bool
}

// writer inserts into every node every interval over its own connection and records
// every acknowledged commit per node.
type writer struct {
	mu      sync.Mutex
	results []writeResult
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startWriter(t *testing.T, nodes []*testenv.Node, interval time.Duration) *writer {
	w := &writer{stop: make(chan struct{})}
	for _, n := range nodes {
		n := n
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			var conn *pgx.Conn
			seq := 0
			for {
				select {
				case <-w.stop:
					if conn != nil {
						conn.Close(context.Background())
					}
					return
				case <-time.After(interval):
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				if conn == nil || conn.IsClosed() {
					c, err := n.Connect(ctx)
					if err != nil {
						cancel()
						w.record(n.Name, false)
						continue
					}
					conn = c
				}
				seq++
				_, err := conn.Exec(ctx, "INSERT INTO writes(node, seq) VALUES ($1, $2)", n.Name, seq)
				cancel()
				if err != nil {
					conn.Close(context.Background())
					conn = nil
				}
				w.record(n.Name, err == nil)
			}
		}()
	}
	return w
}

func (w *writer) record(node string, ok bool) {
	w.mu.Lock()
	w.results = append(w.results, writeResult{node: node, at: time.Now(), ok: ok})
	w.mu.Unlock()
}

func (w *writer) snapshot() []writeResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]writeResult(nil), w.results...)
}

func (w *writer) Stop() []writeResult {
	close(w.stop)
	w.wg.Wait()
	return w.results
}

// lastOK returns the last acknowledged write of node after since.
func lastOK(rs []writeResult, node string) time.Time {
	var t time.Time
	for _, r := range rs {
		if r.node == node && r.ok && r.at.After(t) {
			t = r.at
		}
	}
	return t
}

// firstOKAfter returns the first acknowledged write on node after since.
func firstOKAfter(rs []writeResult, node string, since time.Time) time.Time {
	var t time.Time
	for _, r := range rs {
		if r.node == node && r.ok && r.at.After(since) && (t.IsZero() || r.at.Before(t)) {
			t = r.at
		}
	}
	return t
}

// TestPatroniCrashFencesPostgresBeforePromotion kills only the leader's Patroni (kill -9;
// PostgreSQL left running, as DESIGN.md measured it: without fencing the orphaned
// primary kept accepting writes for ~45 s). pgnode must stop PostgreSQL before it lets
// the session go, so no write is acknowledged by the old primary once the new one
// accepts writes.
func TestPatroniCrashFencesPostgresBeforePromotion(t *testing.T) {
	c := startCluster(t, testenv.NewPorts(25000), "fence", 3, nil)
	ctx := context.Background()
	old := c.leader()
	if err := old.Exec(ctx, "CREATE TABLE writes (id bigserial primary key, node text, seq int, at timestamptz default clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	c.waitStreaming(30*time.Second, 2)
	w := startWriter(t, c.nodes, 50*time.Millisecond)
	time.Sleep(2 * time.Second)
	patroniPid := old.PatroniPid()
	postmaster := old.PostmasterPid()
	if patroniPid == 0 || postmaster == 0 {
		t.Fatalf("no patroni (%d) or postmaster (%d) on the leader", patroniPid, postmaster)
	}
	killedAt := time.Now()
	if err := syscall.Kill(patroniPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	newLeader := c.waitLeader(60*time.Second, old)
	testenv.WaitFor(t, 30*time.Second, "writes on the new leader", func() error {
		if firstOKAfter(w.snapshot(), newLeader.Name, killedAt).IsZero() {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	time.Sleep(time.Second)
	rs := w.Stop()
	lastOld := lastOK(rs, old.Name)
	firstNew := firstOKAfter(rs, newLeader.Name, killedAt)
	t.Logf("Patroni-only crash: old primary's last acknowledged write %+.3f s after the kill, new leader's first %+.3f s (window %.2f s)",
		lastOld.Sub(killedAt).Seconds(), firstNew.Sub(killedAt).Seconds(), firstNew.Sub(killedAt).Seconds())
	if !lastOld.Before(firstNew) {
		t.Errorf("split brain: the old primary acknowledged a write at %s, after the new leader's first at %s", lastOld, firstNew)
	}
	if syscall.Kill(postmaster, 0) == nil {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(postmaster) + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
			t.Errorf("the old postmaster %d still runs", postmaster)
		}
	}
	logText := old.Log()
	fenced := strings.Index(logText, "PostgreSQL fenced")
	if fenced < 0 {
		t.Fatalf("no fencing in the old leader's log")
	}
	if code := old.Wait(10 * time.Second); code == 0 {
		t.Errorf("pgnode exited 0 after Patroni crashed; want Patroni's status")
	}
	// Every acknowledged commit is on the new leader (async replication may lose the
	// last ones only if they were not replicated; the writer's rows on the old primary
	// after fencing must not exist).
	got, err := newLeader.QueryInt(ctx, "SELECT count(*) FROM writes WHERE node = $1", newLeader.Name)
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	for _, r := range rs {
		if r.node == newLeader.Name && r.ok {
			acked++
		}
	}
	if int(got) != acked {
		t.Errorf("new leader holds %d of its %d acknowledged writes", got, acked)
	}
	// The fenced node comes back as a replica (docker's restart policy does this in the
	// image; here the test restarts it).
	old.Start()
	c.waitStreaming(120*time.Second, 2)
}

// TestFailoverBench measures failover windows (median of 5) for pgnode's fast failover
// next to Patroni's defaults, for a node crash and a Patroni-only crash. It runs only
// from ci/bench-failover.sh (PGNODE_BENCH=1): timings are measured, never asserted.
func TestFailoverBench(t *testing.T) {
	if os.Getenv("PGNODE_BENCH") != "1" {
		t.Skip("SKIP: benchmark; run ci/bench-failover.sh")
	}
	trials := 5
	if n, err := strconv.Atoi(os.Getenv("PGNODE_BENCH_TRIALS")); err == nil && n > 0 {
		trials = n
	}
	configs := []struct {
		name  string
		extra map[string]string
	}{
		{"pgnode (ttl 20/5/5 + fenced alive check)", nil},
		{"Patroni defaults (ttl 30/10/10, TTL only)", map[string]string{"PATRONI_TTL": "30", "PATRONI_LOOP_WAIT": "10", "PATRONI_RETRY_TIMEOUT": "10", "PGNODE_FAST_FAILOVER": "false"}},
	}
	scenarios := []string{"node crash (kill -9 pgnode+patroni+postgres)", "patroni crash (kill -9 patroni only)"}
	type row struct{ config, scenario, result string }
	var rows []row
	base := 25200
	for ci, cf := range configs {
		c := startCluster(t, testenv.NewPorts(base+ci*200), fmt.Sprintf("bench%d", ci), 3, cf.extra)
		ctx := context.Background()
		if err := c.leader().Exec(ctx, "CREATE TABLE writes (id bigserial primary key, node text, seq int)"); err != nil {
			t.Fatal(err)
		}
		for _, sc := range scenarios {
			var windows []float64
			splitBrain := 0
			for i := 0; i < trials; i++ {
				c.waitStreaming(120*time.Second, 2)
				old := c.leader()
				w := startWriter(t, c.nodes, 100*time.Millisecond)
				time.Sleep(2 * time.Second)
				killedAt := time.Now()
				if strings.HasPrefix(sc, "node") {
					old.KillAll()
				} else {
					_ = syscall.Kill(old.PatroniPid(), syscall.SIGKILL)
				}
				nl := c.waitLeader(120*time.Second, old)
				testenv.WaitFor(t, 60*time.Second, "write on new leader", func() error {
					if firstOKAfter(w.snapshot(), nl.Name, killedAt).IsZero() {
						return fmt.Errorf("none")
					}
					return nil
				})
				rs := w.Stop()
				first := firstOKAfter(rs, nl.Name, killedAt)
				windows = append(windows, first.Sub(killedAt).Seconds())
				if !lastOK(rs, old.Name).Before(first) {
					splitBrain++
				}
				old.Wait(15 * time.Second)
				old.KillAll()
				old.Start()
			}
			sort.Float64s(windows)
			rows = append(rows, row{cf.name, sc, fmt.Sprintf("median %.1f s (min %.1f, max %.1f), split brain in %d/%d", windows[len(windows)/2], windows[0], windows[len(windows)-1], splitBrain, trials)})
		}
		for _, n := range c.nodes {
			n.Kill()
		}
	}
	fmt.Println("| configuration | scenario | write-unavailability window |")
	fmt.Println("|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s |\n", r.config, r.scenario, r.result)
	}
}

// TestHostLossBench measures failover after a whole host is lost: the node's Consul agent
// and pgnode, Patroni and PostgreSQL are all killed at once, so only the Consul servers'
// failure detection (serfHealth) or the session TTL can end the leader's session
// (ci/bench-failover.sh).
func TestHostLossBench(t *testing.T) {
	if os.Getenv("PGNODE_BENCH") != "1" {
		t.Skip("SKIP: benchmark; run ci/bench-failover.sh")
	}
	trials := 5
	if n, err := strconv.Atoi(os.Getenv("PGNODE_BENCH_TRIALS")); err == nil && n > 0 {
		trials = n
	}
	c, servers := startClusterPerNodeConsul(t, testenv.NewPorts(25700), "hostloss", nil)
	ctx := context.Background()
	if err := c.leader().Exec(ctx, "CREATE TABLE writes (id bigserial primary key, node text, seq int)"); err != nil {
		t.Fatal(err)
	}
	var windows []float64
	split := 0
	for i := 0; i < trials; i++ {
		c.waitStreaming(180*time.Second, 2)
		old := c.leader()
		idx := 0
		for j, n := range c.nodes {
			if n == old {
				idx = j
			}
		}
		w := startWriter(t, c.nodes, 100*time.Millisecond)
		time.Sleep(2 * time.Second)
		killedAt := time.Now()
		servers[idx].Kill()
		old.KillAll()
		nl := c.waitLeader(120*time.Second, old)
		testenv.WaitFor(t, 60*time.Second, "write on new leader", func() error {
			if firstOKAfter(w.snapshot(), nl.Name, killedAt).IsZero() {
				return fmt.Errorf("none")
			}
			return nil
		})
		rs := w.Stop()
		first := firstOKAfter(rs, nl.Name, killedAt)
		windows = append(windows, first.Sub(killedAt).Seconds())
		if !lastOK(rs, old.Name).Before(first) {
			split++
		}
		servers[idx].Start()
		servers[idx].WaitLeader(60 * time.Second)
		servers[idx].WaitVoters(3, 120*time.Second)
		old.Start()
	}
	sort.Float64s(windows)
	fmt.Println("| configuration | scenario | write-unavailability window |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| pgnode (ttl 20/5/5 + fenced alive check) | host loss (node's Consul agent + all processes killed) | median %.1f s (min %.1f, max %.1f), split brain in %d/%d |\n",
		windows[len(windows)/2], windows[0], windows[len(windows)-1], split, trials)
}

// TestAgentOverheadBench measures the agent's own cost: time from `pgnode run` to
// Patroni's exec, and pgnode's resident memory while Patroni runs (ci/bench-failover.sh).
func TestAgentOverheadBench(t *testing.T) {
	if os.Getenv("PGNODE_BENCH") != "1" {
		t.Skip("SKIP: benchmark; run ci/bench-failover.sh")
	}
	c := startCluster(t, testenv.NewPorts(25800), "overhead", 1, nil)
	n := c.nodes[0]
	time.Sleep(5 * time.Second)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	rss := ""
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rss = strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
		}
	}
	ms := ""
	for _, l := range strings.Split(n.Log(), "\n") {
		if i := strings.Index(l, "agent_start_to_exec_ms="); i >= 0 {
			ms = strings.Fields(l[i+len("agent_start_to_exec_ms="):])[0]
		}
	}
	fmt.Println("| agent metric | value |")
	fmt.Println("|---|---|")
	fmt.Printf("| pgnode run start → Patroni exec | %s ms |\n", ms)
	fmt.Printf("| pgnode RSS while Patroni runs | %s |\n", rss)
}

// TestFailoverSoak runs a 3-node cluster under a writer for PGNODE_SOAK_MINUTES (default
// 10) with both cores saturated by busy loops and the leader's Patroni paused (SIGSTOP)
// for 3 s every 30 s, which also stalls its REST API; it reports leader changes (false
// failovers) and failed writes. Run by ci/soak-failover.sh (PGNODE_SOAK=1).
func TestFailoverSoak(t *testing.T) {
	if os.Getenv("PGNODE_SOAK") != "1" {
		t.Skip("SKIP: soak; run ci/soak-failover.sh")
	}
	minutes := 10
	if n, err := strconv.Atoi(os.Getenv("PGNODE_SOAK_MINUTES")); err == nil && n > 0 {
		minutes = n
	}
	c := startCluster(t, testenv.NewPorts(25900), "soak", 3, nil)
	ctx := context.Background()
	if err := c.leader().Exec(ctx, "CREATE TABLE writes (id bigserial primary key, node text, seq int)"); err != nil {
		t.Fatal(err)
	}
	stopBurn := make(chan struct{})
	var burners sync.WaitGroup
	for i := 0; i < 2; i++ {
		burners.Add(1)
		go func() {
			defer burners.Done()
			x := 0
			for {
				select {
				case <-stopBurn:
					return
				default:
					for j := 0; j < 1_000_000; j++ {
						x += j
					}
				}
			}
		}()
	}
	lw := watchLeaders(c.nodes)
	w := startWriter(t, c.nodes, 100*time.Millisecond)
	end := time.Now().Add(time.Duration(minutes) * time.Minute)
	pauses := 0
	for time.Now().Before(end) {
		time.Sleep(30 * time.Second)
		if l := c.leader(); l != nil {
			if pid := l.PatroniPid(); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGSTOP)
				time.Sleep(3 * time.Second)
				_ = syscall.Kill(pid, syscall.SIGCONT)
				pauses++
			}
		}
	}
	rs := w.Stop()
	close(stopBurn)
	burners.Wait()
	lw.Stop()
	changes, doubles := lw.counts()
	failed, ok := 0, 0
	leaderName := c.leader().Name
	for _, r := range rs {
		if r.node == leaderName {
			if r.ok {
				ok++
			} else {
				failed++
			}
		}
	}
	fmt.Println("| soak | value |")
	fmt.Println("|---|---|")
	fmt.Printf("| duration | %d min, 2 busy cores, leader's Patroni paused 3 s × %d |\n", minutes, pauses)
	fmt.Printf("| leader changes (false failovers) | %d |\n", changes)
	fmt.Printf("| samples with two primaries | %d |\n", doubles)
	fmt.Printf("| writes on the leader ok / failed | %d / %d |\n", ok, failed)
}
