package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"pgnode/internal/command"
)

// testHook is called at every step boundary; the fault-injection tests kill the process
// there. It is nil in production.
var testHook func(step string)

// spaceMarginBytes is the free space every mode needs beyond what it copies (the new
// cluster's catalogs, WAL and pg_upgrade's dump files). Tests lower it.
var spaceMarginBytes int64 = 256 << 20

func hook(step string) {
	if testHook != nil {
		testHook(step)
	}
}

type upgrader struct {
	n    *Node
	cfg  Config
	st   *statusWriter
	m    *Marker
	info clusterInfo
}

func (u *upgrader) status(step string) {
	u.st.set(PhaseUpgrading, step, "", u.m.FromMajor, u.m.ToMajor)
	slog.Info("major upgrade", "step", step, "from", u.m.FromMajor, "to", u.m.ToMajor)
}

func (u *upgrader) mark(step string) error {
	u.m.Step = step
	if err := writeMarker(u.n.root(), u.m); err != nil {
		return err
	}
	hook(step)
	return nil
}

func (u *upgrader) jobs() int {
	if u.cfg.Jobs > 0 {
		return u.cfg.Jobs
	}
	return runtime.NumCPU()
}

// startUpgrade runs the pre-checks that write nothing, then the upgrade.
func (n *Node) startUpgrade(ctx context.Context, cfg Config, v Volume, st *statusWriter) (*upgrader, error) {
	from, to := v.Major, n.Major
	for _, prog := range []string{"pg_upgrade", "initdb", "pg_ctl", "postgres", "vacuumdb", "psql"} {
		if _, err := os.Stat(n.bin(to, prog)); err != nil {
			return nil, fmt.Errorf("the image lacks %s of PostgreSQL %d; nothing was changed", n.bin(to, prog), to)
		}
	}
	if v.Standby {
		return nil, fmt.Errorf("data directory %s holds a standby of PostgreSQL %d (cluster state %q): a standby is never upgraded on its own; "+
			"upgrade the leader first (this node then re-clones from it), or promote this copy with PostgreSQL %d before upgrading; nothing was changed",
			n.DataDir, from, v.Control.State, from)
	}
	u := &upgrader{n: n, cfg: cfg, st: st, m: &Marker{FromMajor: from, ToMajor: to, Mode: cfg.Mode, OldSysID: v.Control.SystemID}}
	u.status("pre-check")
	// The private start also runs crash recovery when the old server was not shut down
	// cleanly, which pg_upgrade requires.
	info, err := n.gatherInfo(ctx, from, n.DataDir)
	if err != nil {
		return nil, fmt.Errorf("while inspecting the old cluster: %w", err)
	}
	u.info = info
	u.m.SuperUser, u.m.PreloadLibs, u.m.HasTimescale = info.SuperUser, info.PreloadLibs, info.HasTimescale
	if err := n.checkLibraries(ctx, from, to, info); err != nil {
		return nil, err
	}
	if err := u.checkSpace(); err != nil {
		return nil, err
	}
	base := filepath.Base(filepath.Clean(n.DataDir))
	stamp := time.Now().UTC().Format("20060102T150405Z")
	u.m.NewDir = filepath.Join(n.root(), fmt.Sprintf("%s.pg%d-new-%s", base, to, stamp))
	u.m.OldDir = filepath.Join(n.root(), fmt.Sprintf("%s.pg%d-%s", base, from, stamp))
	u.m.WorkDir = filepath.Join(n.root(), fmt.Sprintf(".pgnode-upgrade-work-%s", stamp))
	u.m.Started = time.Now().UTC()
	return u, nil
}

func (u *upgrader) checkSpace() error {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(u.n.root(), &fs); err != nil {
		return fmt.Errorf("while checking free space on %s: %w", u.n.root(), err)
	}
	free := int64(fs.Bavail) * int64(fs.Bsize)
	need := spaceMarginBytes
	if u.cfg.Mode == "copy" {
		need += u.info.SizeBytes
	}
	if free < need {
		hint := ""
		if u.cfg.Mode == "copy" {
			hint = ", or set POSTGRES_UPGRADE_MODE=link (needs no copy of the data)"
		}
		return fmt.Errorf("not enough free space on %s for a %s-mode upgrade: need about %s, %s free; free space on the volume%s; nothing was changed",
			u.n.root(), u.cfg.Mode, human(need), human(free), hint)
	}
	return nil
}

