package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"pgnode/ci/testenv"
	"pgnode/internal/command"
	"pgnode/internal/envspec"
)

// ports is the backup package's block (see ci/testenv).
var ports = testenv.NewPorts(22000)

var (
	standInOnce sync.Once
	standInPath string
	standInErr  error
)

// standIn returns a fresh copy of the recording stand-in wal-g (testdata/fakewalg) in its
// own directory: its calls, behaviour and "storage" live next to it.
func standIn(t *testing.T) (bin, dir string) {
	t.Helper()
	standInOnce.Do(func() {
		d, err := os.MkdirTemp("", "pgnode-fakewalg-build-")
		if err != nil {
			standInErr = err
			return
		}
		standInPath = filepath.Join(d, "wal-g")
		out, err := exec.Command("go", "build", "-o", standInPath, "./testdata/fakewalg").CombinedOutput()
		if err != nil {
			standInErr = fmt.Errorf("building the stand-in wal-g: %v: %s", err, out)
		}
	})
	if standInErr != nil {
		t.Fatal(standInErr)
	}
	dir = t.TempDir()
	_ = os.Chmod(dir, 0o777)
	b, err := os.ReadFile(standInPath)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "wal-g")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

type fakeCall struct {
	Args      []string `json:"args"`
	Env       []string `json:"env"`
	AccessKey string   `json:"access_key"`
	Prefix    string   `json:"prefix"`
	Pid       int      `json:"pid"`
	Start     int64    `json:"start"`
	End       int64    `json:"end"`
	Exit      int      `json:"exit"`
}

// cmd returns the wal-g command (arguments after --config <file>).
func (c fakeCall) cmd() string {
	for i := 0; i < len(c.Args); i++ {
		if c.Args[i] == "--config" {
			return strings.Join(c.Args[i+2:], " ")
		}
	}
	return strings.Join(c.Args, " ")
}

func (c fakeCall) config() string {
	for i := 0; i+1 < len(c.Args); i++ {
		if c.Args[i] == "--config" {
			return c.Args[i+1]
		}
	}
	return ""
}

func readCalls(t *testing.T, dir string) []fakeCall {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "calls.jsonl"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []fakeCall
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var c fakeCall
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatalf("calls.jsonl: %v: %q", err, line)
		}
		out = append(out, c)
	}
	return out
}

func callsWith(calls []fakeCall, prefix string) []fakeCall {
	var out []fakeCall
	for _, c := range calls {
		if strings.HasPrefix(c.cmd(), prefix) {
			out = append(out, c)
		}
	}
	return out
}

