package upgrade

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"pgnode/ci/testenv"
)

// TestKillAtEveryStep kills the agent (and everything it started) with SIGKILL at each
// step of a link-mode 13→15 upgrade, then restarts it: the volume must end as a working
// cluster with every row, never neither. Before the restart the test also proves the
// volume is recoverable right then: before the point of no return `pgnode upgrade
// rollback` must give back a working PostgreSQL 13 cluster.
func TestKillAtEveryStep(t *testing.T) {
	steps := []struct {
		step       string
		rollbackOK bool // the old cluster can still be brought back
	}{
		{StepPrepare, true},     // marker written, nothing built
		{"initdb-done", true},   // pre-check: new cluster initialised, before pg_upgrade --check
		{StepTransfer, true},    // during pg_upgrade, after it disabled the old pg_control
		{StepTransferred, true}, // pg_upgrade done, before the swap
		{"swap-half", true},     // between the two renames
		{"new-started", false},  // new cluster started privately (point of no return)
		{"extensions-db", false},
		{"analyzed", false},
	}
	cfg := Config{AutoUpgrade: true, Mode: "link", Jobs: 2}
	for _, s := range steps {
		t.Run(s.step, func(t *testing.T) {
			root := oldVolume(t, "")
			n := testNode(t, root)
			out, killed, code := runAgent(t, n, cfg, s.step)
			if !killed {
				t.Fatalf("agent was not killed at %s (exit %d):\n%s", s.step, code, tail(out, 15))
			}
			waitNoPostmaster(t, root)
			if s.step == StepTransfer && !exists(filepath.Join(n.DataDir, "global", "pg_control.old")) {
				t.Fatalf("kill during pg_upgrade did not hit the window after pg_control was disabled:\n%s", tail(out, 20))
			}
			byHand := s.step == StepTransfer || s.step == "swap-half"
			if s.rollbackOK && !byHand {
				// Restart path: the agent resumes or rolls back by itself.
				out, killed, code = runAgent(t, n, cfg, "")
				if killed || code != 0 {
					t.Fatalf("restart after kill at %s failed (exit %d):\n%s", s.step, code, tail(out, 20))
				}
				checkNew(t, n)
				return
			}
			if s.rollbackOK {
				// Operator path: roll back by hand, the old cluster works, then upgrade again.
				var so, se strings.Builder
				if c := CLI(context.Background(), cfg, n, []string{"rollback"}, &so, &se); c != 0 {
					t.Fatalf("rollback after kill at %s: %s %s", s.step, so.String(), se.String())
				}
				checkOld(t, n)
			} else {
				var so, se strings.Builder
				if c := CLI(context.Background(), cfg, n, []string{"rollback"}, &so, &se); c == 0 || !strings.Contains(se.String(), "not safe to start") {
					t.Fatalf("rollback past the point of no return was not refused: %d %s", c, se.String())
				}
			}
			out, killed, code = runAgent(t, n, cfg, "")
			if killed || code != 0 {
				t.Fatalf("restart after kill at %s failed (exit %d):\n%s", s.step, code, tail(out, 20))
			}
			checkNew(t, n)
		})
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// waitNoPostmaster waits until nothing the killed agent started is alive (a killed
// postmaster's backends exit on their own within moments) and fails the test otherwise.
func waitNoPostmaster(t *testing.T, root string) {
	t.Helper()
	testenv.WaitFor(t, 30e9, "killed postmasters to go away", func() error {
		dirs, _ := filepath.Glob(filepath.Join(root, "*", "postmaster.pid"))
		for _, f := range dirs {
			b, _ := os.ReadFile(f)
			var pid int
			if _, err := fmtSscan(strings.SplitN(string(b), "\n", 2)[0], &pid); err == nil && exists(fmt.Sprintf("/proc/%d", pid)) {
				return fmt.Errorf("postmaster %d (from %s) still exists", pid, f)
			}
		}
		// Nothing the killed agent started may survive it (a container's death leaves
		// nothing behind either): pg_upgrade, pg_ctl, postmasters.
		out, _ := exec.Command("pgrep", "-f", root).Output()
		if pids := strings.Fields(string(out)); len(pids) > 0 {
			return fmt.Errorf("processes of the killed agent still run: %v", pids)
		}
		return nil
	})
}

func fmtSscan(s string, v *int) (int, error) { return fmt.Sscan(s, v) }
