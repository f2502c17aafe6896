package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// AsPostgres runs a program as the postgres user and returns its combined output.
func AsPostgres(t testing.TB, path string, args ...string) (string, error) {
	t.Helper()
	uid, gid := PostgresUser(t)
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_MESSAGES=C", "HOME=/tmp", "PGTZ=UTC"}
	cmd.Dir = "/tmp"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustAsPostgres is AsPostgres failing the test on error.
func MustAsPostgres(t testing.TB, path string, args ...string) string {
	t.Helper()
	out, err := AsPostgres(t, path, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(path), strings.Join(args, " "), err, out)
	}
	return out
}

// InitDB runs initdb of a major as postgres into dir.
func InitDB(t testing.TB, major int, dir string, args ...string) {
	t.Helper()
	MustAsPostgres(t, filepath.Join(PGBinDir(t, major), "initdb"), append([]string{"-D", dir, "-U", "postgres", "--auth=trust"}, args...)...)
}

// PG is a PostgreSQL server started by a test with pg_ctl (unix socket in a private
// directory; TCP on Port only when Port > 0).
type PG struct {
	Major int
	Dir   string
	Sock  string
	Port  int
}

// StartPG starts the cluster in dir as postgres. port 0 means no TCP (socket port 5432).
// The server is stopped when the test ends (if still running).
func StartPG(t testing.TB, major int, dir string, port int, extra ...string) *PG {
	t.Helper()
	uid, gid := PostgresUser(t)
	sock, err := os.MkdirTemp("", "pgnode-test-sock-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(sock, uid, gid)
	p := &PG{Major: major, Dir: dir, Sock: sock, Port: port}
	listen := "''"
	sport := 5432
	if port > 0 {
		listen, sport = "127.0.0.1", port
	}
	opts := fmt.Sprintf("-c listen_addresses=%s -c port=%d -c unix_socket_directories='%s' %s", listen, sport, sock, strings.Join(extra, " "))
	MustAsPostgres(t, filepath.Join(PGBinDir(t, major), "pg_ctl"), "start", "-w", "-t", "120", "-D", dir, "-l", filepath.Join(sock, "log"), "-o", opts)
	t.Cleanup(func() { p.stop(t, false); _ = os.RemoveAll(sock) })
	return p
}

func (p *PG) sport() int {
	if p.Port > 0 {
		return p.Port
	}
	return 5432
}

// Stop stops the server (fast mode) or fails the test.
func (p *PG) Stop(t testing.TB) { t.Helper(); p.stop(t, true) }

func (p *PG) stop(t testing.TB, must bool) {
	if _, err := os.Stat(filepath.Join(p.Dir, "postmaster.pid")); err != nil {
		return
	}
	out, err := AsPostgres(t, filepath.Join(PGBinDir(t, p.Major), "pg_ctl"), "stop", "-w", "-t", "120", "-m", "fast", "-D", p.Dir)
	if err != nil && must {
		t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// SQL runs sql with psql (-XAt, ON_ERROR_STOP) in db and returns trimmed output.
func (p *PG) SQL(t testing.TB, db, sql string) string {
	t.Helper()
	return strings.TrimSpace(MustAsPostgres(t, filepath.Join(PGBinDir(t, p.Major), "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1",
		"-h", p.Sock, "-p", strconv.Itoa(p.sport()), "-U", "postgres", "-d", db, "-c", sql))
}
