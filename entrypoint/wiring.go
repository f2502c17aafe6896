package entrypoint

import (
	"context"
	"encoding/json"
	"path/filepath"

	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"pgnode/internal/fileutil"
	"strconv"
	"syscall"
	"time"

	"pgnode/backup"
	"pgnode/upgrade"
)

// runAsUser looks up PGNODE_RUN_AS: uid, gid and home directory.
func (c *Config) runAsUser() (uid, gid int, home string, err error) {
	u, err := user.Lookup(c.RunAs)
	if err != nil {
		return 0, 0, "", fmt.Errorf("PGNODE_RUN_AS: user %q does not exist: %w", c.RunAs, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, u.HomeDir, nil
}

// runAsCredential is the credential children run with: the postgres user when the agent
// is root, nil (as is) otherwise.
func (c *Config) runAsCredential(uid, gid int) *syscall.Credential {
	if os.Getuid() != 0 {
		return nil
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// UpgradeNode describes this node to the upgrade package.
func (c *Config) UpgradeNode() (upgrade.Node, error) {
	uid, gid, _, err := c.runAsUser()
	if err != nil {
		return upgrade.Node{}, err
	}
	binDir := c.BinDir
	major := c.PGMajor
	return upgrade.Node{
		DataDir: c.DataDir, Major: c.PGMajor,
		BinDir: func(m int) string {
			if m == major {
				return binDir
			}
			return fmt.Sprintf("/usr/lib/postgresql/%d/bin", m)
		},
		UID: uid, GID: gid, Name: c.Name,
		SuperUser: SuperUser, SuperPassword: c.SuperPassword,
		ReplicationUser: ReplicationUser, ReplicationPassword: c.ReplicatorPassword,
		RewindUser: RewindUser, RewindPassword: c.RewindPassword,
		Scope: c.Scope, ConsulAddr: c.ConsulHost, ConsulScheme: c.ConsulScheme, ConsulToken: c.ConsulToken,
		StatusFile: c.StatusFile,
	}, nil
}

// prepareVolume lets the upgrade package inspect the data volume before Patroni starts:
// adopt a single server, upgrade an older major, resume or roll back a half-finished
// upgrade, or refuse with what to do.
func (r *runner) prepareVolume(ctx context.Context) error {
	node, err := r.cfg.UpgradeNode()
	if err != nil {
		return err
	}
	out, err := upgrade.Prepare(ctx, r.cfg.UpgradeConfig, node)
	if err != nil {
		return fmt.Errorf("while preparing the data volume: %w", err)
	}
	slog.Info("data volume ready", "found", string(out.State), "adopted", out.Adopted, "upgraded", out.Upgraded, "system_identifier", out.SystemID)
	if out.RenamedAside != "" {
		slog.Warn("a stale replica copy was renamed aside; Patroni re-clones this node from the leader", "renamed_to", out.RenamedAside)
	}
	for _, l := range out.Leftovers {
		slog.Warn("leftover on the data volume (kept; remove it once you no longer need it)", "path", l)
	}
	r.requestFullBackup = out.RequestFullBackup
	return nil
}

// startSidecars starts the backup scheduler and the metrics endpoint beside Patroni.
func (r *runner) startSidecars(ctx context.Context) {
	node := r.cfg.BackupNode()
	node.Credential = r.cred
	m := backup.NewManager(r.cfg.BackupConfig, node)
	r.backup = m
	go func() {
		if err := m.Start(ctx); err != nil && !errors.Is(err, context.Canceled) {
			slog.Error("backup scheduler stopped", "err", err)
		}
	}()
	if r.requestFullBackup && r.cfg.BackupConfig.Enabled() {
		slog.Info("the data volume has a new system identifier: a full backup is taken as soon as this node leads")
		m.RequestBackup()
	}
	go r.publishBackupStatus(ctx, m)
	if r.cfg.MetricsPort == 0 {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.MetricsHandler())
	srv := &http.Server{Addr: net.JoinHostPort(r.cfg.ListenHost, strconv.Itoa(r.cfg.MetricsPort)), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics endpoint stopped", "addr", srv.Addr, "err", err)
		}
	}()
	go func() { <-ctx.Done(); _ = srv.Close() }()
}

// backupStatusFile is where `pgnode run` publishes the backup state for `pgnode health`
// and `pgnode status`, next to the agent status file.
func (c *Config) backupStatusFile() string {
	return filepath.Join(filepath.Dir(c.StatusFile), "backup.json")
}

func (r *runner) publishBackupStatus(ctx context.Context, m *backup.Manager) {
	for {
		b, err := json.Marshal(m.Status())
		if err == nil {
			_ = fileutil.WriteAtomic(r.cfg.backupStatusFile(), b, 0o644, -1, -1)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}

// cmdBackup runs `pgnode backup …` (package backup).
func cmdBackup(args []string) int {
	cfg, err := loadConfig()
	if err != nil {
		printConfigError(err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	node := cfg.BackupNode()
	if uid, gid, _, err := cfg.runAsUser(); err == nil {
		node.Credential = cfg.runAsCredential(uid, gid)
	}
	return backup.CLI(ctx, cfg.BackupConfig, node, args, os.Stdout, os.Stderr)
}

// cmdUpgrade runs `pgnode upgrade …` (package upgrade).
func cmdUpgrade(args []string) int {
	cfg, err := loadConfig()
	if err != nil {
		printConfigError(err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	node, err := cfg.UpgradeNode()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgnode: %v\n", err)
		return 1
	}
	return upgrade.CLI(ctx, cfg.UpgradeConfig, node, args, os.Stdout, os.Stderr)
}
