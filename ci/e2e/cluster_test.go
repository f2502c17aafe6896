package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"pgnode/ci/testenv"
)

// Nodes are the demo's database services; each pgN uses consulN as its Consul agent.
var Nodes = []string{"pg1", "pg2", "pg3"}

// nodeIP maps a demo service to its host number on the demo subnet (compose/demo).
var nodeIP = map[string]int{"pg1": 11, "pg2": 12, "pg3": 13, "consul1": 21, "consul2": 22, "consul3": 23, "minio": 30}

const (
	scope        = "e2e"
	healthyLimit = 4 * time.Minute
)

var setupOnce sync.Once

// setupImages runs ci/setup-images.sh once per test binary: it builds the base and the
// images when missing or when their inputs changed (a second or so otherwise), so the suite
// never tests a stale image. With PGNODE_E2E_PREBUILT=1 (CI's e2e job, which pulls the
// image its build job pushed) nothing is built: the images must exist.
func setupImages(t testing.TB) {
	t.Helper()
	testenv.RequireDocker(t)
	var err error
	var out []byte
	setupOnce.Do(func() {
		if os.Getenv("PGNODE_E2E_PREBUILT") == "1" {
			return
		}
		root := testenv.RepoRoot(t)
		cmd := exec.Command("bash", filepath.Join(root, "ci", "setup-images.sh"))
		cmd.Dir = root
		out, err = cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("ci/setup-images.sh: %w\n%s", err, out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{image(), consulImage()} {
		if !testenv.ImageExists(img) {
			t.Fatalf("image %s missing after ci/setup-images.sh", img)
		}
	}
}

func image() string       { return envOr("PGNODE_IMAGE", "pgnode:pg17") }
func consulImage() string { return envOr("CONSUL_IMAGE", "pgnode-consul:1.8.7") }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Cluster is a running demo project (compose/demo/docker-compose.yml) for one test.
type Cluster struct {
	t        testing.TB
	P        *testenv.ComposeProject
	Password string
	started  time.Time
	// ColdStart is the time from `compose up` to all three DB nodes healthy.
	ColdStart time.Duration
}

// StartDemo brings up the demo under a unique project name and waits for 3 healthy nodes.
// extra overrides variables of compose/demo (e.g. PATRONI_SYNCHRONOUS_MODE).
func StartDemo(t testing.TB, extra map[string]string) *Cluster {
	t.Helper()
	setupImages(t)
	root := testenv.RepoRoot(t)
	env := map[string]string{
		"PGNODE_IMAGE":                 image(),
		"CONSUL_IMAGE":                 consulImage(),
		"PATRONI_SCOPE":                scope,
		"POSTGRES_SUPERUSER_PASSWORD":  testenv.RandomSecret(18),
		"POSTGRES_REPLICATOR_PASSWORD": testenv.RandomSecret(18),
		"POSTGRES_REWIND_PASSWORD":     testenv.RandomSecret(18),
		"PATRONI_RESTAPI_PASSWORD":     testenv.RandomSecret(18),
		"CONSUL_GOSSIP_KEY":            testenv.GossipKey(),
		"MINIO_ROOT_PASSWORD":          testenv.RandomSecret(18),
	}
	for k, v := range extra {
		env[k] = v
	}
	// PGNODE_E2E_ENV="K=V;K=V" overrides demo variables for experiments
	// (e.g. PGNODE_FAST_FAILOVER=false).
	for _, kv := range strings.Split(os.Getenv("PGNODE_E2E_ENV"), ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			env[k] = v
		}
	}
	c := &Cluster{t: t, Password: env["POSTGRES_SUPERUSER_PASSWORD"]}
	c.P = testenv.NewComposeProject(t, "e2e", filepath.Join(root, "compose", "demo", "docker-compose.yml"), env)
	c.started = time.Now()
	c.P.Up()
	c.P.WaitHealthy(healthyLimit, Nodes...)
	c.ColdStart = time.Since(c.started)
	t.Logf("demo %s: 3 nodes healthy %.1fs after compose up", c.P.Name, c.ColdStart.Seconds())
	return c
}

// IP returns a demo service's static address.
func (c *Cluster) IP(service string) string {
	return fmt.Sprintf("%s.%d", c.P.Subnet, nodeIP[service])
}

// DSN returns a connection string for the superuser on node (from the host, by IP).
func (c *Cluster) DSN(node string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s:5432/postgres?sslmode=disable&connect_timeout=2", c.Password, c.IP(node))
}

// Member is one row of Patroni's GET /cluster.
type Member = testenv.Member

// Members asks Patroni's REST API of the first reachable node (skipping the given ones) for
// the cluster's members.
func (c *Cluster) Members(skip ...string) ([]Member, error) {
	var urls []string
	for _, n := range Nodes {
		if !contains(skip, n) {
			urls = append(urls, "http://"+c.IP(n)+":8008")
		}
	}
	return testenv.ClusterMembers(urls)
}

// WaitTopology waits until exactly one member is the running leader and want-1 replicas
// are streaming from it (members named in skip are ignored and not asked), and returns
// the leader's name.
func (c *Cluster) WaitTopology(timeout time.Duration, want int, skip ...string) string {
	c.t.Helper()
	var leader string
	testenv.WaitFor(c.t, timeout, fmt.Sprintf("1 leader + %d streaming replicas", want-1), func() error {
		ms, err := c.Members(skip...)
		if err != nil {
			return err
		}
		leaders, streaming := []string{}, 0
		for _, m := range ms {
			if contains(skip, m.Name) {
				continue
			}
			switch {
			case m.Role == "leader" && m.State == "running":
				leaders = append(leaders, m.Name)
			case m.Role != "leader" && m.State == "streaming":
				streaming++
			}
		}
		if len(leaders) != 1 || streaming != want-1 {
			return fmt.Errorf("leaders %v, %d streaming replicas: %s", leaders, streaming, describe(ms))
		}
		// With failsafe_mode Patroni lets only members listed in the /failsafe key take
		// over, and the leader writes it a loop after a member joins: a fault injected
		// before that leaves no candidate. Wait until every member is listed.
		if missing := c.missingFromFailsafe(ms, skip); len(missing) > 0 {
			return fmt.Errorf("members %v not yet in the failsafe key", missing)
		}
		leader = leaders[0]
		return nil
	})
	return leader
}

// missingFromFailsafe lists the running members the DCS's /failsafe key does not name yet.
func (c *Cluster) missingFromFailsafe(ms []Member, skip []string) []string {
	var out string
	for _, srv := range []string{"consul1", "consul2", "consul3"} {
		if o, err := c.P.Exec(srv, "consul", "kv", "get", "service/"+scope+"/failsafe"); err == nil {
			out = o
			break
		}
	}
	var missing []string
	for _, m := range ms {
		if contains(skip, m.Name) {
			continue
		}
		if !strings.Contains(out, `"`+m.Name+`"`) {
			missing = append(missing, m.Name)
		}
	}
	return missing
}

// Exec runs SQL on node from the host and fails the test on error.
func (c *Cluster) Exec(node, sql string, args ...any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(node))
	if err != nil {
		c.t.Fatalf("connecting to %s: %v", node, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		c.t.Fatalf("on %s: %s: %v", node, sql, err)
	}
}

// QueryString runs a one-value query on node.
func (c *Cluster) QueryString(node, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(node))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var s string
	err = conn.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

// Writer returns a writer aimed at every node (not started).
func (c *Cluster) Writer() *Writer {
	targets := map[string]string{}
	for _, n := range Nodes {
		targets[n] = c.DSN(n)
	}
	return &Writer{Targets: targets, Interval: 50 * time.Millisecond}
}

// Patronictl runs patronictl inside a node's container.
func (c *Cluster) Patronictl(node string, args ...string) (string, error) {
	return c.P.Exec(node, append([]string{"patronictl"}, args...)...)
}

// LocalWriter starts a loop inside node's container that inserts a row every 100 ms over the
// unix socket and appends the wall-clock time of every acknowledged commit to a file in the
// container: it sees what a partitioned node accepts when nobody outside can reach it.
// Rows use seqs from base up. Collect with LocalAcks.
func (c *Cluster) LocalWriter(node string, base int64) {
	c.t.Helper()
	script := fmt.Sprintf(`i=%d; while :; do i=$((i+1));
  if psql -h /var/run/postgresql -U postgres -qAtX -c "INSERT INTO e2e_writes (node, seq) VALUES ('%s', $i)" >/dev/null 2>&1;
  then echo "$i $(date +%%s.%%N)" >> /tmp/e2e-acks; fi; sleep 0.1; done`, base, node)
	if out, err := c.P.Exec(node, "bash", "-c", "rm -f /tmp/e2e-acks"); err != nil {
		c.t.Fatalf("local writer on %s: %v\n%s", node, err, out)
	}
	testenv.Docker(c.t, "exec", "-d", "-u", "postgres", c.P.Container(node), "bash", "-c", script)
}

// LocalAcks stops the loop started by LocalWriter and returns its acks.
func (c *Cluster) LocalAcks(node string) []Ack {
	c.t.Helper()
	_, _ = c.P.Exec(node, "bash", "-c", "pkill -f e2e-acks || true")
	out, err := c.P.Exec(node, "cat", "/tmp/e2e-acks")
	if err != nil && !strings.Contains(out, "No such file") {
		c.t.Fatalf("reading local acks of %s: %v\n%s", node, err, out)
	}
	var acks []Ack
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		seq, err1 := strconv.ParseInt(f[0], 10, 64)
		ts, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			continue
		}
		sec := int64(ts)
		acks = append(acks, Ack{Node: node, Seq: seq, At: time.Unix(sec, int64((ts-float64(sec))*1e9))})
	}
	return acks
}

func describe(ms []Member) string {
	var b []string
	for _, m := range ms {
		b = append(b, fmt.Sprintf("%s=%s/%s/tl%d", m.Name, m.Role, m.State, m.Timeline))
	}
	return strings.Join(b, " ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
