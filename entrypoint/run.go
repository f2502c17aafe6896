package entrypoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	consul "github.com/hashicorp/consul/api"

	"pgnode/backup"
	"pgnode/internal/command"
	"pgnode/internal/fileutil"
)

// runner is `pgnode run`: one start of the node.
type runner struct {
	cfg       *Config
	cred      *syscall.Credential // nil when not root
	uid, gid  int
	home      string
	consul    *consul.Client
	alive     *AliveCheck
	startedAt time.Time
	backup    *backup.Manager
	// requestFullBackup is set when the volume got a new system identifier (upgrade).
	requestFullBackup bool
	// walgMissing: S3 is configured but the image has no WAL-G.
	walgMissing bool
	// desiredDCS is the dynamic configuration rendered at start; the leader PATCHes it
	// into the DCS so a re-deploy applies changes.
	desiredDCS DCSConfig
}

func cmdRun(args []string) int {
	started := time.Now()
	cfg, err := loadConfig()
	if err != nil {
		printConfigError(err)
		return 1
	}
	r := &runner{cfg: cfg, startedAt: started}
	code, err := r.run(context.Background())
	if err != nil {
		slog.Error("pgnode run stopped", "err", err)
	}
	return code
}

// run prepares the node and supervises Patroni until it exits; it returns the exit code.
func (r *runner) run(ctx context.Context) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	raw := make(chan os.Signal, 16)
	signal.Notify(raw, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGCHLD)
	defer signal.Stop(raw)
	if os.Getpid() != 1 {
		// Orphans (a postmaster whose Patroni died) are reparented to us, so we can see,
		// fence and reap them.
		_ = setChildSubreaper()
	}
	// From the first moment on, SIGCHLD reaps orphans (postmasters pg_ctl started during
	// an upgrade are reparented to PID 1); other signals go to whoever runs now: the
	// start-up (which then stops cleanly) or the supervisor (which forwards them).
	sigs := make(chan os.Signal, 16)
	go func() {
		for s := range raw {
			if s == syscall.SIGCHLD {
				command.ReapOrphans()
				continue
			}
			sigs <- s
		}
	}()
	startCtx, startCancel := context.WithCancel(ctx)
	defer startCancel()
	startDone := make(chan struct{})
	stopDuringStart := make(chan os.Signal, 1)
	watcherGone := make(chan struct{})
	go func() {
		defer close(watcherGone)
		select {
		case s := <-sigs:
			slog.Info("signal during start; stopping", "signal", s.String())
			stopDuringStart <- s
			startCancel()
		case <-startDone:
		}
	}()
	if err := r.lookupUser(); err != nil {
		return 1, err
	}
	if r.cfg.BootstrapMethod == "walg" && r.cfg.WalgMissing() {
		return 1, fmt.Errorf("PATRONI_BOOTSTRAP_METHOD=walg needs WAL-G, but %q (WALG_BINARY) is not installed in this image; nothing was changed", r.cfg.WalgBinary)
	}
	if err := r.prepareDirs(); err != nil {
		return 1, err
	}
	r.writeStatus("starting", "")
	if err := r.prepareVolume(startCtx); err != nil {
		if startCtx.Err() != nil {
			return 0, nil
		}
		return 1, err
	}
	if err := r.writeConfigs(); err != nil {
		return 1, err
	}
	cl, err := r.cfg.consulClient()
	if err != nil {
		return 1, err
	}
	r.consul = cl
	if err := CheckStaleDCS(startCtx, r.cfg, cl); err != nil {
		if startCtx.Err() != nil {
			return 0, nil
		}
		return 1, fmt.Errorf("while checking Consul for stale cluster state: %w", err)
	}
	if r.cfg.FastFailover {
		r.alive = NewAliveCheck(r.cfg, cl)
		if err := r.alive.Open(startCtx); err != nil {
			if startCtx.Err() != nil {
				return 0, nil
			}
			return 1, err
		}
	}
	r.startSidecars(ctx)
	close(startDone)
	<-watcherGone
	select {
	case <-stopDuringStart:
		r.releaseAlive()
		return 0, nil
	default:
	}
	return r.supervise(ctx, sigs)
}

func (r *runner) releaseAlive() {
	if r.alive != nil {
		r.alive.Release()
	}
}

func (r *runner) lookupUser() error {
	var err error
	if r.uid, r.gid, r.home, err = r.cfg.runAsUser(); err != nil {
		return err
	}
	r.cred = r.cfg.runAsCredential(r.uid, r.gid)
	if os.Getuid() != 0 && os.Getuid() != r.uid {
		return fmt.Errorf("pgnode runs as uid %d, neither root nor %s (uid %d): start it as root or as %s", os.Getuid(), r.cfg.RunAs, r.uid, r.cfg.RunAs)
	}
	return nil
}