func human(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	default:
		return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
	}
}

func (u *upgrader) pgUpgradeArgs(check bool) []string {
	n := u.n
	hba := fmt.Sprintf("-c hba_file='%s'", filepath.Join(u.m.WorkDir, "pg_hba.conf"))
	newOpts := []string{hba}
	if len(u.info.PreloadLibs) > 0 {
		newOpts = append(newOpts, fmt.Sprintf("-c shared_preload_libraries='%s'", strings.Join(u.info.PreloadLibs, ",")))
	}
	if u.info.HasTimescale {
		newOpts = append(newOpts, "-c timescaledb.restoring=on")
	}
	args := []string{
		"-b", n.BinDirOr(u.m.FromMajor), "-B", n.BinDirOr(u.m.ToMajor),
		"-d", n.DataDir, "-D", u.m.NewDir,
		"-U", u.info.SuperUser, "-j", strconv.Itoa(u.jobs()),
		"-p", strconv.Itoa(privatePort), "-P", strconv.Itoa(privatePort + 1), "-s", u.m.WorkDir,
		"-o", hba + " -c archive_mode=off", "-O", strings.Join(newOpts, " "),
	}
	if u.cfg.Mode != "copy" || u.m.ToMajor >= 16 { // copy is the default; --copy exists from 16 on
		args = append(args, "--"+u.cfg.Mode)
	}
	if check {
		args = append(args, "--check")
	}
	return args
}

// BinDirOr returns BinDir(major) or Debian's default.
func (n *Node) BinDirOr(major int) string { return filepath.Dir(n.bin(major, "x")) }

func (u *upgrader) pgUpgrade(ctx context.Context, check bool) error {
	rec := &lineRecorder{next: slog.Default().Handler()}
	err := command.Run(ctx, command.Spec{
		Path: u.n.bin(u.m.ToMajor, "pg_upgrade"), Args: u.pgUpgradeArgs(check), Dir: u.m.WorkDir,
		Credential: u.n.cred(), Env: u.n.env(), Logger: slog.New(rec),
	})
	if err != nil {
		lines := rec.lines()
		if len(lines) > 6 {
			lines = lines[len(lines)-6:]
		}
		what := "pg_upgrade"
		if check {
			what = "pg_upgrade --check"
		}
		return fmt.Errorf("%s failed: %w: %s", what, err, strings.Join(lines, " | "))
	}
	return nil
}

// run executes the upgrade from the beginning (marker not yet written).
func (u *upgrader) run(ctx context.Context) error {
	n := u.n
	if err := u.mark(StepPrepare); err != nil {
		return err
	}
	fail := func(err error) error { return u.rollback(ctx, err) }
	if err := os.MkdirAll(u.m.WorkDir, 0o700); err != nil {
		return fail(err)
	}
	if err := os.Chown(u.m.WorkDir, n.UID, n.GID); err != nil {
		return fail(err)
	}
	hba := filepath.Join(u.m.WorkDir, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte("local all all trust\n"), 0o600); err != nil {
		return fail(err)
	}
	if err := os.Chown(hba, n.UID, n.GID); err != nil {
		return fail(err)
	}
	u.status("initdb")
	if err := u.initNew(ctx); err != nil {
		return fail(err)
	}
	hook("initdb-done")
	u.status("pg_upgrade --check")
	if err := u.pgUpgrade(ctx, true); err != nil {
		return fail(err)
	}
	if err := u.mark(StepTransfer); err != nil {
		return fail(err)
	}
	u.status("pg_upgrade")
	if err := u.pgUpgrade(ctx, false); err != nil {
		return fail(err)
	}
	if err := u.mark(StepTransferred); err != nil {
		return fail(err)
	}
	return u.resume(ctx)
}

