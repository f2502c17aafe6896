package backup

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"pgnode/internal/command"
	"pgnode/internal/fileutil"
)

// VerifyResult is the outcome of a restore check.
type VerifyResult struct {
	Backup    string        // the backup that was restored
	Databases []string      // databases checked
	Failed    string        // the database whose check failed ("" when none or not that far)
	Duration  time.Duration // wall time of the whole check
}

type verifyRecord struct {
	Time   time.Time `json:"time"`
	OK     bool      `json:"ok"`
	Error  string    `json:"error,omitempty"`
	Node   string    `json:"node"`
	Backup string    `json:"backup"`
}

// carriedParams are settings copied from the restored node's configuration: PostgreSQL
// refuses to replay WAL with lower values than the primary had, and extensions such as
// TimescaleDB must be preloaded to be dumped.
var carriedParams = []string{"shared_preload_libraries", "max_connections", "max_worker_processes",
	"max_prepared_transactions", "max_locks_per_transaction", "max_wal_senders"}

// Verify restores the newest backup with the read-only keys into a scratch directory under
// POSTGRES_BACKUP_VERIFY_DIR, starts PostgreSQL on it on a private port (unix socket only)
// with archive_mode=off and a configuration of its own (the restored one is the old node's:
// its archive_command would push into production's backup path), checks every database
// with pg_amcheck (heap and every valid btree index) and pg_dumpall > /dev/null, then stops
// that PostgreSQL and removes the scratch directory. It never writes to the backup storage.
func Verify(ctx context.Context, cfg Config, node Node) (VerifyResult, error) {
	v := &verifier{cfg: &cfg, node: node, log: slog.Default().With("component", "backup-verify")}
	v.walg = &walgRunner{cfg: &cfg, node: node}
	start := time.Now()
	res, err := v.run(ctx)
	res.Duration = time.Since(start)
	rec := verifyRecord{Time: time.Now().UTC(), OK: err == nil, Node: node.Name, Backup: res.Backup}
	if err != nil {
		rec.Error = err.Error()
		v.log.Error("restore check FAILED", "backup", res.Backup, "database", res.Failed, "err", err)
	} else {
		v.log.Info("restore check passed", "backup", res.Backup, "databases", len(res.Databases), "duration", res.Duration.Round(time.Second))
	}
	if c, cerr := consulClient(node); cerr == nil && node.Scope != "" {
		b, _ := json.Marshal(rec)
		if _, perr := c.KV().Put(&api.KVPair{Key: verifyKey(node.Scope), Value: b}, nil); perr != nil {
			v.log.Warn("could not record the restore check result in Consul", "err", perr)
		}
	}
	return res, err
}

// verify runs a restore check and records the result in the manager's state.
func (m *Manager) verify(ctx context.Context) error {
	res, err := Verify(ctx, m.cfg, m.node)
	m.mu.Lock()
	m.st.verifyRan, m.st.verifyOK, m.st.verifyTime = true, err == nil, time.Now()
	m.st.verifyErr = ""
	if err != nil {
		m.st.verifyErr = err.Error()
	}
	m.mu.Unlock()
	_ = res
	return err
}

type verifier struct {
	cfg     *Config
	node    Node
	log     *slog.Logger
	walg    *walgRunner
	scratch string
	data    string
}

func (n Node) binDir() string {
	if n.PGBinDir != "" {
		return n.PGBinDir
	}
	return fmt.Sprintf("/usr/lib/postgresql/%d/bin", n.Major)
}

func (n Node) owner() (int, int) {
	if n.Credential != nil {
		return int(n.Credential.Uid), int(n.Credential.Gid)
	}
	return os.Getuid(), os.Getgid()
}

