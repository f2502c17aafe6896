package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"
)

// waitInterval is how often a waiting replica looks at the DCS again.
var waitInterval = 5 * time.Second

func (n *Node) validate() error {
	switch {
	case n.DataDir == "" || !filepath.IsAbs(n.DataDir) || filepath.Clean(n.DataDir) == "/":
		return fmt.Errorf("PGDATA: %q is not an absolute path below the volume root (expected e.g. /var/lib/postgresql/data)", n.DataDir)
	case n.Major < 10:
		return fmt.Errorf("PG_MAJOR: %d is not a supported PostgreSQL major (expected 10 or newer)", n.Major)
	case n.UID == 0:
		return errors.New("upgrade: the postgres uid is 0; PostgreSQL never runs as root")
	}
	return nil
}

// Prepare looks at the data volume and makes it ready for Patroni: nothing to do for an
// empty volume or a Patroni-managed cluster of the image's major; a plain single server is
// adopted; an older major is upgraded with pg_upgrade when cfg.AutoUpgrade is set (else
// refused with what to set); a half-finished upgrade is resumed or rolled back; a stale
// replica copy is renamed aside so Patroni re-clones it. Refusals leave the volume as it was.
// While working it publishes PhaseUpgrading/PhaseWaiting in node.StatusFile.
func Prepare(ctx context.Context, cfg Config, node Node) (Outcome, error) {
	st := &statusWriter{path: node.StatusFile}
	if err := cfg.Validate(); err != nil {
		return Outcome{}, err
	}
	if err := node.validate(); err != nil {
		return Outcome{}, err
	}
	st.set(PhaseUpgrading, "detect", "", 0, node.Major)
	out, err := node.prepare(ctx, cfg, st)
	if err != nil {
		st.set(PhaseFailed, "", err.Error(), out.FromMajor, node.Major)
		return out, err
	}
	st.set(PhasePrepared, "", "", out.FromMajor, node.Major)
	return out, nil
}

func (n *Node) prepare(ctx context.Context, cfg Config, st *statusWriter) (Outcome, error) {
	var out Outcome
	first := true
	lastWaitLog := time.Time{}
	for {
		v, err := Detect(ctx, *n)
		if first {
			out.State, out.FromMajor = v.State, v.Major
			first = false
		}
		if err != nil {
			return out, err
		}
		switch v.State {
		case StateEmpty:
			out.Leftovers = n.leftovers()
			return out, nil
		case StateHalfUpgrade:
			m := v.Marker
			mcfg := cfg
			mcfg.Mode = m.Mode
			u := &upgrader{n: n, cfg: mcfg, st: st, m: m}
			switch m.Step {
			case StepPrepare, StepTransfer:
				slog.Warn("an interrupted upgrade attempt was found; rolling it back and starting over", "step", m.Step, "from", m.FromMajor, "to", m.ToMajor)
				if err := u.restoreOld(); err != nil {
					return out, fmt.Errorf("while rolling back the interrupted upgrade (marker %s): %w", markerPath(n.root()), err)
				}
				if err := retireMarker(n.root(), "interrupted"); err != nil {
					return out, err
				}
				continue
			case StepFailed:
				return out, fmt.Errorf("an earlier upgrade %d→%d failed and was rolled back: %s; the PostgreSQL %d cluster in %s is intact; "+
					"leftovers: %v; fix the cause, then run `pgnode upgrade retry` (or rename %s) to try again, or start the old image",
					m.FromMajor, m.ToMajor, m.Error, m.FromMajor, n.DataDir, m.Leftovers, markerPath(n.root()))
			default:
				slog.Warn("resuming an interrupted upgrade past the swap point", "step", m.Step, "from", m.FromMajor, "to", m.ToMajor)
				if err := u.resume(ctx); err != nil {
					return out, err
				}
				out.Upgraded, out.RequestFullBackup, out.DCSReset = true, true, n.ConsulAddr != ""
				continue
			}
		}
		// A cluster: ask the DCS whether this node may act on its own.
		d, derr := n.readDCS(ctx)
		if derr != nil {
			if v.State == StateOlder {
				return out, fmt.Errorf("before a major upgrade the leader must be known, but Consul is not readable: %w", derr)
			}
			slog.Warn("Consul is not readable; Patroni will wait for it", "err", derr)
		}
		act, why := decideCluster(v, d, n.Name, n.Scope, n.Major)
		switch act {
		case actRefuse:
			return out, errors.New(why)
		case actWait:
			st.set(PhaseWaiting, "leader", why, v.Major, n.Major)
			if time.Since(lastWaitLog) > time.Minute {
				slog.Info("waiting before touching the data volume", "reason", why)
				lastWaitLog = time.Now()
			}
			select {
			case <-ctx.Done():
				return out, ctx.Err()
			case <-time.After(waitInterval):
			}
			continue
		case actRenameAside:
			p, err := renameAside(n.DataDir, "stale-"+v.Control.SystemID)
			if err != nil {
				return out, err
			}
			slog.Warn("renamed a stale replica copy aside; Patroni re-clones this member from the leader", "reason", why, "kept_at", p)
			out.RenamedAside = p
			continue
		}
		switch v.State {
		case StatePatroni:
			out.SystemID = v.Control.SystemID
			out.Leftovers = n.leftovers()
			return out, nil
		case StateSingle:
			st.set(PhaseUpgrading, "adopt", "", v.Major, n.Major)
			if err := n.adopt(ctx, v); err != nil {
				return out, fmt.Errorf("while adopting the single server in %s: %w", n.DataDir, err)
			}
			out.Adopted = true
			out.SystemID = v.Control.SystemID
			out.Leftovers = n.leftovers()
			return out, nil
		case StateOlder:
			if !cfg.AutoUpgrade {
				return out, fmt.Errorf("data directory %s holds PostgreSQL %d and this image runs PostgreSQL %d: set POSTGRES_DB_AUTOUPGRADE=true "+
					"to upgrade it with pg_upgrade (POSTGRES_UPGRADE_MODE=link|clone|copy; take a backup first), or keep running an image with PostgreSQL %d; nothing was changed",
					n.DataDir, v.Major, n.Major, v.Major)
			}
			if holder, err := n.takeUpgradeLock(ctx); err != nil {
				return out, err
			} else if holder != "" {
				continue // another member got there first: the DCS view now says wait
			}
			u, err := n.startUpgrade(ctx, cfg, v, st)
			if err != nil {
				return out, err
			}
			if err := u.run(ctx); err != nil {
				return out, err
			}
			out.Upgraded, out.RequestFullBackup, out.DCSReset = true, true, n.ConsulAddr != ""
			continue
		}
		return out, fmt.Errorf("unexpected volume state %q", v.State)
	}
}

// leftovers lists renamed-aside directories and retired markers in the volume root.
func (n *Node) leftovers() []string {
	base := filepath.Base(filepath.Clean(n.DataDir))
	m, _ := filepath.Glob(filepath.Join(n.root(), base+".*"))
	return m
}
