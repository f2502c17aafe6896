package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const cliUsage = `usage: pgnode upgrade <command>
  status    what the data volume holds, the upgrade marker, the agent's phase, leftovers
  check     run every pre-check of a major upgrade (incl. pg_upgrade --check) without upgrading
  rollback  undo an unfinished upgrade (or a finished copy/clone-mode one) to the old cluster
  retry     clear a failed attempt's marker so the next start tries again (leftovers are kept)`

// CLI runs `pgnode upgrade …` and returns the exit code. The agent's container must not be
// running Patroni on the same volume for check and rollback.
func CLI(ctx context.Context, cfg Config, node Node, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, cliUsage)
		return 2
	}
	if err := node.validate(); err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 2
	}
	var err error
	switch args[0] {
	case "status":
		err = cliStatus(ctx, node, stdout)
	case "check":
		err = cliCheck(ctx, cfg, node, stdout)
	case "rollback":
		err = cliRollback(ctx, node, stdout)
	case "retry":
		err = cliRetry(node, stdout)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, cliUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown upgrade command %q\n%s\n", args[0], cliUsage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	return 0
}

func cliStatus(ctx context.Context, n Node, w io.Writer) error {
	v, derr := Detect(ctx, n)
	fmt.Fprintf(w, "data directory: %s\nimage major:    %d\nvolume state:   %s\n", n.DataDir, n.Major, v.State)
	if v.Major > 0 {
		fmt.Fprintf(w, "data major:     %d\n", v.Major)
	}
	if v.Control.SystemID != "" {
		fmt.Fprintf(w, "system id:      %s\ncluster state:  %s\n", v.Control.SystemID, v.Control.State)
	}
	if derr != nil {
		fmt.Fprintf(w, "problem:        %v\n", derr)
	}
	if v.Marker != nil {
		b, _ := json.MarshalIndent(v.Marker, "", "  ")
		fmt.Fprintf(w, "upgrade marker (%s):\n%s\n", markerPath(n.root()), b)
	}
	if n.StatusFile != "" {
		if s, err := ReadStatus(n.StatusFile); err == nil && s.Phase != "" {
			fmt.Fprintf(w, "agent phase:    %s %s %s\n", s.Phase, s.Step, s.Message)
		}
	}
	for _, l := range n.leftovers() {
		fmt.Fprintf(w, "leftover:       %s\n", l)
	}
	return nil
}

func cliCheck(ctx context.Context, cfg Config, n Node, w io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	v, err := Detect(ctx, n)
	if err != nil {
		return err
	}
	if v.State != StateOlder {
		fmt.Fprintf(w, "nothing to upgrade: the volume is %s\n", v.State)
		return nil
	}
	u, err := n.startUpgrade(ctx, cfg, v, nil)
	if err != nil {
		return err
	}
	// A scratch new cluster made only for this check; it holds nothing but an empty initdb.
	u.m.NewDir += "-check"
	u.m.WorkDir += "-check"
	defer os.RemoveAll(u.m.NewDir)
	defer os.RemoveAll(u.m.WorkDir)
	if err := os.MkdirAll(u.m.WorkDir, 0o700); err != nil {
		return err
	}
	_ = os.Chown(u.m.WorkDir, n.UID, n.GID)
	hba := filepath.Join(u.m.WorkDir, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte("local all all trust\n"), 0o600); err != nil {
		return err
	}
	_ = os.Chown(hba, n.UID, n.GID)
	if err := u.initNew(ctx); err != nil {
		return err
	}
	if err := u.pgUpgrade(ctx, true); err != nil {
		return err
	}
	fmt.Fprintf(w, "PostgreSQL %d → %d (%s mode): all pre-checks passed\n", v.Major, n.Major, cfg.Mode)
	return nil
}

func cliRetry(n Node, w io.Writer) error {
	m, err := readMarker(n.root())
	if err != nil {
		return err
	}
	if m == nil || m.Step != StepFailed {
		return fmt.Errorf("no failed upgrade attempt to clear")
	}
	if err := retireMarker(n.root(), "failed"); err != nil {
		return err
	}
	fmt.Fprintf(w, "cleared the failed attempt; leftovers kept: %v; the next start tries the upgrade again\n", m.Leftovers)
	return nil
}

func cliRollback(ctx context.Context, n Node, w io.Writer) error {
	m, err := readMarker(n.root())
	if err != nil {
		return err
	}
	if m == nil {
		// A finished upgrade: only copy/clone mode kept a startable old cluster.
		m, err = lastDoneMarker(n.root())
		if err != nil {
			return err
		}
		if m == nil {
			return fmt.Errorf("no upgrade to roll back")
		}
		if m.Mode == "link" {
			return fmt.Errorf("the upgrade %d→%d ran in link mode and the new cluster has been started: the old cluster at %s shares its files "+
				"and is not safe to start; restore from a backup instead", m.FromMajor, m.ToMajor, m.OldDir)
		}
		m.Step = StepStarted
	}
	if m.Step == StepStarted && m.Mode == "link" {
		return fmt.Errorf("the new cluster has already been started after a link-mode pg_upgrade; the old cluster is not safe to start; " +
			"let the agent finish (it resumes on start) or restore from a backup")
	}
	u := &upgrader{n: &n, m: m}
	if m.Step == StepStarted {
		// copy/clone: the old cluster at OldDir is untouched; put it back.
		if !exists(m.OldDir) {
			return fmt.Errorf("the old cluster %s is gone", m.OldDir)
		}
		p, err := renameAside(n.DataDir, fmt.Sprintf("pg%d-rolledback", m.ToMajor))
		if err != nil {
			return err
		}
		if err := os.Rename(m.OldDir, n.DataDir); err != nil {
			return fmt.Errorf("while moving the old cluster back: %w", err)
		}
		fmt.Fprintf(w, "the PostgreSQL %d cluster is back in %s; the new one is kept at %s\n", m.FromMajor, n.DataDir, p)
	} else {
		if err := u.restoreOld(); err != nil {
			return err
		}
		fmt.Fprintf(w, "the PostgreSQL %d cluster is back in %s; leftovers: %v\n", m.FromMajor, n.DataDir, m.Leftovers)
	}
	if exists(markerPath(n.root())) {
		if err := retireMarker(n.root(), "rolledback"); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "set POSTGRES_DB_AUTOUPGRADE=false or start an image with PostgreSQL %d, or the next start upgrades again\n", m.FromMajor)
	return nil
}

func lastDoneMarker(root string) (*Marker, error) {
	ms, _ := filepath.Glob(filepath.Join(root, ".pgnode-upgrade-done-*.json"))
	if len(ms) == 0 {
		return nil, nil
	}
	sort.Strings(ms)
	b, err := os.ReadFile(ms[len(ms)-1])
	if err != nil {
		return nil, err
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

var _ = strconv.Itoa
var _ = strings.TrimSpace
