package rolling

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pgnode/ci/e2e"
	"pgnode/ci/testenv"
)

// nodes are the compose services running pgnode; node pgN uses consulN as its agent.
var nodes = []string{"pg1", "pg2", "pg3"}

var hostNum = map[string]int{"pg1": 11, "pg2": 12, "pg3": 13}

func image() string       { return envOr("PGNODE_IMAGE", "pgnode:pg17") }
func consulImage() string { return envOr("CONSUL_IMAGE", "pgnode-consul:1.8.7") }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// requireImages skips (one SKIP line) only without a Docker daemon; a missing image fails.
func requireImages(t *testing.T) {
	t.Helper()
	testenv.RequireDocker(t)
	for _, img := range []string{image(), consulImage()} {
		if !testenv.ImageExists(img) {
			t.Fatalf("image %s is missing: build it with ci/setup-images.sh (ci/test.sh does)", img)
		}
	}
}

// cluster is one compose project of testdata/docker-compose.yml.
type cluster struct {
	t        *testing.T
	p        *testenv.ComposeProject
	password string
}

func startCluster(t *testing.T, extra map[string]string) *cluster {
	t.Helper()
	requireImages(t)
	env := map[string]string{
		"PGNODE_IMAGE":                 image(),
		"CONSUL_IMAGE":                 consulImage(),
		"POSTGRES_SUPERUSER_PASSWORD":  testenv.RandomSecret(18),
		"POSTGRES_REPLICATOR_PASSWORD": testenv.RandomSecret(18),
		"POSTGRES_REWIND_PASSWORD":     testenv.RandomSecret(18),
		"PATRONI_RESTAPI_PASSWORD":     testenv.RandomSecret(18),
		"CONSUL_GOSSIP_KEY":            testenv.GossipKey(),
	}
	for k, v := range extra {
		env[k] = v
	}
	file, err := filepath.Abs(filepath.Join("testdata", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, password: env["POSTGRES_SUPERUSER_PASSWORD"]}
	c.p = testenv.NewComposeProject(t, "e2eup", file, env)
	c.p.Up()
	return c
}

func (c *cluster) ip(node string) string { return fmt.Sprintf("%s.%d", c.p.Subnet, hostNum[node]) }

func (c *cluster) dsn(node, db string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s:5432/%s?sslmode=disable&connect_timeout=2", c.password, c.ip(node), db)
}

type member = testenv.Member

func (c *cluster) members() ([]member, error) {
	var urls []string
	for _, n := range nodes {
		urls = append(urls, "http://"+c.ip(n)+":8008")
	}
	return testenv.ClusterMembers(urls)
}

func describe(ms []member) string { return testenv.DescribeMembers(ms) }

// topology returns the leader when exactly one member leads and the other two stream.
func (c *cluster) topology() (string, error) {
	ms, err := c.members()
	if err != nil {
		return "", err
	}
	return testenv.Topology(ms, 3)
}

func (c *cluster) waitTopology(timeout time.Duration) string {
	c.t.Helper()
	var leader string
	testenv.WaitFor(c.t, timeout, "1 leader + 2 streaming replicas", func() error {
		l, err := c.topology()
		leader = l
		return err
	})
	return leader
}

func (c *cluster) exec(node, db, sql string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testenv.ExecSQL(ctx, c.dsn(node, db), sql); err != nil {
		c.t.Fatalf("on %s: %s: %v", node, sql, err)
	}
}

// query returns one row of a query as strings.
func (c *cluster) query(node, db, sql string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return testenv.QueryRow(ctx, c.dsn(node, db), sql)
}

func (c *cluster) mustQuery(node, db, sql string) []string {
	c.t.Helper()
	r, err := c.query(node, db, sql)
	if err != nil {
		c.t.Fatalf("on %s: %s: %v", node, sql, err)
	}
	return r
}

// agentStatus is the phase in the agent's status file ("" when unreadable).
func (c *cluster) agentStatus(node string) string {
	out, err := c.p.Exec(node, "cat", "/run/pgnode/status.json")
	if err != nil {
		return ""
	}
	var st struct {
		Phase string `json:"phase"`
	}
	if json.Unmarshal([]byte(out), &st) != nil {
		return strings.TrimSpace(out)
	}
	return st.Phase
}

func (c *cluster) writer() *e2e.Writer {
	targets := map[string]string{}
	for _, n := range nodes {
		targets[n] = c.dsn(n, "postgres")
	}
	return &e2e.Writer{Targets: targets, Interval: 50 * time.Millisecond}
}