func (v *verifier) run(ctx context.Context) (VerifyResult, error) {
	var res VerifyResult
	if !v.cfg.Enabled() {
		return res, errors.New("S3_BACKUP_PATH is empty: there are no backups to check")
	}
	if _, err := v.walg.configFor(ReadOnly); err != nil {
		return res, err
	}
	bs, err := v.walg.list(ctx, ReadOnly)
	if err != nil {
		return res, fmt.Errorf("while listing backups with the read-only keys: %w", err)
	}
	if len(bs) == 0 {
		return res, errors.New("there is no backup to check")
	}
	res.Backup = bs[len(bs)-1].Name
	if err := v.makeScratch(); err != nil {
		return res, err
	}
	defer v.cleanup()
	v.log.Info("restoring backup into the scratch directory", "backup", res.Backup, "dir", v.data)
	if err := v.walg.run(ctx, ReadOnly, nil, "backup-fetch", v.data, res.Backup); err != nil {
		return res, err
	}
	if err := v.configure(); err != nil {
		return res, err
	}
	if err := v.startPG(ctx); err != nil {
		return res, err
	}
	dbs, err := v.databases(ctx)
	if err != nil {
		return res, err
	}
	res.Databases = dbs
	amcheck := filepath.Join(v.node.binDir(), "pg_amcheck")
	for _, db := range dbs {
		err := v.pgRun(ctx, "pg_amcheck", amcheck, "-h", v.scratch, "-p", fmt.Sprint(v.cfg.VerifyPort),
			"-U", v.node.superUser(), "--install-missing", "-d", db)
		if err != nil {
			res.Failed = db
			return res, fmt.Errorf("amcheck found problems in database %q: %w", db, err)
		}
	}
	dumpall := filepath.Join(v.node.binDir(), "pg_dumpall")
	if err := v.pgRun(ctx, "pg_dumpall", dumpall, "-h", v.scratch, "-p", fmt.Sprint(v.cfg.VerifyPort),
		"-U", v.node.superUser(), "--no-sync", "-f", os.DevNull); err != nil {
		res.Failed = "(pg_dumpall)"
		return res, fmt.Errorf("pg_dumpall of the restored backup failed: %w", err)
	}
	return res, nil
}

// makeScratch creates a fresh scratch directory; leftovers of an interrupted earlier check
// (only directories this code created, named check-*) are removed first.
func (v *verifier) makeScratch() error {
	uid, gid := v.node.owner()
	if err := os.MkdirAll(v.cfg.VerifyDir, 0o700); err != nil {
		return fmt.Errorf("POSTGRES_BACKUP_VERIFY_DIR %s: %w", v.cfg.VerifyDir, err)
	}
	_ = os.Chown(v.cfg.VerifyDir, uid, gid)
	old, _ := filepath.Glob(filepath.Join(v.cfg.VerifyDir, "check-*"))
	for _, o := range old {
		v.log.Info("removing the scratch directory of an interrupted restore check", "dir", o)
		v.stopPG(filepath.Join(o, "data"))
		if err := os.RemoveAll(o); err != nil {
			return fmt.Errorf("while removing old scratch directory %s: %w", o, err)
		}
	}
	dir, err := os.MkdirTemp(v.cfg.VerifyDir, "check-")
	if err != nil {
		return fmt.Errorf("while creating the scratch directory: %w", err)
	}
	v.scratch = dir
	v.data = filepath.Join(dir, "data")
	for _, d := range []string{dir, v.data} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return fmt.Errorf("while handing %s to the postgres user: %w", d, err)
		}
	}
	return nil
}

// readParams reads simple `name = value` lines of a postgresql.conf-style file.
func readParams(path string) map[string]string {
	out := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out[strings.TrimSpace(k)] = confValue(strings.TrimSpace(val))
	}
	return out
}

// confValue returns a postgresql.conf value without quotes and trailing comment.
func confValue(v string) string {
	if strings.HasPrefix(v, "'") {
		var b strings.Builder
		for i := 1; i < len(v); i++ {
			if v[i] == '\'' {
				if i+1 < len(v) && v[i+1] == '\'' {
					b.WriteByte('\'')
					i++
					continue
				}
				break
			}
			b.WriteByte(v[i])
		}
		return b.String()
	}
	if i := strings.IndexByte(v, '#'); i >= 0 {
		v = v[:i]
	}
	return strings.TrimSpace(v)
}

