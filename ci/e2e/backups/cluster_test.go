package backups

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"pgnode/ci/testenv"
)

var hostNum = map[string]int{"pg1": 11, "pg2": 12, "pg3": 13, "pgr": 14, "minio": 30}

func image() string       { return envOr("PGNODE_IMAGE", "pgnode:pg17") }
func consulImage() string { return envOr("CONSUL_IMAGE", "pgnode-consul:1.8.7") }
func minioImage() string  { return envOr("MINIO_IMAGE", "pgnode-minio:local") }

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
	for _, img := range []string{image(), consulImage(), minioImage()} {
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

// startCluster starts Consul, MinIO (bucket created by minio-init) and the given pgnode
// services of testdata/docker-compose.yml with img as the pgnode image.
func startCluster(t *testing.T, img string, extra map[string]string, services ...string) *cluster {
	t.Helper()
	mkbucket := filepath.Join(testenv.RepoRoot(t), "compose", "demo", "mkbucket.py")
	env := map[string]string{
		"PGNODE_IMAGE":                 img,
		"MINIO_IMAGE":                  minioImage(),
		"MINIO_ROOT_PASSWORD":          testenv.RandomSecret(18),
		"MKBUCKET_PY":                  mkbucket,
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
	c.p = testenv.NewComposeProject(t, "e2ebk", file, env)
	c.p.Up("consul1", "consul2", "consul3", "minio")
	c.p.Compose("run", "--rm", "--no-deps", "minio-init")
	c.p.Up(services...)
	return c
}

func (c *cluster) ip(node string) string { return fmt.Sprintf("%s.%d", c.p.Subnet, hostNum[node]) }

func (c *cluster) dsn(node, db string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s:5432/%s?sslmode=disable&connect_timeout=2", c.password, c.ip(node), db)
}

type member struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Timeline int    `json:"timeline"`
}

func (c *cluster) members(among []string) ([]member, error) {
	cl := &http.Client{Timeout: 2 * time.Second}
	var last error
	for _, n := range among {
		resp, err := cl.Get("http://" + c.ip(n) + ":8008/cluster")
		if err != nil {
			last = err
			continue
		}
		var body struct {
			Members []member `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil {
			last = err
			continue
		}
		sort.Slice(body.Members, func(i, j int) bool { return body.Members[i].Name < body.Members[j].Name })
		return body.Members, nil
	}
	return nil, fmt.Errorf("no Patroni API answered: %v", last)
}

func describe(ms []member) string {
	var b []string
	for _, m := range ms {
		b = append(b, fmt.Sprintf("%s=%s/%s/tl%d", m.Name, m.Role, m.State, m.Timeline))
	}
	return strings.Join(b, " ")
}

// topology returns the leader when exactly one of among leads and the others stream.
func (c *cluster) topology(among []string) (string, error) {
	ms, err := c.members(among)
	if err != nil {
		return "", err
	}
	var leaders []string
	streaming := 0
	for _, m := range ms {
		switch {
		case m.Role == "leader" && m.State == "running":
			leaders = append(leaders, m.Name)
		case m.Role != "leader" && m.State == "streaming":
			streaming++
		}
	}
	if len(leaders) != 1 || streaming != len(among)-1 || len(ms) != len(among) {
		return "", fmt.Errorf("leaders %v, %d streaming: %s", leaders, streaming, describe(ms))
	}
	return leaders[0], nil
}

func (c *cluster) waitTopology(timeout time.Duration, among ...string) string {
	c.t.Helper()
	var leader string
	testenv.WaitFor(c.t, timeout, fmt.Sprintf("1 leader + %d streaming replicas", len(among)-1), func() error {
		l, err := c.topology(among)
		leader = l
		return err
	})
	return leader
}

func (c *cluster) exec(node, db, sql string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dsn(node, db))
	if err != nil {
		c.t.Fatalf("connecting to %s: %v", node, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		c.t.Fatalf("on %s: %s: %v", node, sql, err)
	}
}

// query returns one row of a query as strings.
func (c *cluster) query(node, db, sql string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dsn(node, db))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, fmt.Errorf("%s: no row (%v)", sql, rows.Err())
	}
	vals, err := rows.Values()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = fmt.Sprint(v)
	}
	return out, nil
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
