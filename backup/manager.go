package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/robfig/cron/v3"
)

// Manager is the long-lived backup part of the agent: the full-backup schedule (run only on
// the leader, one backup cluster-wide at a time), retention, optional scheduled restore
// checks, the storage check at start, and the metrics. Create it with NewManager and run it
// with Start.
type Manager struct {
	cfg  Config
	node Node
	log  *slog.Logger
	// requested is set by RequestBackup: a full backup is due as soon as this node leads.
	requested atomic.Bool
	walg      *walgRunner

	// leaderCheck reports whether this node is the writable leader (Patroni's REST API
	// confirmed by pg_is_in_recovery()); replaced in tests of the scheduling rules.
	leaderCheck func(ctx context.Context) (bool, string, error)
	// refreshEvery is how often the backup list is re-read from S3 (so every node knows
	// the newest backup, whoever made it).
	refreshEvery time.Duration
	// maxRetryDelay caps the doubling retry delay.
	maxRetryDelay time.Duration

	running sync.Mutex // held while a scheduled backup job runs

	mu sync.Mutex
	st state
}

type state struct {
	started             bool
	lastSuccess         time.Time
	lastDuration        time.Duration
	lastSize            int64
	lastBackupName      string
	lastAttempt         time.Time
	lastError           string
	consecutiveFailures int
	runs                map[string]int
	retentionFailures   int
	storageChecked      bool
	storageErr          string
	verifyRan           bool
	verifyOK            bool
	verifyTime          time.Time
	verifyErr           string
}

// NewManager returns a manager for a validated Config.
func NewManager(cfg Config, node Node) *Manager {
	m := &Manager{cfg: cfg, node: node, log: slog.Default().With("component", "backup"),
		refreshEvery: 10 * time.Minute, maxRetryDelay: 30 * time.Minute}
	m.walg = &walgRunner{cfg: &m.cfg, node: node}
	m.leaderCheck = func(ctx context.Context) (bool, string, error) { return checkLeader(ctx, node) }
	m.st.runs = map[string]int{}
	return m
}

// Start runs the schedule until ctx is done. With S3 not configured it says so once and
// does nothing else. Problems with the storage (unreachable, wrong keys, missing bucket)
// are logged once with the variable to fix and shown in the metrics and Status; they never
// stop the agent.
func (m *Manager) Start(ctx context.Context) error {
	if !m.cfg.Enabled() {
		m.log.Info("S3_BACKUP_PATH is empty: WAL archiving, scheduled backups and restore checks are off")
		<-ctx.Done()
		return nil
	}
	sched, err := cronParser.Parse(m.cfg.Schedule)
	if err != nil {
		return fmt.Errorf("POSTGRES_BACKUP_SCHEDULE %q: %w", m.cfg.Schedule, err)
	}
	m.mu.Lock()
	m.st.started = true
	m.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.refreshLoop(ctx) }()

	c := cron.New(cron.WithParser(cronParser))
	var backupID cron.EntryID
	backupID = c.Schedule(sched, cron.FuncJob(func() {
		slot := c.Entry(backupID).Prev
		if !m.running.TryLock() {
			m.log.Warn("scheduled backup skipped: the previous one is still running", "slot", slot)
			m.count("skipped_still_running")
			return
		}
		defer m.running.Unlock()
		m.RunScheduled(ctx, slot)
	}))
	if m.cfg.VerifySchedule != "" {
		vs, err := cronParser.Parse(m.cfg.VerifySchedule)
		if err != nil {
			return fmt.Errorf("POSTGRES_BACKUP_VERIFY_SCHEDULE %q: %w", m.cfg.VerifySchedule, err)
		}
		var verifying sync.Mutex
		c.Schedule(vs, cron.FuncJob(func() {
			if !verifying.TryLock() {
				return
			}
			defer verifying.Unlock()
			_ = m.verify(ctx)
		}))
	}
	c.Start()
	wg.Add(1)
	go func() { defer wg.Done(); m.requestedLoop(ctx) }()
	m.log.Info("backup schedule started", "schedule", m.cfg.Schedule, "next", c.Entry(backupID).Next,
		"keep_full", m.cfg.KeepFull, "prefix", m.cfg.Prefix(m.node.Scope, m.node.Major))
	<-ctx.Done()
	<-c.Stop().Done()
	wg.Wait()
	return nil
}

// RequestBackup asks for a full backup as soon as this node is the leader (after a major
// upgrade the old backups belong to another system identifier). It is taken once, under
// the cluster-wide lock, with retention after it like a scheduled one.
func (m *Manager) RequestBackup() { m.requested.Store(true) }

func (m *Manager) requestedLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(15 * time.Second):
		}
		if !m.requested.Load() || !m.running.TryLock() {
			continue
		}
		if m.attempt(ctx, time.Time{}) == outcomeDone {
			m.requested.Store(false)
			m.log.Info("requested full backup done")
		}
		m.running.Unlock()
	}
}