func setBehavior(t *testing.T, dir string, b map[string]any) {
	t.Helper()
	data, _ := json.Marshal(b)
	if err := os.WriteFile(filepath.Join(dir, "behavior.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// testConfig is a valid Config using the given wal-g binary.
func testConfig(walg string) Config {
	return Config{
		S3BackupPath: "s3://pgnode-test/backups", S3Region: "us-east-1", S3PathStyle: true,
		// Loopback only: the storage check after a failure must never leave the machine.
		S3Endpoint:    "http://127.0.0.1:1",
		S3AccessKeyRW: "RWKEYID", S3SecretKeyRW: "rw-secret-value", S3AccessKeyRO: "ROKEYID", S3SecretKeyRO: "ro-secret-value",
		Schedule: "20 5 * * *", KeepFull: 2, WalgBinary: walg, Compression: "zstd",
		ArchiveTimeout: 60 * time.Second, BackupTimeout: time.Hour, Retries: 0, RetryDelay: 100 * time.Millisecond,
		MaxAgeHours: 26, VerifyDir: "/var/lib/postgresql/restore-check", VerifyPort: 55432,
		BootstrapBackup: "LATEST", RecoveryTargetTimeline: "latest", RecoveryTargetInclusive: true, RecoveryTargetAction: "promote",
	}
}

// testNode writes the two WAL-G config files (0600) for cfg and returns the node.
func testNode(t *testing.T, cfg Config, name, consulAddr string) Node {
	t.Helper()
	dir := t.TempDir()
	n := Node{Scope: "bk-test", Name: name, Major: 15, DataDir: filepath.Join(dir, "data-"+name),
		PGHost: dir, PGPort: 5432, ConsulAddr: consulAddr,
		WalgConfigRW: filepath.Join(dir, "walg.json"), WalgConfigRO: filepath.Join(dir, "walg-ro.json")}
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(filepath.Join(n.DataDir, "PG_VERSION"), []byte("15\n"), 0o600)
	writeWalgConfigs(t, cfg, n)
	return n
}

func writeWalgConfigs(t *testing.T, cfg Config, n Node) {
	t.Helper()
	p := WalgParams{Prefix: cfg.Prefix(n.Scope, n.Major), PGHost: n.PGHost, PGPort: n.PGPort, PGUser: n.superUser()}
	for keys, path := range map[Keys]string{ReadWrite: n.WalgConfigRW, ReadOnly: n.WalgConfigRO} {
		b, err := cfg.WalgConfig(keys, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if n.Credential != nil {
			_ = os.Chown(path, int(n.Credential.Uid), int(n.Credential.Gid))
		}
	}
}

// captureLogs sends slog's default logger into a buffer for the test's duration.
func captureLogs(t *testing.T) *syncBuffer {
	t.Helper()
	buf := &syncBuffer{}
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.MultiWriter(buf, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(old) })
	return buf
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pgServer is a real PostgreSQL 15 cluster run by the postgres user.
type pgServer struct {
	t       *testing.T
	bin     string
	dir     string // socket directory and parent of data
	data    string
	port    int
	cred    *syscall.Credential
	logPath string
}

func postgresCred(t *testing.T) *syscall.Credential {
	uid, gid := testenv.PostgresUser(t)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

func (p *pgServer) run(name string, args ...string) error {
	return command.Run(context.Background(), command.Spec{Path: filepath.Join(p.bin, name), Args: args,
		Credential: p.cred, Quiet: true, Dir: p.dir})
}

// startPG initdb's (with data checksums) and starts a PostgreSQL 15 on a unix socket in a
// postgres-owned temp dir, with WAL archiving to wal-g when archiveCmd is set.
func startPG(t *testing.T, extraConf string) *pgServer {
	t.Helper()
	p := &pgServer{t: t, bin: testenv.PGBinDir(t, 15), dir: testenv.PostgresTempDir(t), port: ports.Next(t), cred: postgresCred(t)}
	p.data = filepath.Join(p.dir, "data")
	p.logPath = filepath.Join(p.dir, "pg.log")
	if err := p.run("initdb", "-D", p.data, "-U", "postgres", "--data-checksums", "-A", "trust", "--no-sync"); err != nil {
		t.Fatalf("initdb: %v", err)
	}
	p.appendConf(fmt.Sprintf("port = %d\nunix_socket_directories = '%s'\nlisten_addresses = ''\nfsync = off\nwal_level = replica\nmax_wal_senders = 5\n%s\n", p.port, p.dir, extraConf))
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *pgServer) appendConf(s string) {
	f, err := os.OpenFile(filepath.Join(p.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pgServer) start() {
	p.t.Helper()
	if err := p.run("pg_ctl", "-D", p.data, "-l", p.logPath, "-w", "-t", "60", "start"); err != nil {
		p.t.Fatalf("pg_ctl start: %v\n%s", err, testenv.TailFile(p.logPath, 20))
	}
}

func (p *pgServer) stop() {
	_ = p.run("pg_ctl", "-D", p.data, "-m", "fast", "-w", "stop")
}

// psql runs SQL and returns the unaligned output.
func (p *pgServer) psql(db, sql string) string {
	p.t.Helper()
	out, err := command.Output(context.Background(), command.Spec{Path: filepath.Join(p.bin, "psql"),
		Args:       []string{"-h", p.dir, "-p", fmt.Sprint(p.port), "-U", "postgres", "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql},
		Credential: p.cred})
	if err != nil {
		p.t.Fatalf("psql %q: %v", sql, err)
	}
	return strings.TrimSpace(out)
}

func (p *pgServer) node(name string) Node {
	return Node{Scope: "bk-test", Name: name, Major: 15, DataDir: p.data, PGHost: p.dir, PGPort: p.port,
		SuperUser: "postgres", SuperPassword: envspec.Secret(""), PGBinDir: p.bin, Credential: p.cred}
}
