package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

const cliUsage = `usage: pgnode backup <command>

  push      switch WAL, push a full backup now, then apply retention (leader only)
  list      list the backups in S3 (with the read-only keys when set)
  wal-show  show the archived WAL timelines and gaps
  verify    restore the newest backup into a scratch directory with the read-only keys
            and check it (amcheck + pg_dumpall); exit 1 when the check fails
  check     check that S3 answers with the configured keys and the bucket exists
`

// CLI runs `pgnode backup <args>` (inside the container, e.g. via docker exec) and returns
// the exit code: 0 success, 1 failure, 2 usage error or refusal.
func CLI(ctx context.Context, cfg Config, node Node, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, cliUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if len(args) > 1 {
		fmt.Fprintf(stderr, "pgnode backup %s: unexpected arguments %q\n", args[0], strings.Join(args[1:], " "))
		return 2
	}
	if !cfg.Enabled() {
		fmt.Fprintln(stderr, "pgnode backup: backups are off: S3_BACKUP_PATH is empty")
		return 2
	}
	m := NewManager(cfg, node)
	switch args[0] {
	case "push":
		return m.cliPush(ctx, stdout, stderr)
	case "list":
		out, err := m.walg.output(ctx, m.walg.readKeys(), "backup-list", "--detail")
		fmt.Fprint(stdout, out)
		if err != nil {
			fmt.Fprintln(stderr, "pgnode backup list:", err)
			return 1
		}
		return 0
	case "wal-show":
		out, err := m.walg.output(ctx, m.walg.readKeys(), "wal-show")
		fmt.Fprint(stdout, out)
		if err != nil {
			fmt.Fprintln(stderr, "pgnode backup wal-show:", err)
			return 1
		}
		return 0
	case "verify":
		res, err := Verify(ctx, cfg, node)
		if err != nil {
			where := ""
			if res.Failed != "" {
				where = " (database " + res.Failed + ")"
			}
			fmt.Fprintf(stdout, "FAIL backup %s%s: %v\n", orNone(res.Backup), where, err)
			return 1
		}
		fmt.Fprintf(stdout, "PASS backup %s: %d databases checked (amcheck, pg_dumpall) in %s\n",
			res.Backup, len(res.Databases), res.Duration.Round(time.Second))
		return 0
	case "check":
		prefix := cfg.Prefix(node.Scope, node.Major)
		rc := 0
		for _, k := range []Keys{ReadWrite, ReadOnly} {
			name := map[Keys]string{ReadWrite: "read-write", ReadOnly: "read-only"}[k]
			if k == ReadOnly && !cfg.S3AccessKeyRO.IsSet() {
				fmt.Fprintf(stdout, "%s keys: not set\n", name)
				continue
			}
			if err := cfg.CheckStorage(ctx, k, prefix); err != nil {
				fmt.Fprintf(stdout, "%s keys: FAIL %v\n", name, err)
				rc = 1
				continue
			}
			fmt.Fprintf(stdout, "%s keys: OK (%s)\n", name, prefix)
		}
		return rc
	default:
		fmt.Fprintf(stderr, "pgnode backup: unknown command %q\n%s", args[0], cliUsage)
		return 2
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// cliPush is the on-demand backup: refused on a replica and while another node's backup
// runs; otherwise switch WAL, push and apply retention under the cluster-wide lock.
func (m *Manager) cliPush(ctx context.Context, stdout, stderr io.Writer) int {
	leader, reason, err := m.leaderCheck(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "pgnode backup push: cannot tell whether this node is the leader:", err)
		return 1
	}
	if !leader {
		fmt.Fprintf(stderr, "pgnode backup push: refused: this node is not the leader (%s); run it on the leader (patronictl list shows which node that is)\n", reason)
		return 2
	}
	client, err := consulClient(m.node)
	if err != nil {
		fmt.Fprintln(stderr, "pgnode backup push:", err)
		return 1
	}
	lock, err := acquireLock(ctx, client, m.node.Scope, m.node.Name, 5*time.Second)
	var held *errLockHeld
	if errors.As(err, &held) {
		fmt.Fprintf(stderr, "pgnode backup push: refused: %v; try again when it is done\n", held)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "pgnode backup push:", err)
		return 1
	}
	defer lock.Release()
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lock.Lost:
			cancel(errors.New("the cluster's backup lock was lost"))
		case <-bctx.Done():
		}
	}()
	if err := m.switchWAL(bctx); err != nil {
		slog.Warn("pg_switch_wal() failed; pushing the backup anyway", "err", err)
	}
	start := time.Now()
	b, err := m.pushAndRetain(bctx, "on demand")
	if err != nil {
		fmt.Fprintln(stderr, "pgnode backup push: FAILED:", err)
		return 1
	}
	fmt.Fprintf(stdout, "backup %s pushed in %s (%d bytes compressed); retention keeps %d full backups\n",
		orNone(b.Name), time.Since(start).Round(time.Millisecond), b.CompressedSize, m.cfg.KeepFull)
	return 0
}

// switchWAL closes the current WAL segment so it is archived right away.
func (m *Manager) switchWAL(ctx context.Context) error {
	_, err := queryOne(ctx, m.node, "SELECT pg_walfile_name(pg_switch_wal())")
	return err
}
