package entrypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"pgnode/internal/command"
)

// postmasterPID returns the pid of a live postmaster of dataDir, or 0.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0
	}
	if !processAlive(pid) {
		return 0
	}
	// Guard against a recycled pid: it must be a postgres process.
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err == nil && !strings.HasSuffix(strings.TrimSuffix(exe, " (deleted)"), "/postgres") {
		return 0
	}
	return pid
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// childrenOf lists the pids whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 {
			if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
				out = append(out, p)
			}
		}
	}
	return out
}

// FencePostgres makes sure no PostgreSQL of dataDir runs any more: an immediate shutdown
// (SIGQUIT to the postmaster, which ends every backend at once, no checkpoint), then
// SIGKILL of the postmaster and its children if it is still there after grace. It returns
// only when no postmaster of dataDir is alive, or an error saying one still is.
func FencePostgres(ctx context.Context, dataDir string, grace time.Duration) error {
	pid := postmasterPID(dataDir)
	if pid == 0 {
		return nil
	}
	slog.Warn("fencing PostgreSQL: immediate shutdown", "postmaster_pid", pid)
	children := childrenOf(pid)
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		command.ReapOrphans()
		if !processAlive(pid) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if processAlive(pid) {
		slog.Error("PostgreSQL did not stop after SIGQUIT; killing it", "postmaster_pid", pid)
		children = append(children, childrenOf(pid)...)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// Backends notice a dead postmaster by themselves, but a killed postmaster's children
	// must not linger with open transactions.
	for _, c := range children {
		if processAlive(c) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
	}
	for i := 0; i < 100; i++ {
		command.ReapOrphans()
		if !processAlive(pid) {
			slog.Info("PostgreSQL fenced", "postmaster_pid", pid)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.New("postmaster " + strconv.Itoa(pid) + " is still alive after SIGKILL")
}
