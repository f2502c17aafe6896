package upgrade

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"gopkg.in/yaml.v3"

	"pgnode/ci/testenv"
)

// patroniMember is a real Patroni (Debian's patroni 3.0.x) started by a test as postgres.
type patroniMember struct {
	name    string
	api     int
	pgPort  int
	dataDir string
	sock    string
	log     string
	cmd     *exec.Cmd
	done    chan struct{}
}

// startPatroni runs `patroni <config>` with a minimal configuration on loopback; the
// entrypoint's renderer does the same in the image.
func startPatroni(t testing.TB, consul *testenv.Consul, scope, name, dataDir string, major int) *patroniMember {
	t.Helper()
	bin := testenv.RequireBinary(t, "patroni", "/usr/bin/patroni")
	uid, gid := testenv.PostgresUser(t)
	work := testenv.PostgresTempDir(t)
	m := &patroniMember{name: name, api: ports.Next(t), pgPort: ports.Next(t), dataDir: dataDir, sock: work, log: filepath.Join(work, "patroni.log")}
	cfg := map[string]any{
		"scope": scope, "name": name, "namespace": "/service/",
		"restapi": map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", m.api), "connect_address": fmt.Sprintf("127.0.0.1:%d", m.api)},
		"consul":  map[string]any{"host": consul.Addr, "register_service": false},
		"bootstrap": map[string]any{
			"initdb": []any{"data-checksums", map[string]any{"encoding": "UTF8"}, map[string]any{"locale": "C.UTF-8"}},
			"dcs": map[string]any{
				"ttl": 30, "loop_wait": 2, "retry_timeout": 10,
				"postgresql": map[string]any{"use_pg_rewind": true, "parameters": map[string]any{"wal_level": "replica", "hot_standby": "on", "max_wal_senders": 5}},
			}},
		"postgresql": map[string]any{
			"listen": fmt.Sprintf("127.0.0.1:%d", m.pgPort), "connect_address": fmt.Sprintf("127.0.0.1:%d", m.pgPort),
			"use_unix_socket": true,
			"basebackup":      []any{map[string]any{"checkpoint": "fast"}},
			"data_dir":        dataDir, "bin_dir": testenv.PGBinDir(t, major), "pgpass": filepath.Join(work, "pgpass"),
			"authentication": map[string]any{
				"superuser":   map[string]any{"username": "postgres", "password": "super-secret"},
				"replication": map[string]any{"username": "replicator", "password": "repl-secret"},
				"rewind":      map[string]any{"username": "rewind_user", "password": "rewind-secret"},
			},
			"pg_hba":     []string{"local all all trust", "host all all 127.0.0.1/32 md5", "host replication replicator 127.0.0.1/32 md5"},
			"parameters": map[string]any{"unix_socket_directories": work},
		},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(work, "patroni.yml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(path, uid, gid)
	logf, err := os.Create(m.log)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, path)
	m.cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + work, "LC_ALL=C.UTF-8"}
	m.cmd.Dir = work
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func() { _ = m.cmd.Wait(); _ = logf.Close(); close(m.done) }()
	t.Cleanup(m.stop)
	return m
}

// stop stops Patroni gracefully (it stops PostgreSQL and releases its leader key).
func (m *patroniMember) stop() {
	select {
	case <-m.done:
		return
	default:
	}
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
}

func (m *patroniMember) waitRole(t testing.TB, role string) {
	t.Helper()
	testenv.WaitFor(t, 120*time.Second, m.name+" to be "+role, func() error {
		select {
		case <-m.done:
			t.Fatalf("patroni %s exited:\n%s", m.name, testenv.TailFile(m.log, 120))
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/%s", m.api, role))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("/%s answers %d; log: %s", role, resp.StatusCode, testenv.TailFile(m.log, 3))
		}
		return nil
	})
}

func (m *patroniMember) conn(ctx context.Context, t testing.TB) (*pgx.Conn, error) {
	return pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:super-secret@127.0.0.1:%d/postgres?sslmode=disable", m.pgPort))
}

func (m *patroniMember) sql(t testing.TB, user, password, q string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/postgres?sslmode=disable", user, password, m.pgPort))
	if err != nil {
		t.Fatalf("connecting to %s as %s with its password: %v", m.name, user, err)
	}
	defer c.Close(ctx)
	var s string
	if err := c.QueryRow(ctx, q).Scan(&s); err != nil {
		t.Fatalf("%s on %s: %v", q, m.name, err)
	}
	return s
}

