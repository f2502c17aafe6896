// Package command runs every external program pgnode uses (initdb, pg_ctl, pg_upgrade,
// patroni, wal-g, consul …) the same way: output is streamed line by line into slog tagged
// with the program's name, the process is cancelled through its context, and secrets are
// passed through the environment or files, never through arguments.
package command

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec describes one program invocation.
type Spec struct {
	// Path is the program to run (looked up in PATH when it has no slash).
	Path string
	// Args are the arguments, without the program itself. They must never hold secrets.
	Args []string
	// Env is the complete environment of the child. Nil means a minimal safe environment
	// (PATH, HOME, LANG, TZ copied from the agent), never the agent's whole environment,
	// which may hold secrets.
	Env []string
	// Dir is the working directory; empty means the agent's.
	Dir string
	// Credential runs the program as another user (the agent may run as root).
	Credential *syscall.Credential
	// Stdin, when set, is fed to the program.
	Stdin io.Reader
	// Logger receives the program's output; nil means slog.Default().
	Logger *slog.Logger
	// Name tags the log lines; defaults to the base name of Path.
	Name string
	// Quiet logs output at debug level instead of info (used for chatty probes).
	Quiet bool
	// Classify, when set, may retag a line (e.g. PostgreSQL's lines inside Patroni's
	// output) and choose its level; it returns "" to keep the program's name.
	Classify func(line string) (program string, level slog.Level)
	// Capture, when non-nil, also receives the program's stdout (not stderr).
	Capture io.Writer
	// KillGrace is how long to wait after SIGTERM on cancellation before SIGKILL of the
	// whole process group. Zero means 10 s.
	KillGrace time.Duration
}

func (s *Spec) name() string {
	if s.Name != "" {
		return s.Name
	}
	return filepath.Base(s.Path)
}

// MinimalEnv returns the environment children get by default: only non-secret basics.
func MinimalEnv(extra ...string) []string {
	env := []string{}
	for _, k := range []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	if _, ok := os.LookupEnv("PATH"); !ok {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return append(env, extra...)
}

var (
	managedMu sync.Mutex
	managed   = map[int]bool{}
)

// ReapOrphans reaps exited children that this package did not start (orphans reparented
// to pgnode as PID 1 or child subreaper) and returns their pids. Children started by
// Start are left to their own Wait.
func ReapOrphans() []int {
	managedMu.Lock()
	defer managedMu.Unlock()
	var reaped []int
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || managed[pid] {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+4 > len(s) {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[0] != "Z" {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != self {
			continue
		}
		var ws syscall.WaitStatus
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
			reaped = append(reaped, pid)
		}
	}
	return reaped
}

// Process is a started program.
type Process struct {
	Cmd     *exec.Cmd
	spec    Spec
	done    chan struct{} // the program exited
	drained chan struct{} // its output reached EOF (all writers, grandchildren too, gone)
	err     error
	wg      sync.WaitGroup
}

// Start starts the program in its own process group and returns at once. Output streaming
// runs until the program exits. When ctx is cancelled the process group gets SIGTERM and,
// after KillGrace, SIGKILL.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	logger := spec.Logger
	if logger == nil {
		logger = slog.Default()
	}
	cmd := exec.Command(spec.Path, spec.Args...)
	if spec.Env != nil {
		cmd.Env = spec.Env
	} else {
		cmd.Env = MinimalEnv()
	}
	cmd.Dir = spec.Dir
	cmd.Stdin = spec.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: spec.Credential}
	// Our own pipes, not StdoutPipe: a grandchild (a postmaster started by Patroni or
	// pg_ctl) may keep the write ends open long after the program exits, and the exit
	// must be seen at once.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("while preparing %s: %w", spec.name(), err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close()
		_ = outW.Close()
		return nil, fmt.Errorf("while preparing %s: %w", spec.name(), err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	managedMu.Lock()
	err = cmd.Start()
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		managedMu.Unlock()
		_ = outR.Close()
		_ = errR.Close()
		return nil, fmt.Errorf("while starting %s: %w", spec.name(), err)
	}
	managed[cmd.Process.Pid] = true
	managedMu.Unlock()
	p := &Process{Cmd: cmd, spec: spec, done: make(chan struct{}), drained: make(chan struct{})}
	level := slog.LevelInfo
	if spec.Quiet {
		level = slog.LevelDebug
	}
	p.wg.Add(2)
	name := spec.name()
	go func() {
		defer p.wg.Done()
		streamLines(logger, name, level, outR, spec.Capture, spec.Classify)
		_ = outR.Close()
	}()
	go func() {
		defer p.wg.Done()
		streamLines(logger, name, level, errR, nil, spec.Classify)
		_ = errR.Close()
	}()
	go func() { p.wg.Wait(); close(p.drained) }()
	go func() {
		p.err = cmd.Wait()
		managedMu.Lock()
		delete(managed, cmd.Process.Pid)
		managedMu.Unlock()
		close(p.done)
	}()
	go func() {
		select {
		case <-p.done:
		case <-ctx.Done():
			p.Signal(syscall.SIGTERM)
			grace := spec.KillGrace
			if grace == 0 {
				grace = 10 * time.Second
			}
			select {
			case <-p.done:
			case <-time.After(grace):
				p.Signal(syscall.SIGKILL)
			}
		}
	}()
	return p, nil
}

// Signal sends sig to the program's whole process group.
func (p *Process) Signal(sig syscall.Signal) {
	if p.Cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, sig)
}

// Pid is the program's process id (also its process group id).
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Done is closed as soon as the program has exited (its output may still be streaming
// from grandchildren that inherited it).
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the program to exit and for its output to drain (at most 2 s more, so a
// grandchild holding the pipe cannot block), and returns its exit error wrapped with its
// name.
func (p *Process) Wait() error {
	<-p.done
	select {
	case <-p.drained:
	case <-time.After(2 * time.Second):
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w", p.spec.name(), p.err)
	}
	return nil
}

// ExitCode returns the program's exit code after Done; 128+N when signal N killed it
// (the shell's convention, so a container's exit status tells what happened).
func (p *Process) ExitCode() int {
	<-p.done
	ps := p.Cmd.ProcessState
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// Run runs the program to completion.
func Run(ctx context.Context, spec Spec) error {
	p, err := Start(ctx, spec)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Output runs the program and returns its stdout (stderr still goes to the log).
func Output(ctx context.Context, spec Spec) (string, error) {
	var buf bytes.Buffer
	if spec.Capture != nil {
		spec.Capture = io.MultiWriter(spec.Capture, &buf)
	} else {
		spec.Capture = &buf
	}
	spec.Quiet = true
	err := Run(ctx, spec)
	return buf.String(), err
}

func streamLines(logger *slog.Logger, name string, level slog.Level, r io.Reader, capture io.Writer, classify func(string) (string, slog.Level)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if capture != nil {
			_, _ = capture.Write([]byte(line + "\n"))
		}
		line = strings.TrimRight(line, "\r")
		if line == "" {
			continue
		}
		prog, lvl := name, level
		if classify != nil {
			var p string
			if p, lvl = classify(line); p != "" {
				prog = p
			}
			if lvl < level {
				lvl = level
			}
		}
		logger.Log(context.Background(), lvl, line, "program", prog)
	}
	// Drain anything left after a scanner error (an over-long line) so the child never
	// blocks on a full pipe.
	_, _ = io.Copy(io.Discard, r)
}

// ExitStatus extracts the exit code from an error returned by Run/Wait (0 when err is nil,
// -1 when unknown).
func ExitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
