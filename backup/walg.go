package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"pgnode/internal/command"
)

// walgRunner runs wal-g through internal/command: output lines go to slog tagged
// program=wal-g, the keys come only from the 0600 config file named by --config (never
// argv or the environment), and a cancelled context kills the whole process group.
type walgRunner struct {
	cfg       *Config
	node      Node
	logger    *slog.Logger
	killGrace time.Duration
}

// configFor returns the WAL-G config file of a key pair.
func (r *walgRunner) configFor(keys Keys) (string, error) {
	if keys == ReadOnly {
		if !r.cfg.S3AccessKeyRO.IsSet() || r.node.WalgConfigRO == "" {
			return "", errors.New("S3_ACCESS_KEY_RO/S3_SECRET_KEY_RO are not set: this operation runs only with the read-only keys")
		}
		return r.node.WalgConfigRO, nil
	}
	if r.node.WalgConfigRW == "" {
		return "", errors.New("no read-write WAL-G config file")
	}
	return r.node.WalgConfigRW, nil
}

// readKeys are the keys read-only operations use: the read-only pair when set.
func (r *walgRunner) readKeys() Keys {
	if r.cfg.S3AccessKeyRO.IsSet() && r.node.WalgConfigRO != "" {
		return ReadOnly
	}
	return ReadWrite
}

// run runs `wal-g --config <file> args...`; stdout is copied to capture when non-nil. The
// error carries wal-g's last error line.
func (r *walgRunner) run(ctx context.Context, keys Keys, capture io.Writer, args ...string) error {
	cfgPath, err := r.configFor(keys)
	if err != nil {
		return err
	}
	logger := r.logger
	if logger == nil {
		logger = slog.Default()
	}
	tail := newTailHandler(logger.Handler(), 20)
	spec := command.Spec{
		Path:       r.cfg.WalgBinary,
		Args:       append([]string{"--config", cfgPath}, args...),
		Name:       "wal-g",
		Credential: r.node.Credential,
		Logger:     slog.New(tail),
		Capture:    capture,
		KillGrace:  r.killGrace,
	}
	err = command.Run(ctx, spec)
	if err == nil {
		return nil
	}
	what := "wal-g " + strings.Join(args, " ")
	if ctx.Err() != nil {
		return fmt.Errorf("%s was stopped (%v) and killed", what, context.Cause(ctx))
	}
	if msg := tail.lastError(); msg != "" {
		return fmt.Errorf("%s failed: %s (%w)", what, msg, err)
	}
	return fmt.Errorf("%s failed: %w", what, err)
}

// output runs wal-g and returns its stdout.
func (r *walgRunner) output(ctx context.Context, keys Keys, args ...string) (string, error) {
	var buf bytes.Buffer
	err := r.run(ctx, keys, &buf, args...)
	return buf.String(), err
}

// BackupInfo is one entry of `wal-g backup-list --json --detail`.
type BackupInfo struct {
	Name           string    `json:"backup_name"`
	Time           time.Time `json:"time"`
	StartTime      time.Time `json:"start_time"`
	FinishTime     time.Time `json:"finish_time"`
	CompressedSize int64     `json:"compressed_size"`
	Uncompressed   int64     `json:"uncompressed_size"`
	Permanent      bool      `json:"is_permanent"`
}

// Finished is when the backup ended (modification time when the detail is missing).
func (b BackupInfo) Finished() time.Time {
	if !b.FinishTime.IsZero() {
		return b.FinishTime
	}
	return b.Time
}

// list returns the backups, oldest first (an empty storage is not an error).
func (r *walgRunner) list(ctx context.Context, keys Keys) ([]BackupInfo, error) {
	out, err := r.output(ctx, keys, "backup-list", "--json", "--detail")
	if err != nil {
		return nil, err
	}
	return parseBackupList(out)
}

func parseBackupList(out string) ([]BackupInfo, error) {
	out = strings.TrimSpace(out)
	if out == "" || out == "null" {
		return nil, nil
	}
	// Tolerate log lines before the JSON document.
	if i := strings.Index(out, "["); i > 0 {
		out = out[i:]
	}
	var bs []BackupInfo
	if err := json.Unmarshal([]byte(out), &bs); err != nil {
		return nil, fmt.Errorf("while parsing wal-g backup-list output: %w", err)
	}
	sort.SliceStable(bs, func(i, j int) bool { return bs[i].Finished().Before(bs[j].Finished()) })
	return bs, nil
}

// tailHandler forwards records to the agent's handler and keeps the last lines (at any
// level) so errors can quote what wal-g said.
type tailHandler struct {
	inner slog.Handler
	buf   *tailBuf
}

type tailBuf struct {
	mu    sync.Mutex
	n     int
	lines []string
}

func newTailHandler(inner slog.Handler, n int) *tailHandler {
	return &tailHandler{inner: inner, buf: &tailBuf{n: n}}
}

func (h *tailHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *tailHandler) Handle(ctx context.Context, r slog.Record) error {
	h.buf.mu.Lock()
	h.buf.lines = append(h.buf.lines, r.Message)
	if len(h.buf.lines) > h.buf.n {
		h.buf.lines = h.buf.lines[1:]
	}
	h.buf.mu.Unlock()
	if h.inner.Enabled(ctx, r.Level) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

func (h *tailHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tailHandler{inner: h.inner.WithAttrs(as), buf: h.buf}
}

func (h *tailHandler) WithGroup(name string) slog.Handler {
	return &tailHandler{inner: h.inner.WithGroup(name), buf: h.buf}
}

// lastError returns the last line that looks like an error, else the last line.
func (h *tailHandler) lastError() string {
	h.buf.mu.Lock()
	defer h.buf.mu.Unlock()
	for i := len(h.buf.lines) - 1; i >= 0; i-- {
		l := h.buf.lines[i]
		if strings.Contains(l, "ERROR") || strings.Contains(l, "FATAL") || strings.Contains(l, "error") {
			return l
		}
	}
	if len(h.buf.lines) > 0 {
		return h.buf.lines[len(h.buf.lines)-1]
	}
	return ""
}

// lines returns the kept lines.
func (h *tailHandler) linesKept() []string {
	h.buf.mu.Lock()
	defer h.buf.mu.Unlock()
	return append([]string(nil), h.buf.lines...)
}