// resume continues from the marker's step; every step is idempotent.
func (u *upgrader) resume(ctx context.Context) error {
	n := u.n
	switch u.m.Step {
	case StepTransferred, StepSwapping:
		u.status("swap")
		if err := u.keepOldConfig(); err != nil {
			return err
		}
		if u.m.Step != StepSwapping {
			if err := u.mark(StepSwapping); err != nil {
				return err
			}
		}
		if exists(u.m.NewDir) && exists(n.DataDir) && !exists(u.m.OldDir) {
			if err := os.Rename(n.DataDir, u.m.OldDir); err != nil {
				return fmt.Errorf("while moving the old cluster to %s: %w", u.m.OldDir, err)
			}
			syncDir(n.root())
		}
		hook("swap-half")
		if exists(u.m.NewDir) && !exists(n.DataDir) {
			if err := os.Rename(u.m.NewDir, n.DataDir); err != nil {
				return fmt.Errorf("while moving the new cluster to %s: %w", n.DataDir, err)
			}
			syncDir(n.root())
		}
		if err := u.mark(StepStarted); err != nil {
			return err
		}
		fallthrough
	case StepStarted:
		if err := u.afterUpgrade(ctx); err != nil {
			return fmt.Errorf("after the upgrade to PostgreSQL %d (the new cluster is in place; a restart retries these steps): %w", u.m.ToMajor, err)
		}
		return nil
	}
	return fmt.Errorf("unknown upgrade step %q in %s", u.m.Step, markerPath(n.root()))
}

// keepOldConfig carries the old authentication files over (so the new cluster accepts the
// same clients until Patroni rewrites them) and keeps the old server configuration
// readable beside the new one.
func (u *upgrader) keepOldConfig() error {
	if !exists(u.m.NewDir) {
		return nil // already swapped
	}
	copyFile := func(src, dst string) error {
		b, err := os.ReadFile(src)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		if _, err := f.Write(b); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Chown(dst, u.n.UID, u.n.GID)
	}
	for _, f := range [][2]string{
		{"pg_hba.conf", "pg_hba.conf"}, {"pg_ident.conf", "pg_ident.conf"},
		{"postgresql.conf", fmt.Sprintf("postgresql.pg%d.conf", u.m.FromMajor)},
		{"postgresql.base.conf", fmt.Sprintf("postgresql.base.pg%d.conf", u.m.FromMajor)},
		{"postgresql.auto.conf", fmt.Sprintf("postgresql.auto.pg%d.conf", u.m.FromMajor)},
	} {
		if err := copyFile(filepath.Join(u.n.DataDir, f[0]), filepath.Join(u.m.NewDir, f[1])); err != nil {
			return fmt.Errorf("while carrying %s over to the new cluster: %w", f[0], err)
		}
	}
	return nil
}

// rollback undoes an attempt that has not reached the point of no return: the old
// cluster's pg_control is put back (link mode), the new cluster is renamed aside, and the
// marker records the failure. cause is returned wrapped with what was done.
func (u *upgrader) rollback(ctx context.Context, cause error) error {
	if err := u.restoreOld(); err != nil {
		return fmt.Errorf("%w; ROLLBACK FAILED: %v", cause, err)
	}
	u.m.Step = StepFailed
	if cause != nil {
		u.m.Error = cause.Error()
	}
	if werr := writeMarker(u.n.root(), u.m); werr != nil {
		return fmt.Errorf("%w; and %v", cause, werr)
	}
	u.st.set(PhaseFailed, "rolled back", u.m.Error, u.m.FromMajor, u.m.ToMajor)
	hint := "fix the cause, then run `pgnode upgrade retry`"
	if cause != nil && (errors.Is(cause, syscall.ENOSPC) || strings.Contains(cause.Error(), "No space left on device")) {
		hint = "the volume is full: free space (the leftovers of this attempt may be removed), then run `pgnode upgrade retry`"
	}
	return fmt.Errorf("major upgrade %d→%d failed and was rolled back (the PostgreSQL %d cluster in %s is intact and startable; leftovers kept: %s; %s): %w",
		u.m.FromMajor, u.m.ToMajor, u.m.FromMajor, u.n.DataDir, strings.Join(u.m.Leftovers, ", "), hint, cause)
}

