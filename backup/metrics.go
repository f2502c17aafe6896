package backup

import (
	"fmt"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// Status is the backup state a health check or `pgnode status` shows.
type Status struct {
	Enabled             bool          `json:"enabled"`
	LastSuccess         time.Time     `json:"last_success,omitzero"` // zero: none known
	LastBackupName      string        `json:"last_backup_name,omitempty"`
	LastDuration        time.Duration `json:"last_duration_ns,omitempty"`
	LastSizeBytes       int64         `json:"last_size_bytes,omitempty"`
	ConsecutiveFailures int           `json:"consecutive_failures"`
	LastError           string        `json:"last_error,omitempty"`
	StorageError        string        `json:"storage_error,omitempty"` // from the start-up storage check
	VerifyRan           bool          `json:"verify_ran"`
	VerifyOK            bool          `json:"verify_ok"`
	VerifyTime          time.Time     `json:"verify_time,omitzero"`
	VerifyError         string        `json:"verify_error,omitempty"`
	// Stale is true when no successful backup is newer than POSTGRES_BACKUP_MAX_AGE_HOURS
	// (judged once the start-up storage check has run).
	Stale bool `json:"stale"`
	// WalgMissing is true when S3 is configured but the WAL-G program is not installed.
	WalgMissing bool `json:"walg_missing,omitempty"`
	// Problem is a one-line summary of what is wrong ("" when nothing is); `pgnode health`
	// or status can show it.
	Problem string `json:"problem,omitempty"`
}

// Status returns the current backup state.
func (m *Manager) Status() Status { return m.statusAt(time.Now()) }

// walgMissing reports whether the WAL-G program cannot be found.
func (m *Manager) walgMissing() bool {
	_, err := exec.LookPath(m.cfg.WalgBinary)
	return err != nil
}

func (m *Manager) statusAt(now time.Time) Status {
	m.mu.Lock()
	st := m.st
	m.mu.Unlock()
	s := Status{Enabled: m.cfg.Enabled(), LastSuccess: st.lastSuccess, LastBackupName: st.lastBackupName,
		LastDuration: st.lastDuration, LastSizeBytes: st.lastSize, ConsecutiveFailures: st.consecutiveFailures,
		LastError: st.lastError, StorageError: st.storageErr, VerifyRan: st.verifyRan, VerifyOK: st.verifyOK,
		VerifyTime: st.verifyTime, VerifyError: st.verifyErr}
	if !s.Enabled {
		return s
	}
	var problems []string
	if s.WalgMissing = m.walgMissing(); s.WalgMissing {
		problems = append(problems, "WAL-G ("+m.cfg.WalgBinary+", WALG_BINARY) is not installed: no WAL archiving, backups or restores")
	}
	if s.StorageError != "" {
		problems = append(problems, "backup storage: "+s.StorageError)
	}
	if m.cfg.MaxAgeHours > 0 && st.storageChecked {
		maxAge := time.Duration(m.cfg.MaxAgeHours) * time.Hour
		if s.LastSuccess.IsZero() || now.Sub(s.LastSuccess) > maxAge {
			s.Stale = true
			last := "none found"
			if !s.LastSuccess.IsZero() {
				last = s.LastSuccess.UTC().Format(time.RFC3339)
			}
			problems = append(problems, fmt.Sprintf("no successful backup within %dh (last: %s)", m.cfg.MaxAgeHours, last))
		}
	}
	if s.ConsecutiveFailures > 0 {
		problems = append(problems, fmt.Sprintf("%d consecutive backup failures, last: %s", s.ConsecutiveFailures, s.LastError))
	}
	if s.VerifyRan && !s.VerifyOK {
		problems = append(problems, "last restore check failed: "+s.VerifyError)
	}
	s.Problem = strings.Join(problems, "; ")
	return s
}

// MetricsHandler serves the backup metrics in Prometheus' text exposition format.
func (m *Manager) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write([]byte(m.metricsText(time.Now())))
	})
}

func (m *Manager) metricsText(now time.Time) string {
	s := m.statusAt(now)
	m.mu.Lock()
	runs := make(map[string]int, len(m.st.runs))
	for k, v := range m.st.runs {
		runs[k] = v
	}
	retFail := m.st.retentionFailures
	storageChecked := m.st.storageChecked
	m.mu.Unlock()
	var b strings.Builder
	g := func(name, help, typ string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, typ, name, fmtFloat(v))
	}
	ts := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	g("pgnode_backup_enabled", "1 when S3 is configured (WAL archiving and backups on).", "gauge", b2f(s.Enabled))
	if s.Enabled {
		g("pgnode_backup_walg_available", "1 when the WAL-G program (WALG_BINARY) is installed.", "gauge", b2f(!s.WalgMissing))
	}
	if storageChecked || s.StorageError != "" {
		g("pgnode_backup_storage_ok", "1 when the start-up check of the S3 storage (endpoint, keys, bucket) passed.", "gauge", b2f(s.StorageError == ""))
	}
	g("pgnode_backup_last_success_timestamp_seconds", "Finish time of the newest successful full backup (0: none known).", "gauge", ts(s.LastSuccess))
	g("pgnode_backup_last_duration_seconds", "Duration of the newest successful full backup.", "gauge", s.LastDuration.Seconds())
	g("pgnode_backup_last_size_bytes", "Compressed size of the newest successful full backup.", "gauge", float64(s.LastSizeBytes))
	g("pgnode_backup_consecutive_failures", "Failed backup attempts since the last success.", "gauge", float64(s.ConsecutiveFailures))
	g("pgnode_backup_stale", "1 when no successful backup is newer than POSTGRES_BACKUP_MAX_AGE_HOURS.", "gauge", b2f(s.Stale))
	g("pgnode_backup_retention_failures_total", "Retention runs that failed.", "counter", float64(retFail))
	fmt.Fprintf(&b, "# HELP pgnode_backup_runs_total Scheduled or on-demand backup attempts on this node by result.\n# TYPE pgnode_backup_runs_total counter\n")
	keys := []string{"success", "failure"}
	for k := range runs {
		if k != "success" && k != "failure" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys[2:])
	for _, k := range keys {
		fmt.Fprintf(&b, "pgnode_backup_runs_total{result=%q} %d\n", k, runs[k])
	}
	if s.VerifyRan {
		g("pgnode_backup_verify_last_success", "1 when the last restore check passed, 0 when it failed.", "gauge", b2f(s.VerifyOK))
		g("pgnode_backup_verify_last_timestamp_seconds", "When the last restore check finished.", "gauge", ts(s.VerifyTime))
	}
	return b.String()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func fmtFloat(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%g", v)
}
