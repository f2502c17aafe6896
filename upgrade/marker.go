package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"pgnode/internal/fileutil"
)

// MarkerName is the upgrade's state file in the volume root (beside the data directory).
// It is written before anything else and names every directory the upgrade creates, so a
// restart resumes or rolls back deterministically.
const MarkerName = ".pgnode-upgrade.json"

// Upgrade steps recorded in the marker, in order.
const (
	StepPrepare     = "prepare"     // new cluster being initialised and checked; old untouched
	StepTransfer    = "transfer"    // pg_upgrade running (link mode: old pg_control renamed)
	StepTransferred = "transferred" // pg_upgrade finished, new cluster never started
	StepSwapping    = "swapping"    // data directories being renamed
	StepStarted     = "started"     // new cluster started: point of no return in link mode
	StepFailed      = "failed"      // rolled back after an error; see Error
)

// Marker is the on-volume record of an upgrade attempt.
type Marker struct {
	Step      string    `json:"step"`
	FromMajor int       `json:"from_major"`
	ToMajor   int       `json:"to_major"`
	Mode      string    `json:"mode"`
	OldSysID  string    `json:"old_system_id"`
	NewDir    string    `json:"new_dir"` // where the new cluster is built (volume root)
	OldDir    string    `json:"old_dir"` // where the old cluster goes after the swap
	WorkDir   string    `json:"work_dir"`
	Started   time.Time `json:"started"`
	Updated   time.Time `json:"updated"`
	Error     string    `json:"error,omitempty"`
	// What the follow-up steps need to know about the old cluster after the swap.
	SuperUser    string   `json:"super_user"`
	PreloadLibs  []string `json:"shared_preload_libraries,omitempty"`
	HasTimescale bool     `json:"timescaledb,omitempty"`
	Leftovers    []string `json:"leftovers,omitempty"`
}

func markerPath(root string) string { return filepath.Join(root, MarkerName) }

func readMarker(root string) (*Marker, error) {
	b, err := os.ReadFile(markerPath(root))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("while reading the upgrade marker: %w", err)
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("upgrade marker %s is unreadable (%v); inspect the volume by hand", markerPath(root), err)
	}
	return &m, nil
}

func writeMarker(root string, m *Marker) error {
	m.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	err = fileutil.WriteAtomic(markerPath(root), b, 0o644, -1, -1)
	if err != nil && errors.Is(err, syscall.ENOSPC) && exists(markerPath(root)) {
		// A full disk (the very failure being recorded): overwrite the existing marker in
		// place, which needs no new blocks (it is far smaller than one block).
		err = overwrite(markerPath(root), b)
	}
	if err != nil {
		return fmt.Errorf("while writing the upgrade marker: %w", err)
	}
	return nil
}

func overwrite(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(int64(len(b))); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// retireMarker renames the marker to a history file (never deleted).
func retireMarker(root, suffix string) error {
	dst := filepath.Join(root, fmt.Sprintf(".pgnode-upgrade-%s-%s.json", suffix, time.Now().UTC().Format("20060102T150405Z")))
	if err := os.Rename(markerPath(root), dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("while retiring the upgrade marker: %w", err)
	}
	syncDir(root)
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// renameAside moves p to p.<tag>-<timestamp> and returns the new name.
func renameAside(p, tag string) (string, error) {
	dst := fmt.Sprintf("%s.%s-%s", p, tag, time.Now().UTC().Format("20060102T150405Z"))
	for i := 1; exists(dst); i++ {
		dst = fmt.Sprintf("%s.%s-%s-%d", p, tag, time.Now().UTC().Format("20060102T150405Z"), i)
	}
	if err := os.Rename(p, dst); err != nil {
		return "", fmt.Errorf("while renaming %s aside: %w", p, err)
	}
	syncDir(filepath.Dir(p))
	return dst, nil
}
