package backup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"pgnode/ci/testenv"
)

// switchableLeader is a leader check the test flips (the real check is covered against
// real PostgreSQL in leader_test.go).
type switchableLeader struct{ on atomic.Bool }

func (s *switchableLeader) check(context.Context) (bool, string, error) {
	if s.on.Load() {
		return true, "", nil
	}
	return false, "Patroni reports role replica", nil
}

func newTestManager(t *testing.T, cfg Config, name, consul string) (*Manager, *switchableLeader) {
	t.Helper()
	m := NewManager(cfg, testNode(t, cfg, name, consul))
	l := &switchableLeader{}
	m.leaderCheck = l.check
	m.walg.killGrace = time.Second
	return m, l
}

func pushesFrom(calls []fakeCall, m *Manager, after int64) int {
	n := 0
	for _, c := range callsWith(calls, "backup-push") {
		if c.cmd() == "backup-push "+m.node.DataDir && c.Start > after {
			n++
		}
	}
	return n
}

// Schedule "@every 1s" on two nodes: only the leader backs up; after a failover only the
// new leader does. Real Consul dev agent, stand-in wal-g.
func TestScheduleRunsOnlyOnLeaderAndFollowsFailover(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	cfg := testConfig(bin)
	cfg.Schedule = "@every 1s"
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	b, _ := newTestManager(t, cfg, "node-b", consul.Addr)
	la.on.Store(true)
	lb := &switchableLeader{}
	b.leaderCheck = lb.check

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, m := range []*Manager{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = m.Start(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()

	testenv.WaitFor(t, 30*time.Second, "two backups on node-a", func() error {
		if n := pushesFrom(readCalls(t, dir), a, 0); n < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if n := pushesFrom(readCalls(t, dir), b, 0); n != 0 {
		t.Fatalf("replica node-b ran %d backups", n)
	}
	// Failover: node-b leads now.
	la.on.Store(false)
	lb.on.Store(true)
	time.Sleep(1500 * time.Millisecond) // let a job that checked leadership before the flip finish
	mark := time.Now().UnixNano()
	testenv.WaitFor(t, 30*time.Second, "two backups on node-b", func() error {
		if n := pushesFrom(readCalls(t, dir), b, mark); n < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if n := pushesFrom(readCalls(t, dir), a, mark); n != 0 {
		t.Fatalf("old leader node-a ran %d backups after the failover", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "OVERLAP")); err == nil {
		t.Fatal("two backups overlapped")
	}
	if st := b.Status(); st.LastSuccess.IsZero() || st.ConsecutiveFailures != 0 {
		t.Fatalf("node-b status %+v", st)
	}
}

// Two nodes that both believe they lead (a partition) race for the same slots: Consul's lock
// lets one run at a time, and a slot done by one is not redone by the other.
func TestTwoLeadersNeverOverlap(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	setBehavior(t, dir, map[string]any{"sleep_ms": map[string]int{"backup-push": 700}})
	cfg := testConfig(bin)
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	b, lb := newTestManager(t, cfg, "node-b", consul.Addr)
	la.on.Store(true)
	lb.on.Store(true)

	slot := time.Date(2026, 1, 1, 5, 20, 0, 0, time.UTC)
	for round := 0; round < 3; round++ {
		slot = slot.Add(24 * time.Hour)
		var wg sync.WaitGroup
		for _, m := range []*Manager{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); m.RunScheduled(context.Background(), slot) }()
		}
		wg.Wait()
		// A late node (clock skew) runs the same slot again: already done.
		b.RunScheduled(context.Background(), slot)
	}
	calls := readCalls(t, dir)
	pushes := callsWith(calls, "backup-push")
	if len(pushes) != 3 {
		t.Fatalf("want exactly one backup per slot (3), got %d", len(pushes))
	}
	for i := 1; i < len(pushes); i++ {
		if pushes[i].Start < pushes[i-1].End {
			t.Fatalf("backups %d and %d overlapped", i-1, i)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "OVERLAP")); err == nil {
		t.Fatal("the stand-in saw two backups at once")
	}
	skipped := a.st.runs["skipped_locked"] + b.st.runs["skipped_locked"] + a.st.runs["skipped_done"] + b.st.runs["skipped_done"]
	if skipped < 3+3 {
		t.Fatalf("want the loser of each race and every late run skipped, runs a=%v b=%v", a.st.runs, b.st.runs)
	}
}

// When Consul invalidates the lock's session mid-backup (what a partition does), the
// holder kills its wal-g at once.
func TestLostLockKillsBackup(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	setBehavior(t, dir, map[string]any{"hang": []string{"backup-push"}})
	cfg := testConfig(bin)
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	la.on.Store(true)
	done := make(chan struct{})
	go func() { a.RunScheduled(context.Background(), time.Time{}); close(done) }()

	client, err := consulClient(a.node)
	if err != nil {
		t.Fatal(err)
	}
	var session string
	testenv.WaitFor(t, 20*time.Second, "backup running under the lock", func() error {
		kv, _, err := client.KV().Get(lockKey("bk-test"), nil)
		if err != nil || kv == nil || kv.Session == "" || len(callsWith(readCalls(t, dir), "backup-push")) == 0 {
			return errors.New("not yet")
		}
		session = kv.Session
		return nil
	})
	if _, err := client.Session().Destroy(session, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("backup still running after its lock was lost")
	}
	if st := a.Status(); !strings.Contains(st.LastError, "lock was lost") {
		t.Fatalf("last error %q", st.LastError)
	}
	assertGone(t, callsWith(readCalls(t, dir), "backup-push")[0].Pid)
	if n := len(callsWith(readCalls(t, dir), "delete")); n != 0 {
		t.Fatalf("retention ran after a failed backup (%d calls)", n)
	}
}

func assertGone(t *testing.T, pid int) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "killed wal-g to disappear", func() error {
		if err := syscall.Kill(pid, 0); err == nil {
			return errors.New("still running")
		}
		return nil
	})
}

// A hanging wal-g (ignoring SIGTERM) is killed when POSTGRES_BACKUP_TIMEOUT passes;
// nothing is deleted afterwards.
func TestHangingBackupIsKilled(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	setBehavior(t, dir, map[string]any{"hang": []string{"backup-push"}})
	cfg := testConfig(bin)
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	a.cfg.BackupTimeout = 2 * time.Second
	la.on.Store(true)
	a.RunScheduled(context.Background(), time.Time{})
	calls := readCalls(t, dir)
	pushes := callsWith(calls, "backup-push")
	if len(pushes) != 1 {
		t.Fatalf("want 1 backup-push, got %d", len(pushes))
	}
	assertGone(t, pushes[0].Pid)
	st := a.Status()
	if st.ConsecutiveFailures != 1 || !strings.Contains(st.LastError, "POSTGRES_BACKUP_TIMEOUT") {
		t.Fatalf("status %+v", st)
	}
	if n := len(callsWith(calls, "delete")); n != 0 {
		t.Fatalf("retention ran after a killed backup")
	}
	// The lock was released: another node can back up now.
	b, lb := newTestManager(t, cfg, "node-b", consul.Addr)
	lb.on.Store(true)
	setBehavior(t, dir, map[string]any{})
	b.RunScheduled(context.Background(), time.Time{})
	if b.Status().LastSuccess.IsZero() {
		t.Fatalf("node-b could not back up after node-a's timeout: %+v", b.Status())
	}
}

// A failing backup is retried with a doubling delay and never followed by retention.
func TestFailureRetriesWithBackoffAndNoRetention(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	setBehavior(t, dir, map[string]any{"fail": map[string]string{"backup-push": "Connect: S3 request failed: connection refused"}})
	cfg := testConfig(bin)
	cfg.Retries = 2
	cfg.RetryDelay = 300 * time.Millisecond
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	la.on.Store(true)
	a.RunScheduled(context.Background(), time.Time{})
	calls := readCalls(t, dir)
	pushes := callsWith(calls, "backup-push")
	if len(pushes) != 3 {
		t.Fatalf("want 3 attempts, got %d", len(pushes))
	}
	gap1 := time.Duration(pushes[1].Start - pushes[0].End)
	gap2 := time.Duration(pushes[2].Start - pushes[1].End)
	if gap1 < 300*time.Millisecond || gap2 < 600*time.Millisecond {
		t.Fatalf("retry delays %s, %s: want at least 300ms then 600ms", gap1, gap2)
	}
	if n := len(callsWith(calls, "delete")); n != 0 {
		t.Fatalf("retention ran after failed backups (%d calls)", n)
	}
	st := a.Status()
	if st.ConsecutiveFailures != 3 || !strings.Contains(st.LastError, "connection refused") || !strings.Contains(st.Problem, "3 consecutive backup failures") {
		t.Fatalf("status %+v", st)
	}
	mt := a.metricsText(time.Now())
	for _, want := range []string{"pgnode_backup_consecutive_failures 3\n", `pgnode_backup_runs_total{result="failure"} 3`} {
		if !strings.Contains(mt, want) {
			t.Errorf("metrics lack %q:\n%s", want, mt)
		}
	}
	// The next success resets the failure count.
	setBehavior(t, dir, map[string]any{})
	a.RunScheduled(context.Background(), time.Time{})
	if st := a.Status(); st.ConsecutiveFailures != 0 || st.LastSuccess.IsZero() {
		t.Fatalf("after success: %+v", st)
	}
}

// Retention runs after each successful backup with exactly these arguments, with the
// read-write config, and keeps the newest KeepFull backups.
func TestRetentionArguments(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	cfg := testConfig(bin)
	cfg.KeepFull = 2
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	la.on.Store(true)
	for i := 0; i < 3; i++ {
		a.RunScheduled(context.Background(), time.Time{})
	}
	calls := readCalls(t, dir)
	var seq []string
	for _, c := range calls {
		if c.config() != a.node.WalgConfigRW {
			t.Errorf("%q used config %s, want the read-write one", c.cmd(), c.config())
		}
		seq = append(seq, c.cmd())
	}
	one := []string{"backup-push " + a.node.DataDir, "backup-list --json --detail", "delete retain FULL 2 --confirm"}
	var want []string
	for i := 0; i < 3; i++ {
		want = append(want, one...)
	}
	if strings.Join(seq, "\n") != strings.Join(want, "\n") {
		t.Fatalf("wal-g calls:\n%s\nwant:\n%s", strings.Join(seq, "\n"), strings.Join(want, "\n"))
	}
	bs, err := a.walg.list(context.Background(), ReadWrite)
	if err != nil || len(bs) != 2 {
		t.Fatalf("want 2 backups kept, got %v %v", bs, err)
	}
	if _, err := (&Config{KeepFull: 0}).retainArgs(); err == nil {
		t.Fatal("retention with KeepFull 0 was not refused")
	}
}

// RO keys for reading and checking, RW keys for writing; secrets never in argv or env.
func TestKeysRouting(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	cfg := testConfig(bin)
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	la.on.Store(true)
	a.RunScheduled(context.Background(), time.Time{})
	var out, errb strings.Builder
	for _, cmd := range []string{"list", "wal-show"} {
		if rc := CLI(context.Background(), cfg, a.node, []string{cmd}, &out, &errb); rc != 0 {
			t.Fatalf("pgnode backup %s: rc %d: %s", cmd, rc, errb.String())
		}
	}
	a.refresh(context.Background())
	calls := readCalls(t, dir)
	for _, c := range calls {
		want := "RWKEYID"
		if c.cmd() == "backup-list --detail" || c.cmd() == "wal-show" {
			want = "ROKEYID"
		}
		if strings.HasPrefix(c.cmd(), "backup-list --json") && c.Start > callsWith(calls, "delete")[0].End {
			want = "ROKEYID" // the manager's periodic refresh reads with the read-only keys
		}
		if c.AccessKey != want {
			t.Errorf("%q ran with key %s, want %s", c.cmd(), c.AccessKey, want)
		}
		all := strings.Join(append(append([]string{}, c.Args...), c.Env...), " ")
		if strings.Contains(all, "secret-value") || strings.Contains(all, "KEYID") {
			t.Errorf("%q: a key reached argv or the environment: %s", c.cmd(), all)
		}
	}
	if !strings.Contains(out.String(), "base_") {
		t.Errorf("list output %q", out.String())
	}
	// Without read-only keys: reads fall back to RW, verify refuses before running wal-g.
	cfg2 := testConfig(bin)
	cfg2.S3AccessKeyRO, cfg2.S3SecretKeyRO = "", ""
	n2 := a.node
	n2.WalgConfigRO = ""
	before := len(readCalls(t, dir))
	out.Reset()
	if rc := CLI(context.Background(), cfg2, n2, []string{"verify"}, &out, &errb); rc != 1 || !strings.Contains(out.String(), "read-only keys") {
		t.Fatalf("verify without RO keys: rc %d, %q", rc, out.String())
	}
	if got := len(readCalls(t, dir)); got != before {
		t.Fatalf("verify without RO keys ran wal-g")
	}
	if rc := CLI(context.Background(), cfg2, n2, []string{"list"}, &out, &errb); rc != 0 {
		t.Fatal("list with RW keys failed")
	}
	if c := readCalls(t, dir); c[len(c)-1].AccessKey != "RWKEYID" {
		t.Fatalf("list without RO keys used %s", c[len(c)-1].AccessKey)
	}
}

// Metrics and Status follow what happens.
func TestMetricsAndStatus(t *testing.T) {
	captureLogs(t)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	cfg := testConfig(bin)
	cfg.MaxAgeHours = 2
	a, la := newTestManager(t, cfg, "node-a", consul.Addr)
	a.st.storageChecked = true // as after the start-up check
	mt := a.metricsText(time.Now())
	for _, want := range []string{"pgnode_backup_enabled 1\n", "pgnode_backup_last_success_timestamp_seconds 0\n", "pgnode_backup_stale 1\n"} {
		if !strings.Contains(mt, want) {
			t.Errorf("initial metrics lack %q:\n%s", want, mt)
		}
	}
	if strings.Contains(mt, "verify_last_success") {
		t.Error("verify metrics before any verify")
	}
	if p := a.Status().Problem; !strings.Contains(p, "no successful backup within 2h (last: none found)") {
		t.Errorf("problem %q", p)
	}
	la.on.Store(true)
	a.RunScheduled(context.Background(), time.Time{})
	now := time.Now()
	st := a.statusAt(now)
	if st.Stale || st.Problem != "" || st.LastSizeBytes <= 0 || st.LastBackupName == "" {
		t.Fatalf("after a backup: %+v", st)
	}
	mt = a.metricsText(now)
	for _, want := range []string{"pgnode_backup_stale 0\n", "pgnode_backup_consecutive_failures 0\n", `pgnode_backup_runs_total{result="success"} 1`} {
		if !strings.Contains(mt, want) {
			t.Errorf("metrics lack %q:\n%s", want, mt)
		}
	}
	if strings.Contains(mt, "pgnode_backup_last_success_timestamp_seconds 0\n") || strings.Contains(mt, "pgnode_backup_last_size_bytes 0\n") {
		t.Errorf("success not reflected:\n%s", mt)
	}
	// Three hours later without another backup the status is stale.
	if st := a.statusAt(now.Add(3 * time.Hour)); !st.Stale || !strings.Contains(st.Problem, "no successful backup within 2h") {
		t.Errorf("3h later: %+v", st)
	}
	// A verify result recorded in Consul (by `pgnode backup verify` on any node) shows up.
	client, _ := consulClient(a.node)
	_, _ = client.KV().Put(&api.KVPair{Key: verifyKey("bk-test"), Value: []byte(`{"time":"2026-01-02T03:04:05Z","ok":false,"error":"amcheck failed","node":"x"}`)}, nil)
	a.refresh(context.Background())
	mt = a.metricsText(now)
	if !strings.Contains(mt, "pgnode_backup_verify_last_success 0\n") || !strings.Contains(mt, "pgnode_backup_verify_last_timestamp_seconds 1767323045\n") {
		t.Errorf("verify metrics:\n%s", mt)
	}
	if !strings.Contains(a.Status().Problem, "last restore check failed: amcheck failed") {
		t.Errorf("problem %q", a.Status().Problem)
	}
	_ = dir
}

// Without S3: Start says so once and does nothing else (no wal-g, no Consul).
func TestStartWithoutS3(t *testing.T) {
	logs := captureLogs(t)
	bin, dir := standIn(t)
	cfg := Config{WalgBinary: bin, Schedule: "@every 1s"}
	m := NewManager(cfg, Node{Scope: "x", ConsulAddr: "127.0.0.1:1"})
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "S3_BACKUP_PATH is empty"); n != 1 {
		t.Fatalf("want the off message once, got %d:\n%s", n, logs.String())
	}
	if len(readCalls(t, dir)) != 0 {
		t.Fatal("wal-g ran with backups off")
	}
	if mt := m.metricsText(time.Now()); !strings.Contains(mt, "pgnode_backup_enabled 0\n") || m.Status().Problem != "" {
		t.Fatalf("metrics %s status %+v", mt, m.Status())
	}
}
