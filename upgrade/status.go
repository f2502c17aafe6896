package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"pgnode/internal/fileutil"
)

// Phases published in the status file.
const (
	// PhaseUpgrading: detection, adoption, pg_upgrade or its follow-up is running. Health
	// reports healthy but not ready, so a HEALTHCHECK never kills the container.
	PhaseUpgrading = "upgrading"
	// PhaseWaiting: a replica waits for the leader to finish its major upgrade.
	PhaseWaiting = "waiting"
	// PhasePrepared: the volume is ready for Patroni.
	PhasePrepared = "prepared"
	// PhaseFailed: Prepare stopped with an error (Message says why).
	PhaseFailed = "failed"
)

// Status is the agent's published phase (the status file's content).
type Status struct {
	Phase     string    `json:"phase"`
	Step      string    `json:"step,omitempty"`
	FromMajor int       `json:"from_major,omitempty"`
	ToMajor   int       `json:"to_major,omitempty"`
	Message   string    `json:"message,omitempty"`
	Since     time.Time `json:"since"`
	Updated   time.Time `json:"updated"`
}

// Busy reports whether the phase means "alive but not ready": health must not fail it.
func (s Status) Busy() bool { return s.Phase == PhaseUpgrading || s.Phase == PhaseWaiting }

// ReadStatus reads the status file. A missing file is no error: it returns a zero Status.
func ReadStatus(path string) (Status, error) {
	var s Status
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("while reading status file %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("while parsing status file %s: %w", path, err)
	}
	return s, nil
}

type statusWriter struct {
	path  string
	since time.Time
	cur   Status
}

func (w *statusWriter) set(phase, step, msg string, from, to int) {
	if w == nil || w.path == "" {
		return
	}
	if w.since.IsZero() || w.cur.Phase != phase {
		w.since = time.Now().UTC()
	}
	w.cur = Status{Phase: phase, Step: step, FromMajor: from, ToMajor: to, Message: msg, Since: w.since, Updated: time.Now().UTC()}
	b, _ := json.Marshal(w.cur)
	_ = os.MkdirAll(filepath.Dir(w.path), 0o755)
	_ = fileutil.WriteAtomic(w.path, append(b, '\n'), 0o644, -1, -1)
}