// refreshLoop checks the storage once at start, then keeps the newest backup and the last
// restore check up to date from S3 and Consul.
func (m *Manager) refreshLoop(ctx context.Context) {
	m.checkStorage(ctx)
	t := time.NewTicker(m.refreshEvery)
	defer t.Stop()
	for {
		m.refresh(ctx)
		m.mu.Lock()
		m.st.storageChecked = true // from now on a missing backup counts as stale
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkStorage checks both key pairs against S3 and logs a clear error once.
func (m *Manager) checkStorage(ctx context.Context) {
	prefix := m.cfg.Prefix(m.node.Scope, m.node.Major)
	err := m.cfg.CheckStorage(ctx, ReadWrite, prefix)
	if err == nil && m.cfg.S3AccessKeyRO.IsSet() {
		err = m.cfg.CheckStorage(ctx, ReadOnly, prefix)
	}
	m.mu.Lock()
	if err != nil {
		m.st.storageErr = err.Error()
	} else {
		m.st.storageErr = ""
	}
	m.mu.Unlock()
	if err != nil {
		m.log.Error("backup storage check failed; WAL archiving and backups will fail until this is fixed", "err", err)
	}
}

// refresh re-reads the newest backup (any node may have made it) and the last restore
// check result.
func (m *Manager) refresh(ctx context.Context) {
	bs, err := m.walg.list(ctx, m.walg.readKeys())
	if err != nil {
		m.log.Warn("could not list backups", "err", err)
	} else if len(bs) > 0 {
		m.noteNewest(bs[len(bs)-1])
	}
	if c, err := consulClient(m.node); err == nil {
		if kv, _, err := c.KV().Get(verifyKey(m.node.Scope), (&api.QueryOptions{}).WithContext(ctx)); err == nil && kv != nil {
			var vr verifyRecord
			if json.Unmarshal(kv.Value, &vr) == nil {
				m.mu.Lock()
				if vr.Time.After(m.st.verifyTime) {
					m.st.verifyRan, m.st.verifyOK, m.st.verifyTime, m.st.verifyErr = true, vr.OK, vr.Time, vr.Error
				}
				m.mu.Unlock()
			}
		}
	}
}

func (m *Manager) noteNewest(b BackupInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.Finished().After(m.st.lastSuccess) {
		m.st.lastSuccess = b.Finished()
		m.st.lastBackupName = b.Name
		m.st.lastSize = b.CompressedSize
		if !b.StartTime.IsZero() && !b.FinishTime.IsZero() {
			m.st.lastDuration = b.FinishTime.Sub(b.StartTime)
		}
	}
}

func (m *Manager) count(result string) {
	m.mu.Lock()
	m.st.runs[result]++
	m.mu.Unlock()
}

// outcome of one attempt of a scheduled backup.
type outcome int

const (
	outcomeDone outcome = iota
	outcomeSkipped
	outcomeFailed
)

// RunScheduled runs the backup of one schedule slot (the time the schedule fired for):
// only on the leader, under the cluster-wide Consul lock, at most once per slot for the
// whole cluster, retried with doubling delay on failure.
func (m *Manager) RunScheduled(ctx context.Context, slot time.Time) {
	delay := m.cfg.RetryDelay
	for attempt := 0; attempt <= m.cfg.Retries; attempt++ {
		if attempt > 0 {
			m.log.Info("retrying the failed backup", "in", delay, "attempt", attempt+1, "of", m.cfg.Retries+1)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(delay*2, m.maxRetryDelay)
		}
		switch m.attempt(ctx, slot) {
		case outcomeDone, outcomeSkipped:
			return
		}
		if ctx.Err() != nil {
			return
		}
	}
	m.log.Error("scheduled backup failed on every attempt; the next one runs at the next scheduled time",
		"slot", slot, "attempts", m.cfg.Retries+1)
}

func (m *Manager) attempt(ctx context.Context, slot time.Time) outcome {
	leader, reason, err := m.leaderCheck(ctx)
	if err != nil {
		m.log.Warn("scheduled backup skipped: cannot tell whether this node is the leader", "err", err)
		m.count("skipped_unknown_role")
		return outcomeSkipped
	}
	if !leader {
		m.log.Debug("scheduled backup skipped: not the leader", "reason", reason)
		m.count("skipped_not_leader")
		return outcomeSkipped
	}
	client, err := consulClient(m.node)
	if err != nil {
		m.fail(err)
		return outcomeFailed
	}
	lock, err := acquireLock(ctx, client, m.node.Scope, m.node.Name, 2*time.Second)
	var held *errLockHeld
	if errors.As(err, &held) {
		m.log.Info("scheduled backup skipped", "reason", held.Error())
		m.count("skipped_locked")
		return outcomeSkipped
	}
	if err != nil {
		m.fail(err)
		return outcomeFailed
	}
	defer lock.Release()
	if !slot.IsZero() {
		if kv, _, err := client.KV().Get(lastSlotKey(m.node.Scope), nil); err == nil && kv != nil {
			if done, err := time.Parse(time.RFC3339, string(kv.Value)); err == nil && !done.Before(slot.Truncate(time.Second)) {
				m.log.Info("scheduled backup skipped: this slot's backup is already done", "slot", slot)
				m.count("skipped_done")
				return outcomeSkipped
			}
		}
	}
	// Stop the backup at once when the lock is lost (Consul says another node may now
	// take it) or the timeout passes.
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lock.Lost:
			cancel(errors.New("the cluster's backup lock was lost"))
		case <-bctx.Done():
		}
	}()
	if _, err := m.pushAndRetain(bctx, "scheduled"); err != nil {
		return outcomeFailed
	}
	if !slot.IsZero() {
		_, _ = client.KV().Put(&api.KVPair{Key: lastSlotKey(m.node.Scope), Value: []byte(slot.UTC().Format(time.RFC3339))}, nil)
	}
	return outcomeDone
}

