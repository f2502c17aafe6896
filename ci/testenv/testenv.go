// Package testenv is the shared harness of pgnode's integration and e2e tests: it finds the
// real binaries the tests need (PostgreSQL, Patroni, Consul, Docker), starts throw-away
// services on loopback (a Consul dev agent, a PostgreSQL server) and hands out port blocks
// so that test packages running side by side never collide.
//
// Port blocks (base port of each package's block of 1000):
//
//	entrypoint 20000, upgrade 21000, backup 22000, compose 23000, e2e 24000, failover 25000
package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireBinary returns the path of a real program or fails the test: the suite's setup
// (ci/setup-host.sh) installs every program the tests need, so a missing one is an error,
// never a silent skip.
func RequireBinary(t testing.TB, name string, candidates ...string) string {
	t.Helper()
	for _, c := range append(candidates, name) {
		if strings.Contains(c, "/") {
			if st, err := os.Stat(c); err == nil && !st.IsDir() {
				return c
			}
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found (run ci/setup-host.sh first)", name)
	return ""
}

// PGBinDir returns /usr/lib/postgresql/<major>/bin or fails the test.
func PGBinDir(t testing.TB, major int) string {
	t.Helper()
	dir := fmt.Sprintf("/usr/lib/postgresql/%d/bin", major)
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
		t.Fatalf("PostgreSQL %d not installed at %s (run ci/setup-host.sh)", major, dir)
	}
	return dir
}

// Ports hands out ports from a package's block.
type Ports struct {
	mu   sync.Mutex
	next int
	end  int
}

// NewPorts returns an allocator for [base, base+1000).
func NewPorts(base int) *Ports { return &Ports{next: base, end: base + 1000} }

// Next returns the next port in the block that nothing listens on.
func (p *Ports) Next(t testing.TB) int {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.next < p.end {
		port := p.next
		p.next++
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = l.Close()
		return port
	}
	t.Fatalf("port block exhausted")
	return 0
}

// Consul is a running Consul dev agent on loopback.
type Consul struct {
	HTTPPort int
	DNSPort  int
	Addr     string // host:port of the HTTP API
	cmd      *exec.Cmd
	done     chan struct{}
	LogPath  string
}

// StartConsul starts `consul agent -dev` on loopback with ports from p and stops it when
// the test ends. extraArgs are appended (e.g. "-hcl", "session_ttl_min = \"5s\"").
func StartConsul(t testing.TB, p *Ports, extraArgs ...string) *Consul {
	t.Helper()
	bin := RequireBinary(t, "consul")
	c := &Consul{HTTPPort: p.Next(t), DNSPort: p.Next(t)}
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.HTTPPort)
	dir := t.TempDir()
	args := []string{"agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1",
		"-node=testenv-" + strconv.Itoa(c.HTTPPort),
		"-http-port=" + strconv.Itoa(c.HTTPPort), "-dns-port=" + strconv.Itoa(c.DNSPort),
		"-serf-lan-port=" + strconv.Itoa(p.Next(t)), "-serf-wan-port=" + strconv.Itoa(p.Next(t)),
		"-server-port=" + strconv.Itoa(p.Next(t)), "-grpc-port=-1",
		"-hcl", "enable_script_checks = false",
	}
	args = append(args, extraArgs...)
	c.LogPath = filepath.Join(dir, "consul.log")
	logf, err := os.Create(c.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting consul: %v", err)
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); _ = logf.Close(); close(c.done) }()
	t.Cleanup(c.Stop)
	WaitFor(t, 30*time.Second, "consul leader", func() error {
		resp, err := http.Get("http://" + c.Addr + "/v1/status/leader")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		if resp.StatusCode != 200 || n < 4 {
			return fmt.Errorf("no leader yet (%d %q)", resp.StatusCode, b[:n])
		}
		return nil
	})
	return c
}

// Stop stops the agent (idempotent).
func (c *Consul) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

// WaitFor polls check every 200 ms until it returns nil or timeout passes (then fails the
// test with the last error).
func WaitFor(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	if err := Poll(context.Background(), timeout, check); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Poll is WaitFor without a test: it returns the last error after timeout.
func Poll(ctx context.Context, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s: %w", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TailFile returns the last n lines of a file (for failure messages).
func TailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// PostgresUser returns the uid/gid of the "postgres" system user (created by Debian's
// postgresql-common), or fails the test.
func PostgresUser(t testing.TB) (uid, gid int) {
	t.Helper()
	out, err := exec.Command("id", "-u", "postgres").Output()
	if err != nil {
		t.Fatalf("no postgres user: %v", err)
	}
	uid, _ = strconv.Atoi(strings.TrimSpace(string(out)))
	out, err = exec.Command("id", "-g", "postgres").Output()
	if err != nil {
		t.Fatalf("no postgres group: %v", err)
	}
	gid, _ = strconv.Atoi(strings.TrimSpace(string(out)))
	return uid, gid
}

// PostgresTempDir makes a temporary directory owned by the postgres user, mode 0700,
// removed when the test ends.
func PostgresTempDir(t testing.TB) string {
	t.Helper()
	uid, gid := PostgresUser(t)
	dir, err := os.MkdirTemp("", "pgnode-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
