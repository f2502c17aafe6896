package upgrade

import (
	"context"
	"log/slog"
	"strings"
	"sync"
)

// lineRecorder is a slog handler that passes records on and remembers the last messages,
// so a failing program's last words can go into the error.
type lineRecorder struct {
	next  slog.Handler
	mu    *sync.Mutex
	store *[]string
}

func (r *lineRecorder) init() {
	if r.mu == nil {
		r.mu, r.store = &sync.Mutex{}, new([]string)
	}
}

func (r *lineRecorder) Enabled(ctx context.Context, l slog.Level) bool { return true }

func (r *lineRecorder) Handle(ctx context.Context, rec slog.Record) error {
	r.init()
	r.mu.Lock()
	msg := strings.TrimSpace(rec.Message)
	if msg != "" {
		*r.store = append(*r.store, msg)
		if len(*r.store) > 40 {
			*r.store = (*r.store)[len(*r.store)-40:]
		}
	}
	r.mu.Unlock()
	if r.next.Enabled(ctx, rec.Level) {
		return r.next.Handle(ctx, rec)
	}
	return nil
}

func (r *lineRecorder) WithAttrs(a []slog.Attr) slog.Handler {
	r.init()
	return &lineRecorder{next: r.next.WithAttrs(a), mu: r.mu, store: r.store}
}

func (r *lineRecorder) WithGroup(g string) slog.Handler {
	r.init()
	return &lineRecorder{next: r.next.WithGroup(g), mu: r.mu, store: r.store}
}

// lines returns the remembered messages that look like problems (or the last few).
func (r *lineRecorder) lines() []string {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range *r.store {
		if strings.HasSuffix(l, " ok") || strings.HasPrefix(l, "---") {
			continue
		}
		out = append(out, l)
	}
	if len(out) > 8 {
		out = out[len(out)-8:]
	}
	return out
}