// restoreOld makes the old cluster startable again and renames the unfinished new one
// aside. Valid only before the new cluster was started by pgnode.
func (u *upgrader) restoreOld() error {
	n := u.n
	// An interrupted swap: the old cluster may already be at OldDir.
	if !exists(n.DataDir) && exists(u.m.OldDir) {
		if err := os.Rename(u.m.OldDir, n.DataDir); err != nil {
			return fmt.Errorf("while moving the old cluster back: %w", err)
		}
	} else if exists(n.DataDir) && exists(u.m.OldDir) {
		// The new cluster was already moved into place: move it aside first.
		if v, _ := os.ReadFile(filepath.Join(n.DataDir, "PG_VERSION")); strings.TrimSpace(string(v)) == strconv.Itoa(u.m.ToMajor) {
			p, err := renameAside(n.DataDir, fmt.Sprintf("pg%d-failed", u.m.ToMajor))
			if err != nil {
				return err
			}
			u.m.Leftovers = append(u.m.Leftovers, p)
			if err := os.Rename(u.m.OldDir, n.DataDir); err != nil {
				return fmt.Errorf("while moving the old cluster back: %w", err)
			}
		}
	}
	ctl := filepath.Join(n.DataDir, "global", "pg_control")
	if !exists(ctl) && exists(ctl+".old") {
		if err := os.Rename(ctl+".old", ctl); err != nil {
			return fmt.Errorf("while renaming global/pg_control.old back: %w", err)
		}
		slog.Warn("restored the old cluster's global/pg_control (link-mode pg_upgrade had disabled it)")
	}
	if exists(u.m.NewDir) {
		p, err := renameAside(u.m.NewDir, "failed")
		if err != nil {
			return err
		}
		u.m.Leftovers = append(u.m.Leftovers, p)
	}
	syncDir(n.root())
	return nil
}

// initNew initialises the new cluster with the old cluster's encoding, locale, data
// checksums and WAL segment size (pg_upgrade refuses mismatches).
func (u *upgrader) initNew(ctx context.Context) error {
	n := u.n
	cd, err := n.controlData(ctx, u.m.FromMajor, n.DataDir)
	if err != nil {
		return err
	}
	args := []string{"-D", u.m.NewDir, "-U", u.info.SuperUser, "--auth=trust",
		"--encoding=" + u.info.Encoding, "--lc-collate=" + u.info.Collate, "--lc-ctype=" + u.info.Ctype}
	switch info := u.info; info.LocProvider {
	case "i":
		args = append(args, "--locale-provider=icu", "--icu-locale="+info.Locale)
	case "b":
		args = append(args, "--locale-provider=builtin", "--builtin-locale="+info.Locale)
	}
	if cd.ChecksumVersion > 0 {
		args = append(args, "--data-checksums")
	} else if u.m.ToMajor >= 18 {
		args = append(args, "--no-data-checksums") // 18 enables them by default
	}
	if cd.WALSegmentBytes > 0 {
		args = append(args, fmt.Sprintf("--wal-segsize=%d", cd.WALSegmentBytes>>20))
	}
	// Made here (as root) so the volume root need not be writable by postgres.
	if err := os.Mkdir(u.m.NewDir, 0o700); err != nil {
		return fmt.Errorf("while creating %s: %w", u.m.NewDir, err)
	}
	if err := os.Chown(u.m.NewDir, n.UID, n.GID); err != nil {
		return fmt.Errorf("while handing %s to postgres: %w", u.m.NewDir, err)
	}
	if err := command.Run(ctx, command.Spec{Path: n.bin(u.m.ToMajor, "initdb"), Args: args, Credential: n.cred(), Env: n.env()}); err != nil {
		return (fmt.Errorf("while initialising the new PostgreSQL %d cluster: %w", u.m.ToMajor, err))
	}
	return nil
}
