package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
	"pgnode/internal/command"
)

// patroniNode runs a real Patroni (Debian's 3.0.x under /usr/bin/python3) with PostgreSQL 15
// on loopback against the given Consul agent.
func startPatroni(t *testing.T, consul *testenv.Consul, name string) Node {
	t.Helper()
	patroni := testenv.RequireBinary(t, "patroni", "/usr/bin/patroni")
	dir := testenv.PostgresTempDir(t)
	apiPort, pgPort := ports.Next(t), ports.Next(t)
	cfg := fmt.Sprintf(`scope: bk-patroni
name: %[1]s
restapi: {listen: "127.0.0.1:%[2]d", connect_address: "127.0.0.1:%[2]d"}
consul: {host: "%[3]s"}
bootstrap:
  dcs: {ttl: 30, loop_wait: 2, retry_timeout: 10}
  initdb: [{encoding: UTF8}, data-checksums]
  pg_hba: ["local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
postgresql:
  listen: "127.0.0.1:%[4]d"
  connect_address: "127.0.0.1:%[4]d"
  data_dir: %[5]s/data
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: %[5]s/pgpass
  authentication:
    superuser: {username: postgres, password: pw}
    replication: {username: postgres, password: pw}
  parameters: {unix_socket_directories: "%[5]s", fsync: "off"}
  pg_hba: ["local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
`, name, apiPort, consul.Addr, pgPort, dir)
	path := filepath.Join(dir, "patroni.yml")
	uid, gid := testenv.PostgresUser(t)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(path, uid, gid)
	ctx, cancel := context.WithCancel(context.Background())
	p, err := command.Start(ctx, command.Spec{Path: "/usr/bin/python3", Args: []string{patroni, path}, Name: "patroni-" + name,
		Credential: postgresCred(t), Dir: dir, Quiet: true, KillGrace: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = p.Wait() })
	n := Node{Scope: "bk-patroni", Name: name, Major: 15, DataDir: dir + "/data", PGHost: dir, PGPort: pgPort,
		SuperUser: "postgres", PatroniURL: fmt.Sprintf("http://127.0.0.1:%d", apiPort), ConsulAddr: consul.Addr}
	return n
}

// With real Patroni: the bootstrapped leader is the leader; a replica of it is not.
func TestLeaderCheckRealPatroni(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	leader := startPatroni(t, consul, "p1")
	testenv.WaitFor(t, 90*time.Second, "p1 to lead", func() error {
		ok, reason, err := checkLeader(context.Background(), leader)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New(reason)
		}
		return nil
	})
	replica := startPatroni(t, consul, "p2")
	testenv.WaitFor(t, 90*time.Second, "p2 running as replica", func() error {
		role, err := patroniRole(context.Background(), replica)
		if err != nil {
			return err
		}
		if role != "replica" {
			return fmt.Errorf("role %q", role)
		}
		return nil
	})
	ok, reason, err := checkLeader(context.Background(), replica)
	if err != nil || ok || reason != "Patroni reports role replica" {
		t.Fatalf("replica: %v %q %v", ok, reason, err)
	}
}

// With real Patroni and the real leader check: the schedule runs on the leader only, and a
// switchover moves it to the new leader.
func TestScheduleFollowsRealPatroniSwitchover(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	cfg := testConfig(bin)
	cfg.Schedule = "@every 1s"
	n1 := startPatroni(t, consul, "p1")
	testenv.WaitFor(t, 90*time.Second, "p1 to lead", func() error {
		if ok, reason, err := checkLeader(context.Background(), n1); err != nil || !ok {
			return fmt.Errorf("%s %v", reason, err)
		}
		return nil
	})
	n2 := startPatroni(t, consul, "p2")
	testenv.WaitFor(t, 90*time.Second, "p2 streaming", func() error {
		if role, err := patroniRole(context.Background(), n2); err != nil || role != "replica" {
			return fmt.Errorf("role %q %v", role, err)
		}
		return nil
	})
	var ms []*Manager
	for _, n := range []Node{n1, n2} {
		n.WalgConfigRW = filepath.Join(t.TempDir(), "walg.json")
		n.WalgConfigRO = filepath.Join(t.TempDir(), "walg-ro.json")
		writeWalgConfigs(t, cfg, n)
		m := NewManager(cfg, n)
		m.walg.killGrace = time.Second
		ms = append(ms, m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for _, m := range ms {
		go func() { _ = m.Start(ctx); done <- struct{}{} }()
	}
	defer func() { cancel(); <-done; <-done }()
	testenv.WaitFor(t, 30*time.Second, "backups on p1", func() error {
		if pushesFrom(readCalls(t, dir), ms[0], 0) < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if n := pushesFrom(readCalls(t, dir), ms[1], 0); n != 0 {
		t.Fatalf("replica p2 ran %d backups", n)
	}
	// Switchover through Patroni's REST API.
	resp, err := http.Post(n1.PatroniURL+"/switchover", "application/json", strings.NewReader(`{"leader": "p1", "candidate": "p2"}`))
	if err != nil {
		t.Fatalf("switchover: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("switchover: HTTP %d %s", resp.StatusCode, body)
	}
	testenv.WaitFor(t, 90*time.Second, "p2 to lead", func() error {
		if ok, reason, err := checkLeader(context.Background(), n2); err != nil || !ok {
			return fmt.Errorf("%s %v", reason, err)
		}
		return nil
	})
	time.Sleep(1500 * time.Millisecond)
	mark := time.Now().UnixNano()
	testenv.WaitFor(t, 30*time.Second, "backups on p2", func() error {
		if pushesFrom(readCalls(t, dir), ms[1], mark) < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if n := pushesFrom(readCalls(t, dir), ms[0], mark); n != 0 {
		t.Fatalf("old leader p1 ran %d backups after the switchover", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "OVERLAP")); err == nil {
		t.Fatal("two backups overlapped")
	}
}
