// Package logging configures the process-wide slog logger: tint (colour, human) on a
// terminal or when LOG_FORMAT=text, JSON lines when LOG_FORMAT=json.
package logging

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
)

// Setup installs the default logger. format is "json", "text" or "" (auto: text).
// level is one of debug, info, warn, error.
func Setup(w io.Writer, format, level string) *slog.Logger {
	var lvl slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lvl = slog.LevelDebug
	case "warn", "warning":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	default:
		lvl = slog.LevelInfo
	}
	var h slog.Handler
	if strings.EqualFold(format, "json") {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl})
	} else {
		noColor := true
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				noColor = false
			}
		}
		h = tint.NewHandler(w, &tint.Options{Level: lvl, TimeFormat: time.DateTime + ".000", NoColor: noColor})
	}
	l := slog.New(h)
	slog.SetDefault(l)
	return l
}