// TestAdoptSingleServer: a plain PostgreSQL 15 server with data (initdb + pg_ctl, no
// Patroni history) is adopted by Prepare, then a real Patroni on a real Consul takes the
// leader lock with the same data, and a second Patroni member clones and streams from it.
func TestAdoptSingleServer(t *testing.T) {
	consul := testenv.StartConsul(t, ports)
	root := testenv.PostgresTempDir(t)
	data := filepath.Join(root, "data")
	testenv.InitDB(t, newMajor, data, "--data-checksums", "--encoding=UTF8", "--locale=C.UTF-8")
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(conf, "work_mem = '7MB'  # the operator's own setting")
	conf.Close()
	p := testenv.StartPG(t, newMajor, data, 0)
	p.SQL(t, "postgres", `CREATE TABLE orders (id int PRIMARY KEY, note text);
		INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, 3000) i;
		CREATE ROLE app LOGIN CONNECTION LIMIT 7 PASSWORD 'app-secret'`)
	want := p.SQL(t, "postgres", "SELECT count(*) || '/' || md5(string_agg(note, ',' ORDER BY id)) FROM orders")
	p.Stop(t)

	n := testNode(t, root)
	n.Major, n.Scope, n.ConsulAddr = newMajor, "adopt-test", consul.Addr
	out, err := Prepare(context.Background(), Config{Mode: "link"}, n)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if out.State != StateSingle || !out.Adopted || out.Upgraded || out.SystemID == "" {
		t.Fatalf("outcome: %+v", out)
	}
	if exists(filepath.Join(data, "postgresql.conf.pgnode-adopted")) == false {
		t.Fatal("the operator's postgresql.conf was not kept")
	}

	leader := startPatroni(t, consul, n.Scope, "n1", data, newMajor)
	leader.waitRole(t, "primary")
	if got := leader.sql(t, "postgres", "super-secret", "SELECT count(*) || '/' || md5(string_agg(note, ',' ORDER BY id)) FROM orders"); got != want {
		t.Fatalf("rows under Patroni: %s, want %s", got, want)
	}
	if got := leader.sql(t, "postgres", "super-secret", "SELECT current_setting('work_mem')"); got != "7MB" {
		t.Fatalf("the operator's work_mem is %s under Patroni, want 7MB", got)
	}
	if got := leader.sql(t, "postgres", "super-secret", "SELECT rolconnlimit::text FROM pg_roles WHERE rolname = 'app'"); got != "7" {
		t.Fatalf("existing role app was changed: connection limit %s", got)
	}
	if got := leader.sql(t, "rewind_user", "rewind-secret", "SELECT has_function_privilege('pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)', 'execute')::text"); got != "true" {
		t.Fatalf("rewind user lacks pg_rewind's grants: %s", got)
	}
	if got := leader.sql(t, "app", "app-secret", "SELECT current_user"); got != "app" {
		t.Fatalf("existing role's password changed: %s", got)
	}
	sysid := leader.sql(t, "postgres", "super-secret", "SELECT system_identifier::text FROM pg_control_system()")
	if sysid != out.SystemID {
		t.Fatalf("Patroni runs system %s, adopted %s", sysid, out.SystemID)
	}

	// A replica joins: Patroni clones it with pg_basebackup as replicator (password set by
	// the adoption) and it streams.
	rroot := testenv.PostgresTempDir(t)
	replica := startPatroni(t, consul, n.Scope, "n2", filepath.Join(rroot, "data"), newMajor)
	replica.waitRole(t, "replica")
	leader.sql(t, "postgres", "super-secret", "INSERT INTO orders VALUES (3001, 'after adoption') RETURNING id::text")
	testenv.WaitFor(t, 60*time.Second, "the row to reach the replica", func() error {
		got := replica.sql(t, "postgres", "super-secret", "SELECT count(*)::text FROM orders")
		if got != "3001" {
			return fmt.Errorf("replica has %s rows", got)
		}
		return nil
	})
	if st := leader.sql(t, "postgres", "super-secret", "SELECT coalesce(string_agg(state, ','), '') FROM pg_stat_replication"); !strings.Contains(st, "streaming") {
		t.Fatalf("replication state on the leader: %q", st)
	}
}