func (m *Manager) fail(err error) {
	m.mu.Lock()
	m.st.consecutiveFailures++
	m.st.lastError = err.Error()
	m.st.runs["failure"]++
	n := m.st.consecutiveFailures
	m.mu.Unlock()
	m.log.Error("backup failed", "err", err, "consecutive_failures", n)
}

// pushAndRetain runs backup-push (bounded by POSTGRES_BACKUP_TIMEOUT), and only when it
// succeeded applies retention. The caller holds the lock and has checked leadership.
func (m *Manager) pushAndRetain(ctx context.Context, why string) (BackupInfo, error) {
	start := time.Now()
	m.mu.Lock()
	m.st.lastAttempt = start
	m.mu.Unlock()
	m.log.Info("full backup starting", "why", why, "timeout", m.cfg.BackupTimeout)
	tctx, cancel := context.WithTimeoutCause(ctx, m.cfg.BackupTimeout,
		fmt.Errorf("POSTGRES_BACKUP_TIMEOUT of %s passed", m.cfg.BackupTimeout))
	err := m.walg.run(tctx, ReadWrite, nil, "backup-push", m.node.DataDir)
	cancel()
	if err != nil {
		// wal-g's own messages about S3 are often vague ("unable to complete uploads"):
		// add what the storage check finds, naming the variable to fix.
		if ctx.Err() == nil && m.cfg.S3BackupPath != "" {
			cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
			if serr := m.cfg.CheckStorage(cctx, ReadWrite, m.cfg.Prefix(m.node.Scope, m.node.Major)); serr != nil {
				err = fmt.Errorf("%w; storage check: %v", err, serr)
			}
			ccancel()
		}
		m.fail(err)
		return BackupInfo{}, err
	}
	dur := time.Since(start)
	var newest BackupInfo
	if bs, err := m.walg.list(ctx, ReadWrite); err != nil {
		m.log.Warn("backup pushed but listing backups failed", "err", err)
	} else if len(bs) > 0 {
		newest = bs[len(bs)-1]
	}
	m.mu.Lock()
	m.st.consecutiveFailures = 0
	m.st.lastError = ""
	m.st.runs["success"]++
	m.st.lastDuration = dur
	m.st.lastSuccess = time.Now()
	if !newest.Finished().IsZero() {
		m.st.lastSuccess = newest.Finished()
	}
	m.st.lastSize = newest.CompressedSize
	m.st.lastBackupName = newest.Name
	m.mu.Unlock()
	m.log.Info("full backup done", "name", newest.Name, "duration", dur.Round(time.Millisecond), "compressed_bytes", newest.CompressedSize)
	if err := m.retain(ctx); err != nil {
		m.mu.Lock()
		m.st.retentionFailures++
		m.mu.Unlock()
		m.log.Error("retention failed (the new backup is fine; older ones were not deleted)", "err", err)
	}
	return newest, nil
}

// retainArgs are the WAL-G arguments of the retention run: keep the newest KeepFull full
// backups (and their deltas); WAL-G deletes older backups and the WAL before the oldest
// kept one.
func (c *Config) retainArgs() ([]string, error) {
	if c.KeepFull < 1 {
		return nil, fmt.Errorf("POSTGRES_BACKUP_KEEP_FULL is %d: refusing to run retention that would delete every backup", c.KeepFull)
	}
	return []string{"delete", "retain", "FULL", fmt.Sprint(c.KeepFull), "--confirm"}, nil
}

func (m *Manager) retain(ctx context.Context) error {
	args, err := m.cfg.retainArgs()
	if err != nil {
		return err
	}
	tctx, cancel := context.WithTimeout(ctx, m.cfg.BackupTimeout)
	defer cancel()
	return m.walg.run(tctx, ReadWrite, nil, args...)
}