func quoteConf(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// configure replaces the restored node's configuration with the check's own.
func (v *verifier) configure() error {
	carried := map[string]string{}
	for _, f := range []string{"postgresql.base.conf", "postgresql.conf", "postgresql.auto.conf"} {
		p := readParams(filepath.Join(v.data, f))
		for _, k := range carriedParams {
			if val, ok := p[k]; ok && val != "" {
				carried[k] = val
			}
		}
		if _, err := os.Stat(filepath.Join(v.data, f)); err == nil {
			if err := os.Rename(filepath.Join(v.data, f), filepath.Join(v.data, f+".restored")); err != nil {
				return fmt.Errorf("while setting the restored %s aside: %w", f, err)
			}
		}
	}
	for _, f := range []string{"standby.signal", "recovery.signal", "postmaster.pid", "recovery.conf"} {
		_ = os.Remove(filepath.Join(v.data, f))
	}
	cfgRO, err := v.walg.configFor(ReadOnly)
	if err != nil {
		return err
	}
	restore := v.cfg.walgCommand(cfgRO, "wal-fetch", "%f", "%p")
	settings := map[string]string{
		"port":                      fmt.Sprint(v.cfg.VerifyPort),
		"listen_addresses":          quoteConf(""),
		"unix_socket_directories":   quoteConf(v.scratch),
		"archive_mode":              "off",
		"archive_command":           quoteConf(""),
		"restore_command":           quoteConf(restore),
		"recovery_target":           quoteConf("immediate"),
		"recovery_target_action":    quoteConf("promote"),
		"hba_file":                  quoteConf(filepath.Join(v.scratch, "pg_hba.conf")),
		"ident_file":                quoteConf(filepath.Join(v.scratch, "pg_ident.conf")),
		"hot_standby":               "off",
		"logging_collector":         "off",
		"log_destination":           quoteConf("stderr"),
		"primary_conninfo":          quoteConf(""),
		"primary_slot_name":         quoteConf(""),
		"synchronous_standby_names": quoteConf(""),
		"wal_level":                 "replica",
	}
	for k, val := range carried {
		settings[k] = quoteConf(val)
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# written by pgnode backup verify: the restored node's configuration is set aside as *.restored\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	uid, gid := v.node.owner()
	files := map[string]string{
		filepath.Join(v.data, "postgresql.conf"):      b.String(),
		filepath.Join(v.data, "postgresql.auto.conf"): "",
		filepath.Join(v.data, "recovery.signal"):      "",
		filepath.Join(v.scratch, "pg_hba.conf"):       "local all all trust\n",
		filepath.Join(v.scratch, "pg_ident.conf"):     "",
	}
	for p, content := range files {
		if err := fileutil.WriteAtomic(p, []byte(content), 0o600, uid, gid); err != nil {
			return fmt.Errorf("while writing %s: %w", p, err)
		}
	}
	return nil
}

func (v *verifier) pgRun(ctx context.Context, name, path string, args ...string) error {
	tail := newTailHandler(slog.Default().Handler(), 20)
	err := command.Run(ctx, command.Spec{Path: path, Args: args, Name: name, Credential: v.node.Credential,
		Logger: slog.New(tail), Dir: v.scratch})
	if err != nil {
		if msg := tail.lastError(); msg != "" {
			return fmt.Errorf("%s: %w", msg, err)
		}
	}
	return err
}

func (v *verifier) startPG(ctx context.Context) error {
	logPath := filepath.Join(v.scratch, "postgres.log")
	err := v.pgRun(ctx, "pg_ctl", filepath.Join(v.node.binDir(), "pg_ctl"), "-D", v.data, "-l", logPath,
		"-w", "-t", "86400", "start")
	if err != nil {
		b, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 5 {
			lines = lines[len(lines)-5:]
		}
		return fmt.Errorf("the restored backup does not start: %w; postgres log: %s", err, strings.Join(lines, " | "))
	}
	// pg_ctl -w returns once the postmaster runs; recovery to the backup's consistent point
	// and the promotion may take longer.
	for {
		conn, err := connectPG(ctx, v.scratch, v.cfg.VerifyPort, v.node.superUser(), "", "postgres")
		if err == nil {
			var rec bool
			qerr := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
			conn.Close(context.Background())
			if qerr == nil && !rec {
				return nil
			}
		}
		if _, serr := os.Stat(filepath.Join(v.data, "postmaster.pid")); serr != nil {
			return fmt.Errorf("the restored backup's PostgreSQL stopped during recovery; see %s", logPath)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("while waiting for the restored backup to finish recovery: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (v *verifier) databases(ctx context.Context) ([]string, error) {
	conn, err := connectPG(ctx, v.scratch, v.cfg.VerifyPort, v.node.superUser(), "", "postgres")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
	if err != nil {
		return nil, fmt.Errorf("while listing the restored databases: %w", err)
	}
	defer rows.Close()
	var dbs []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		dbs = append(dbs, n)
	}
	return dbs, rows.Err()
}

// stopPG stops a scratch PostgreSQL if one runs on dataDir.
func (v *verifier) stopPG(dataDir string) {
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pgctl := filepath.Join(v.node.binDir(), "pg_ctl")
	if err := command.Run(ctx, command.Spec{Path: pgctl, Args: []string{"-D", dataDir, "-m", "fast", "-w", "-t", "60", "stop"},
		Name: "pg_ctl", Credential: v.node.Credential, Quiet: true}); err != nil {
		_ = command.Run(ctx, command.Spec{Path: pgctl, Args: []string{"-D", dataDir, "-m", "immediate", "-w", "stop"},
			Name: "pg_ctl", Credential: v.node.Credential, Quiet: true})
	}
}

func (v *verifier) cleanup() {
	v.stopPG(v.data)
	if err := os.RemoveAll(v.scratch); err != nil {
		v.log.Error("could not remove the restore check's scratch directory", "dir", v.scratch, "err", err)
	}
}
