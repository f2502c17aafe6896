package entrypoint

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"pgnode/backup"
	"pgnode/upgrade"
)

// AgentStatus is what `pgnode run` publishes in the status file for `pgnode health`.
type AgentStatus struct {
	Phase   string    `json:"phase"` // starting, upgrading, running, fenced, stopping
	Message string    `json:"message,omitempty"`
	Since   time.Time `json:"since"`
}

// Health decides the HEALTHCHECK answer: nil when this member runs as leader or as a
// streaming replica, or while an upgrade runs (healthy but not ready, so Docker never
// kills it); otherwise an error with the one-line reason.
func Health(ctx context.Context, cfg *Config) (string, error) {
	if st, err := upgrade.ReadStatus(cfg.StatusFile); err == nil && st.Busy() {
		return fmt.Sprintf("%s since %s (healthy, not ready) %s %s", st.Phase, st.Since.Format(time.RFC3339), st.Step, st.Message), nil
	}
	api := cfg.patroniAPI(3 * time.Second)
	ms, err := api.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("Patroni REST API on port %d does not answer: %v", cfg.RestAPIPort, err)
	}
	if ms.State != "running" {
		return "", fmt.Errorf("PostgreSQL is %q (role %s)", ms.State, ms.Role)
	}
	note := ""
	if b, err := os.ReadFile(cfg.backupStatusFile()); err == nil {
		var bs backup.Status
		if json.Unmarshal(b, &bs) == nil && bs.Problem != "" {
			// A backup problem does not make PostgreSQL unhealthy; it is shown, and
			// reported by the metrics.
			note = "; backup problem: " + bs.Problem
		}
	}
	if ms.IsLeader() {
		return fmt.Sprintf("leader, running, timeline %d%s", ms.Timeline, note), nil
	}
	if ms.ReplicationState != "" && ms.ReplicationState != "streaming" {
		return "", fmt.Errorf("replica is running but %s, not streaming", ms.ReplicationState)
	}
	return fmt.Sprintf("%s, running, timeline %d%s", ms.Role, ms.Timeline, note), nil
}

func cmdHealth(args []string, stdout io.Writer) int {
	cfg, _, err := Load(os.Environ())
	if err != nil {
		fmt.Fprintf(stdout, "unhealthy: invalid configuration: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msg, err := Health(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stdout, "unhealthy: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "healthy: %s\n", msg)
	return 0
}
