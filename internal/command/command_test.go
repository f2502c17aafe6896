package command

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestOutputIsLoggedWithTheProgramName(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	out, err := Output(context.Background(), Spec{Path: "sh", Args: []string{"-c", "echo to-stdout; echo to-stderr >&2"}, Logger: logger, Name: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "to-stdout" {
		t.Errorf("captured %q", out)
	}
	if !strings.Contains(logs.String(), "program=probe") || !strings.Contains(logs.String(), "to-stderr") {
		t.Errorf("stderr not logged with the program name:\n%s", logs.String())
	}
}

func TestChildrenGetAMinimalEnvironment(t *testing.T) {
	t.Setenv("POSTGRES_SUPERUSER_PASSWORD", "must-not-leak")
	out, err := Output(context.Background(), Spec{Path: "env"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "must-not-leak") {
		t.Errorf("the agent's secrets reached a child's environment")
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"success", []string{"-c", "exit 0"}, 0},
		{"failure", []string{"-c", "exit 3"}, 3},
		{"killed by SIGKILL", []string{"-c", "kill -9 $$"}, 128 + int(syscall.SIGKILL)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start(context.Background(), Spec{Path: "sh", Args: tc.args})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.ExitCode(); got != tc.want {
				t.Errorf("exit code %d, want %d", got, tc.want)
			}
		})
	}
}

// TestExitSeenWhileAGrandchildHoldsTheOutput: a postmaster started by Patroni inherits
// Patroni's output; Patroni's death must still be seen at once.
func TestExitSeenWhileAGrandchildHoldsTheOutput(t *testing.T) {
	p, err := Start(context.Background(), Spec{Path: "sh", Args: []string{"-c", "sleep 30 & exit 0"}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("exit not seen while a grandchild holds the pipe")
	}
	p.Signal(syscall.SIGKILL) // the grandchild is still in the program's process group
}

func TestCancelStopsTheProcessGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	p, err := Start(ctx, Spec{Path: "sh", Args: []string{"-c", "trap '' TERM; sleep 60"}, KillGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled program still runs")
	}
}
