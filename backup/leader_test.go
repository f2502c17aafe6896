package backup

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"pgnode/ci/testenv"
)

// patroniStub answers GET /patroni like Patroni's REST API does ({"state": ..., "role": ...});
// the role is what the test sets. PostgreSQL behind it is real.
func patroniStub(t *testing.T, role *atomic.Value) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/patroni" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, `{"state": "running", "role": %q, "server_version": 150000, "patroni": {"version": "3.0.2", "scope": "bk-test"}}`, role.Load().(string))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// startStandby makes a streaming standby of p with pg_basebackup -R.
func startStandby(t *testing.T, p *pgServer) *pgServer {
	t.Helper()
	s := &pgServer{t: t, bin: p.bin, dir: p.dir, port: ports.Next(t), cred: p.cred}
	s.data = filepath.Join(p.dir, "standby")
	s.logPath = filepath.Join(p.dir, "standby.log")
	if err := s.run("pg_basebackup", "-D", s.data, "-R", "-X", "stream", "-h", p.dir, "-p", fmt.Sprint(p.port), "-U", "postgres"); err != nil {
		t.Fatalf("pg_basebackup: %v", err)
	}
	s.appendConf(fmt.Sprintf("port = %d\n", s.port))
	s.start()
	t.Cleanup(s.stop)
	return s
}

// The leader check asks Patroni (role) and confirms with pg_is_in_recovery() on real
// PostgreSQL 15: Patroni saying "master" is not enough while PostgreSQL is a standby.
func TestLeaderCheckRealPostgres(t *testing.T) {
	captureLogs(t)
	primary := startPG(t, "")
	standby := startStandby(t, primary)
	var role atomic.Value
	api := patroniStub(t, &role)
	for _, tc := range []struct {
		name   string
		pg     *pgServer
		role   string
		leader bool
		reason string
	}{
		{"primary, Patroni master", primary, "master", true, ""},
		{"primary, Patroni primary (Patroni 4)", primary, "primary", true, ""},
		{"primary, Patroni replica", primary, "replica", false, "role replica"},
		{"standby, Patroni master", standby, "master", false, "still in recovery"},
		{"standby, Patroni replica", standby, "replica", false, "role replica"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			role.Store(tc.role)
			n := tc.pg.node("n")
			n.PatroniURL = api.URL
			leader, reason, err := checkLeader(context.Background(), n)
			if err != nil || leader != tc.leader || !strings.Contains(reason, tc.reason) {
				t.Fatalf("got %v %q %v", leader, reason, err)
			}
		})
	}

	// As in the image: the socket authenticates the superuser by peer only, and the agent
	// runs as root. pgx is refused; the check falls back to psql as the postgres user.
	if err := os.WriteFile(filepath.Join(primary.data, "pg_hba.conf"), []byte("local all postgres peer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	primary.psql("postgres", "SELECT pg_reload_conf()")
	role.Store("master")
	n := primary.node("n")
	n.PatroniURL = api.URL
	if leader, reason, err := checkLeader(context.Background(), n); err != nil || !leader {
		t.Fatalf("peer-only socket with the postgres credential: %v %q %v", leader, reason, err)
	}
	n.Credential = nil
	if _, _, err := checkLeader(context.Background(), n); err == nil || !strings.Contains(err.Error(), "Peer authentication failed") {
		t.Fatalf("peer-only socket as root without a credential: want a peer authentication error, got %v", err)
	}

	n.PatroniURL = "http://127.0.0.1:1"
	if _, _, err := checkLeader(context.Background(), n); err == nil {
		t.Fatal("unreachable Patroni: no error")
	}
}

// `pgnode backup push` on a replica refuses without running wal-g; on the leader it
// switches WAL, pushes and applies retention; list/wal-show print wal-g's output.
func TestCLIPush(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	primary := startPG(t, "")
	standby := startStandby(t, primary)
	var role atomic.Value
	api := patroniStub(t, &role)
	bin, dir := standIn(t)
	cfg := testConfig(bin)
	cfg.KeepFull = 1

	nodeFor := func(p *pgServer, name string) Node {
		n := p.node(name)
		n.PatroniURL, n.ConsulAddr, n.Credential = api.URL, consul.Addr, nil
		n.WalgConfigRW = filepath.Join(t.TempDir(), "walg.json")
		n.WalgConfigRO = filepath.Join(t.TempDir(), "walg-ro.json")
		writeWalgConfigs(t, cfg, n)
		return n
	}
	var out, errb strings.Builder
	role.Store("replica")
	if rc := CLI(context.Background(), cfg, nodeFor(standby, "b"), []string{"push"}, &out, &errb); rc != 2 || !strings.Contains(errb.String(), "not the leader") {
		t.Fatalf("push on replica: rc %d, %q", rc, errb.String())
	}
	if len(readCalls(t, dir)) != 0 {
		t.Fatal("push on a replica ran wal-g")
	}
	role.Store("master")
	primary.psql("postgres", "CREATE TABLE written_before_push AS SELECT 1 AS x")
	lsnBefore := primary.psql("postgres", "SELECT pg_current_wal_lsn()")
	for i := 0; i < 2; i++ {
		errb.Reset()
		if rc := CLI(context.Background(), cfg, nodeFor(primary, "a"), []string{"push"}, &out, &errb); rc != 0 {
			t.Fatalf("push on leader: rc %d, %q", rc, errb.String())
		}
	}
	// pg_switch_wal() leaves the insert position at a segment boundary.
	if atBoundary := primary.psql("postgres", "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn) % 16777216 = 0 AND pg_current_wal_lsn() > '"+lsnBefore+"'"); atBoundary != "t" {
		t.Fatalf("push did not switch WAL (before %s, now %s)", lsnBefore, primary.psql("postgres", "SELECT pg_current_wal_lsn()"))
	}
	var seq []string
	for _, c := range readCalls(t, dir) {
		seq = append(seq, c.cmd())
	}
	want := "backup-push " + primary.data + "\nbackup-list --json --detail\ndelete retain FULL 1 --confirm"
	if got := strings.Join(seq, "\n"); got != want+"\n"+want {
		t.Fatalf("calls:\n%s", got)
	}
	if !strings.Contains(out.String(), "pushed in") {
		t.Fatalf("push output %q", out.String())
	}
	out.Reset()
	if rc := CLI(context.Background(), cfg, nodeFor(primary, "a"), []string{"list"}, &out, &errb); rc != 0 || strings.Count(out.String(), "base_") != 1 {
		t.Fatalf("list after retention 1: rc %d %q", rc, out.String())
	}
	if rc := CLI(context.Background(), cfg, nodeFor(primary, "a"), []string{"frobnicate"}, &out, &errb); rc != 2 {
		t.Fatalf("unknown command rc %d", rc)
	}
}
