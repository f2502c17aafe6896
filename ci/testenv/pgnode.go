package testenv

import (
	"context"
	"encoding/json"
	"fmt"
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

	"github.com/jackc/pgx/v5"
)

// BuildPgnode builds cmd/pgnode into a temporary directory once per test binary.
func BuildPgnode(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgnode-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "pgnode")
		out, err := exec.Command("go", "build", "-o", builtBin, "pgnode/cmd/pgnode").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// Secrets used by test clusters.
const (
	SuperPassword = "test-super-pass-1"
	ReplPassword  = "test-repl-pass-1"
	RewindPass    = "test-rewind-pass-1"
	RestPassword  = "test-rest-pass-1"
)

// Node is one `pgnode run` process on loopback with its own ports and directories.
type Node struct {
	Name     string
	Bin      string
	Dir      string
	Env      map[string]string
	PGPort   int
	RestPort int
	LogPath  string
	cmd      *exec.Cmd
	done     chan struct{}
	t        testing.TB
}

// NewNode prepares (does not start) a node of cluster scope talking to consul.
func NewNode(t testing.TB, bin string, ports *Ports, consul *Consul, scope, name string, extra map[string]string) *Node {
	t.Helper()
	dir := PostgresTempDir(t)
	n := &Node{Name: name, Bin: bin, Dir: dir, PGPort: ports.Next(t), RestPort: ports.Next(t), t: t}
	n.LogPath = filepath.Join(dir, "pgnode.log")
	n.Env = map[string]string{
		"PATH":                         os.Getenv("PATH"),
		"LAN_HOST":                     "127.0.0.1",
		"PATRONI_SCOPE":                scope,
		"PATRONI_NAME":                 name,
		"PG_MAJOR":                     "15",
		"PATRONI_CONSUL_HOST":          consul.Addr,
		"POSTGRES_PORT":                strconv.Itoa(n.PGPort),
		"PATRONI_RESTAPI_PORT":         strconv.Itoa(n.RestPort),
		"PGNODE_ALIVE_PORT":            strconv.Itoa(ports.Next(t)),
		"PGNODE_METRICS_PORT":          strconv.Itoa(ports.Next(t)),
		"PGDATA":                       filepath.Join(dir, "volume", "data"),
		"PGNODE_CONFIG_DIR":            filepath.Join(dir, "etc"),
		"PGNODE_SOCKET_DIR":            filepath.Join(dir, "run"),
		"PGNODE_STATUS_FILE":           filepath.Join(dir, "status.json"),
		"PATRONI_RESTAPI_PASSWORD":     RestPassword,
		"POSTGRES_SUPERUSER_PASSWORD":  SuperPassword,
		"POSTGRES_REPLICATOR_PASSWORD": ReplPassword,
		"POSTGRES_REWIND_PASSWORD":     RewindPass,
		"PGNODE_WATCHDOG":              "off",
		"PGNODE_STOP_TIMEOUT":          "30s",
		"LOG_LEVEL":                    "info",
	}
	for k, v := range extra {
		n.Env[k] = v
	}
	t.Cleanup(n.Kill)
	return n
}

// EnvList returns the node's environment as KEY=VALUE strings.
func (n *Node) EnvList() []string {
	var env []string
	for k, v := range n.Env {
		env = append(env, k+"="+v)
	}
	return env
}

// Start starts `pgnode run`, appending its output to the node's log.
func (n *Node) Start() {
	n.t.Helper()
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	fmt.Fprintf(logf, "==== start %s\n", time.Now().Format(time.RFC3339Nano))
	n.cmd = exec.Command(n.Bin, "run")
	n.cmd.Env = n.EnvList()
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		n.t.Fatalf("starting pgnode %s: %v", n.Name, err)
	}
	done := make(chan struct{})
	n.done = done
	cmd := n.cmd
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
}

// Running reports whether the pgnode process is still running.
func (n *Node) Running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Wait waits up to d for pgnode to exit and returns its exit code (-1 on timeout).
func (n *Node) Wait(d time.Duration) int {
	select {
	case <-n.done:
		return n.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		return -1
	}
}

// Pid returns pgnode's pid.
func (n *Node) Pid() int { return n.cmd.Process.Pid }

// Stop sends SIGTERM (docker stop) and waits for the exit.
func (n *Node) Stop(d time.Duration) int {
	if !n.Running() {
		return n.cmd.ProcessState.ExitCode()
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	return n.Wait(d)
}

// PatroniPid returns the pid of this node's Patroni (0 when none).
func (n *Node) PatroniPid() int {
	return findProc(func(cmdline string) bool {
		return strings.Contains(cmdline, "patroni") && strings.Contains(cmdline, n.Env["PGNODE_CONFIG_DIR"])
	})
}

// PostmasterPid returns the pid of this node's postmaster (0 when none).
func (n *Node) PostmasterPid() int {
	b, err := os.ReadFile(filepath.Join(n.Env["PGDATA"], "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(first))
	if pid > 0 && syscall.Kill(pid, 0) == nil {
		return pid
	}
	return 0
}

// KillAll is a node crash: SIGKILL to pgnode, Patroni and the postmaster with its
// children, all at once.
func (n *Node) KillAll() {
	pids := []int{}
	if n.Running() {
		pids = append(pids, n.cmd.Process.Pid)
	}
	if p := n.PatroniPid(); p > 0 {
		pids = append(pids, p)
	}
	if p := n.PostmasterPid(); p > 0 {
		pids = append(pids, p)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if pm := n.PostmasterPid(); pm > 0 {
		_ = syscall.Kill(pm, syscall.SIGKILL)
	}
	if n.done != nil {
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
		}
	}
	// The orphaned backends die with their postmaster; wait for the pid file's process.
	deadline := time.Now().Add(10 * time.Second)
	for n.PostmasterPid() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill is the test cleanup: everything of the node dies.
func (n *Node) Kill() {
	n.KillAll()
	// Kill any leftover process using our directories (backends of a killed postmaster).
	for {
		p := findProc(func(cmdline string) bool { return strings.Contains(cmdline, n.Dir) })
		if p == 0 {
			return
		}
		_ = syscall.Kill(p, syscall.SIGKILL)
		time.Sleep(20 * time.Millisecond)
	}
}

func findProc(match func(cmdline string) bool) int {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.ReplaceAll(string(b), "\x00", " ")) {
			if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && strings.Contains(string(st), ") Z ") {
				continue
			}
			return pid
		}
	}
	return 0
}

// PatroniState is GET /patroni of a node.
type PatroniState struct {
	State    string `json:"state"`
	Role     string `json:"role"`
	Timeline int    `json:"timeline"`
}

// Patroni returns the node's GET /patroni, or an error.
func (n *Node) Patroni() (*PatroniState, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/patroni", n.RestPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st PatroniState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

// IsLeader reports whether Patroni says this node is the running primary.
func (n *Node) IsLeader() bool {
	st, err := n.Patroni()
	return err == nil && st.State == "running" && (st.Role == "master" || st.Role == "primary")
}

// Connect opens a superuser connection over TCP (what an application does).
func (n *Node) Connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", SuperPassword, n.PGPort))
}

// Exec runs one statement on the node.
func (n *Node) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := n.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// QueryInt runs a query returning one integer.
func (n *Node) QueryInt(ctx context.Context, sql string, args ...any) (int64, error) {
	conn, err := n.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var v int64
	err = conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// Log returns the node's log so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}
