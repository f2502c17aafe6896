// Package entrypoint is the agent's core: environment -> validated config, rendering of
// patroni.yml and the WAL-G config, the bootstrap decision, running and supervising
// Patroni as PID 1, and health checks. It composes the upgrade and backup packages.
package entrypoint

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"text/tabwriter"

	"pgnode/internal/envspec"
	"pgnode/internal/fileutil"
	"pgnode/internal/logging"
)

const usage = `pgnode — the pgnode image's agent (PID 1)

Usage:
  pgnode run                 validate env, prepare the data volume, render configs, run Patroni
  pgnode render [--dir DIR]  print (or write into DIR) the configs run would write, secrets redacted
  pgnode env                 list every environment variable with its default and meaning
  pgnode health              exit 0 when this member runs (leader or streaming replica), 1 otherwise
  pgnode backup ...          push | list | wal-show | verify (see pgnode backup help)
  pgnode upgrade ...         status | check | rollback (see pgnode upgrade help)
  pgnode version             print the version
`

// Main dispatches pgnode's subcommands and returns the exit code.
func Main(args []string) int {
	if len(args) == 0 {
		args = []string{"run"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(rest)
	case "render":
		return cmdRender(rest, os.Stdout)
	case "env":
		return cmdEnv(os.Stdout)
	case "health":
		return cmdHealth(rest, os.Stdout)
	case "backup":
		return cmdBackup(rest)
	case "upgrade":
		return cmdUpgrade(rest)
	case "version", "--version":
		fmt.Println("pgnode", Version())
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "pgnode: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

// Version returns the module version or VCS revision baked in at build time.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return bi.Main.Version
	}
	return rev + dirty
}

// loadConfig loads and validates the environment, logging warnings. Errors are returned
// for the caller to print once.
func loadConfig() (*Config, error) {
	cfg, warnings, err := Load(os.Environ())
	if err != nil {
		return nil, err
	}
	logging.Setup(os.Stderr, cfg.LogFormat, cfg.LogLevel)
	for _, w := range warnings {
		slog.Warn(w)
	}
	return cfg, nil
}

func printConfigError(err error) {
	var fe *envspec.FieldError
	if errors.As(err, &fe) {
		fmt.Fprintf(os.Stderr, "pgnode: invalid configuration: %s\n", fe.Error())
		return
	}
	fmt.Fprintf(os.Stderr, "pgnode: %v\n", err)
}

func cmdRender(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	dir := fs.String("dir", "", "write the redacted files into this directory instead of printing them")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logging.Setup(os.Stderr, os.Getenv("LOG_FORMAT"), os.Getenv("LOG_LEVEL"))
	cfg, err := loadConfig()
	if err != nil {
		printConfigError(err)
		return 1
	}
	r, err := cfg.Render(RenderOptions{Redacted: true, WalgMissing: cfg.WalgMissing()})
	if cfg.WalgMissing() {
		slog.Warn("S3 is configured but WAL-G is not installed here: rendered without archiving, as run would", "WALG_BINARY", cfg.WalgBinary)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgnode: %v\n", err)
		return 1
	}
	for _, f := range r.Files() {
		if *dir != "" {
			if err := os.MkdirAll(*dir, 0o700); err != nil {
				fmt.Fprintf(os.Stderr, "pgnode: %v\n", err)
				return 1
			}
			if err := fileutil.WriteAtomic(filepath.Join(*dir, f.Name), f.Data, 0o600, -1, -1); err != nil {
				fmt.Fprintf(os.Stderr, "pgnode: %v\n", err)
				return 1
			}
			continue
		}
		fmt.Fprintf(stdout, "# ---- %s ----\n%s", f.Name, f.Data)
	}
	return 0
}

func cmdEnv(stdout io.Writer) int {
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range envspec.Vars(&Config{}) {
		def := v.Default
		if v.Secret {
			def = "(secret; or " + v.Name + "_FILE)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", v.Name, def, v.Desc)
	}
	_ = w.Flush()
	return 0
}