func (r *runner) chown(path string) error {
	if os.Getuid() != 0 {
		return nil
	}
	return os.Chown(path, r.uid, r.gid)
}

// prepareDirs creates the config, socket and status directories and a missing or empty
// data directory (0700, owned by the postgres user). A data directory with content is
// left as it is here; the upgrade package inspects it.
func (r *runner) prepareDirs() error {
	for _, d := range []struct {
		path string
		mode os.FileMode
		own  bool
	}{{r.cfg.ConfigDir, 0o700, true}, {r.cfg.SocketDir, 0o2775, true}, {filepath.Dir(r.cfg.StatusFile), 0o755, false},
		{filepath.Dir(r.cfg.DataDir), 0o755, false}} {
		if err := os.MkdirAll(d.path, 0o755); err != nil {
			return fmt.Errorf("while creating %s: %w", d.path, err)
		}
		if d.own {
			if err := r.chown(d.path); err != nil {
				return fmt.Errorf("while giving %s to %s: %w", d.path, r.cfg.RunAs, err)
			}
			if err := os.Chmod(d.path, d.mode); err != nil {
				return fmt.Errorf("while setting the mode of %s: %w", d.path, err)
			}
		}
	}
	empty, err := dataDirEmpty(r.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("while reading PGDATA %s: %w", r.cfg.DataDir, err)
	}
	if empty {
		if err := os.MkdirAll(r.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("while creating PGDATA %s: %w", r.cfg.DataDir, err)
		}
		if err := r.chown(r.cfg.DataDir); err != nil {
			return fmt.Errorf("while giving PGDATA %s to %s: %w", r.cfg.DataDir, r.cfg.RunAs, err)
		}
		return os.Chmod(r.cfg.DataDir, 0o700)
	}
	st, err := os.Stat(r.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("while reading PGDATA %s: %w", r.cfg.DataDir, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != r.uid {
		return fmt.Errorf("PGDATA %s holds data owned by uid %d, not %s (uid %d); nothing was changed. If this volume is yours, give it to %s (chown -R %d:%d %s) and start again",
			r.cfg.DataDir, sys.Uid, r.cfg.RunAs, r.uid, r.cfg.RunAs, r.uid, r.gid, r.cfg.DataDir)
	}
	if st.Mode().Perm()&0o077 != 0 && st.Mode().Perm() != 0o750 {
		if err := os.Chmod(r.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("while setting the mode of PGDATA: %w", err)
		}
	}
	return nil
}

// writeConfigs renders patroni.yml and the WAL-G configs into the config directory
// (atomic, 0600, owned by the postgres user). Stale WAL-G configs are removed when
// backups are off, since they hold keys.
func (r *runner) writeConfigs() error {
	missing := r.cfg.WalgMissing()
	if missing {
		slog.Error("S3 is configured but WAL-G (WALG_BINARY=" + r.cfg.WalgBinary + ") is not installed in this image: WAL archiving, backups and replicas from S3 are unavailable until an image with WAL-G runs (see docs/image.md); PostgreSQL runs without archiving")
	}
	rendered, err := r.cfg.Render(RenderOptions{WalgMissing: missing})
	if err != nil {
		return err
	}
	r.desiredDCS = rendered.Patroni.Bootstrap.DCS
	uid, gid := -1, -1
	if os.Getuid() == 0 {
		uid, gid = r.uid, r.gid
	}
	written := map[string]bool{}
	for _, f := range rendered.Files() {
		if err := fileutil.WriteAtomic(filepath.Join(r.cfg.ConfigDir, f.Name), f.Data, 0o600, uid, gid); err != nil {
			return err
		}
		written[f.Name] = true
	}
	for _, n := range []string{WalgFile, WalgROFile} {
		if !written[n] {
			_ = os.Remove(filepath.Join(r.cfg.ConfigDir, n))
		}
	}
	if !r.cfg.BackupConfig.Enabled() {
		slog.Warn("S3_BACKUP_PATH is not set: WAL archiving and backups are off")
	}
	r.walgMissing = missing
	slog.Info("configuration rendered", "dir", r.cfg.ConfigDir, "scope", r.cfg.Scope, "name", r.cfg.Name,
		"ttl", r.cfg.TTL, "loop_wait", r.cfg.LoopWait, "retry_timeout", r.cfg.RetryTimeout, "fast_failover", r.cfg.FastFailover)
	return nil
}

func (r *runner) writeStatus(phase, msg string) {
	b, _ := json.Marshal(AgentStatus{Phase: phase, Message: msg, Since: time.Now().UTC()})
	if err := fileutil.WriteAtomic(r.cfg.StatusFile, b, 0o644, -1, -1); err != nil {
		slog.Debug("cannot write the status file", "err", err)
	}
}

var pgLineRe = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \S+ \[\d+\] `)

// classifyPatroniLine tags PostgreSQL's own lines (they come through Patroni's stderr)
// and maps Patroni's levels onto slog's.
func classifyPatroniLine(line string) (string, slog.Level) {
	if pgLineRe.MatchString(line) {
		switch {
		case strings.Contains(line, " FATAL: "), strings.Contains(line, " PANIC: "), strings.Contains(line, " ERROR: "):
			return "postgres", slog.LevelError
		case strings.Contains(line, " WARNING: "):
			return "postgres", slog.LevelWarn
		}
		return "postgres", slog.LevelInfo
	}
	switch {
	case strings.HasPrefix(line, "ERROR:"), strings.HasPrefix(line, "CRITICAL:"), strings.HasPrefix(line, "FATAL:"):
		return "", slog.LevelError
	case strings.HasPrefix(line, "WARNING:"):
		return "", slog.LevelWarn
	case strings.HasPrefix(line, "DEBUG:"):
		return "", slog.LevelDebug
	}
	return "", slog.LevelInfo
}

func (r *runner) startPatroni(ctx context.Context) (*command.Process, error) {
	env := command.MinimalEnv("HOME="+r.home, "PGHOST="+r.cfg.SocketDir, "PGPORT="+strconv.Itoa(r.cfg.PGPort))
	if os.Getenv("LANG") == "" {
		env = append(env, "LANG=C.UTF-8")
	}
	p, err := command.Start(context.Background(), command.Spec{
		Path: r.cfg.PatroniBin, Args: []string{filepath.Join(r.cfg.ConfigDir, PatroniFile)},
		Env: env, Dir: r.home, Credential: r.cred, Name: "patroni", Classify: classifyPatroniLine,
	})
	if err != nil {
		return nil, fmt.Errorf("while starting Patroni: %w", err)
	}
	slog.Info("Patroni started", "pid", p.Pid(), "agent_start_to_exec_ms", time.Since(r.startedAt).Milliseconds())
	return p, nil
}

// supervise runs Patroni and is PID 1's main loop: it forwards signals, reaps orphans,
// watches Patroni's liveness, fences PostgreSQL when Patroni dies or hangs, and returns
// Patroni's exit status.
func (r *runner) supervise(ctx context.Context, sigs chan os.Signal) (int, error) {
	r.writeStatus("running", "")
	p, err := r.startPatroni(ctx)
	if err != nil {
		r.releaseAlive()
		return 1, err
	}
	api := r.cfg.patroniAPI(3 * time.Second)
	isolatedCh := make(chan time.Time, 1)
	iso := newIsolationMonitor(r.cfg, r.consul)
	isoCtx, isoCancel := context.WithCancel(ctx)
	defer isoCancel()
	go iso.Run(isoCtx, func(since time.Time) { isolatedCh <- since })
	type probe struct {
		live bool
		st   *MemberStatus
	}
	probes := make(chan probe, 1)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	reap := time.NewTicker(5 * time.Second)
	defer reap.Stop()
	var (
		stopping     bool
		stopDeadline <-chan time.Time
		seenLive     bool
		lastLive     = time.Now()
		probing      bool
		reconciled   bool
		hangLimit    = time.Duration(2*r.cfg.TTL) * time.Second
	)
	for {
		select {
		case s := <-sigs:
			switch s {
			case syscall.SIGHUP:
				slog.Info("forwarding SIGHUP to Patroni (reload)")
				_ = syscall.Kill(p.Pid(), syscall.SIGHUP)
			default:
				if !stopping {
					slog.Info("stopping: forwarding to Patroni", "signal", s.String(), "timeout", r.cfg.StopTimeout)
					stopping = true
					r.writeStatus("stopping", "")
					_ = syscall.Kill(p.Pid(), syscall.SIGTERM)
					stopDeadline = time.After(r.cfg.StopTimeout)
				} else if s == syscall.SIGINT || s == syscall.SIGTERM {
					slog.Warn("second stop signal: stopping Patroni now")
					_ = syscall.Kill(p.Pid(), syscall.SIGTERM)
				}
			}
		case <-stopDeadline:
			slog.Error("Patroni did not stop within PGNODE_STOP_TIMEOUT; killing it", "timeout", r.cfg.StopTimeout)
			p.Signal(syscall.SIGKILL)
		case <-reap.C:
			command.ReapOrphans()
		case <-tick.C:
			if probing {
				continue
			}
			probing = true
			go func() {
				pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				pr := probe{live: api.Liveness(pctx) == nil}
				if pr.live {
					pr.st, _ = api.Status(pctx)
				}
				probes <- pr
			}()
		case pr := <-probes:
			probing = false
			if pr.live {
				seenLive, lastLive = true, time.Now()
				if pr.st != nil {
					iso.SetLeader(pr.st.IsLeader() && pr.st.State == "running")
				}
				if pr.st != nil && pr.st.IsLeader() && pr.st.State == "running" && !reconciled {
					reconciled = true
					go r.reconcileDCS(ctx)
				}
			} else if seenLive && !stopping && time.Since(lastLive) > hangLimit {
				slog.Error("Patroni has not run its HA loop for too long: it hangs; killing it and fencing PostgreSQL", "since", lastLive.Format(time.RFC3339))
				_ = syscall.Kill(p.Pid(), syscall.SIGKILL)
			}
		case since := <-isolatedCh:
			if !stopping {
				slog.Error("this leader is cut off: neither Consul's servers nor any other member answered; stopping Patroni and fencing PostgreSQL before another node is promoted",
					"last_contact", since.Format(time.RFC3339Nano), "limit", r.cfg.IsolationFence)
				r.writeStatus("fenced", "isolated from the cluster")
				// Patroni only: PostgreSQL is then stopped by FencePostgres, which ends
				// every backend with it.
				_ = syscall.Kill(p.Pid(), syscall.SIGKILL)
			}
		case <-p.Done():
			code := p.ExitCode()
			if !stopping {
				slog.Error("Patroni exited unexpectedly; fencing PostgreSQL before releasing the leader lock", "exit_code", code)
			}
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			ferr := FencePostgres(fctx, r.cfg.DataDir, 3*time.Second)
			cancel()
			if ferr != nil {
				// Keep the alive port open: the session stays bound, so no replica is
				// promoted while an unfenced primary may still accept writes.
				r.writeStatus("fenced", "fencing failed: "+ferr.Error())
				slog.Error("cannot fence PostgreSQL; keeping the alive check passing so no other node is promoted", "err", ferr)
				return 1, ferr
			}
			r.releaseAlive()
			if stopping {
				slog.Info("Patroni stopped", "exit_code", code)
				return code, nil
			}
			r.writeStatus("fenced", fmt.Sprintf("Patroni exited with %d", code))
			if code == 0 {
				code = 1
			}
			return code, errors.New("Patroni exited unexpectedly")
		}
	}
}

// reconcileDCS makes the DCS's dynamic configuration match the environment, so that a
// re-deploy with changed PostgreSQL parameters or timings applies them (bootstrap.dcs is
// only read when the cluster is created). Run by the leader only.
func (r *runner) reconcileDCS(ctx context.Context) {
	api := r.cfg.patroniAPI(10 * time.Second)
	var current map[string]any
	if _, err := api.do(ctx, http.MethodGet, "/config", nil, &current); err != nil {
		slog.Warn("cannot read the DCS config", "err", err)
		return
	}
	// Exactly what writeConfigs rendered (a re-render here could differ, e.g. turn
	// archiving back on in an image without WAL-G).
	b, _ := json.Marshal(r.desiredDCS)
	var want map[string]any
	_ = json.Unmarshal(b, &want)
	patch := diffConfig(current, want)
	if len(patch) == 0 {
		return
	}
	code, err := api.do(ctx, http.MethodPatch, "/config", patch, nil)
	if err != nil || code != http.StatusOK {
		slog.Warn("cannot update the DCS config", "status", code, "err", err)
		return
	}
	keys := make([]string, 0, len(patch))
	for k := range patch {
		keys = append(keys, k)
	}
	slog.Info("DCS config updated from the environment", "changed", keys)
}

// diffConfig returns the parts of want that differ from have (recursively for maps).
func diffConfig(have, want map[string]any) map[string]any {
	out := map[string]any{}
	for k, w := range want {
		h, ok := have[k]
		wm, wIsMap := w.(map[string]any)
		hm, hIsMap := h.(map[string]any)
		switch {
		case wIsMap && hIsMap:
			if d := diffConfig(hm, wm); len(d) > 0 {
				out[k] = d
			}
		case !ok || fmt.Sprint(h) != fmt.Sprint(w):
			out[k] = w
		}
	}
	return out
}
