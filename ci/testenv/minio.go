package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// MinioBinary returns the MinIO server built by ci/setup-minio.sh (PGNODE_MINIO_DIR, default
// /var/cache/pgnode/minio, then PATH), or fails the test.
func MinioBinary(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("PGNODE_MINIO_DIR")
	if dir == "" {
		dir = "/var/cache/pgnode/minio"
	}
	return RequireBinary(t, "minio (run ci/setup-minio.sh)", filepath.Join(dir, "bin", "minio"), "minio")
}

// Minio is a MinIO server on loopback with a throw-away data directory.
type Minio struct {
	Endpoint  string // http://127.0.0.1:port
	Port      int
	RootUser  string
	RootPass  string
	DataDir   string
	LogPath   string
	cmd       *exec.Cmd
	done      chan struct{}
	extraArgs []string
}

// StartMinio starts `minio server` on loopback with ports from p and stops it when the test
// ends. Buckets are created by the caller (S3 PUT bucket).
func StartMinio(t testing.TB, p *Ports) *Minio {
	t.Helper()
	bin := MinioBinary(t)
	m := &Minio{Port: p.Next(t), RootUser: "pgnodetestroot", RootPass: "pgnode-test-secret-0123456789"}
	console := p.Next(t)
	m.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", m.Port)
	dir := t.TempDir()
	m.DataDir = filepath.Join(dir, "data")
	m.LogPath = filepath.Join(dir, "minio.log")
	logf, err := os.Create(m.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, "server", "--quiet", "--address", "127.0.0.1:"+strconv.Itoa(m.Port),
		"--console-address", "127.0.0.1:"+strconv.Itoa(console), m.DataDir)
	m.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.RootUser, "MINIO_ROOT_PASSWORD="+m.RootPass,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+dir)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("starting minio: %v", err)
	}
	m.done = make(chan struct{})
	go func() { _ = m.cmd.Wait(); _ = logf.Close(); close(m.done) }()
	t.Cleanup(m.Stop)
	WaitFor(t, 60*time.Second, "minio ready", func() error {
		select {
		case <-m.done:
			return fmt.Errorf("minio exited: %s", TailFile(m.LogPath, 10))
		default:
		}
		resp, err := http.Get(m.Endpoint + "/minio/health/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	})
	return m
}

// Stop stops the server (idempotent).
func (m *Minio) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.done:
		return
	default:
	}
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
}
