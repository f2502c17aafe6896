package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"pgnode/internal/command"
)

// afterUpgrade starts the new cluster privately, updates extensions, runs the update script
// pg_upgrade generated and vacuumdb --analyze-in-stages, stops it, resets the DCS and retires
// the marker. Every part is idempotent: a restart after a kill runs it again.
func (u *upgrader) afterUpgrade(ctx context.Context) error {
	n := u.n
	u.status("start new cluster")
	var opts []string
	if len(u.m.PreloadLibs) > 0 {
		opts = append(opts, fmt.Sprintf("-c shared_preload_libraries='%s'", strings.Join(u.m.PreloadLibs, ",")))
	}
	s, err := n.startPrivate(ctx, u.m.ToMajor, n.DataDir, opts...)
	if err != nil {
		return err
	}
	hook("new-started")
	perr := u.postSteps(ctx, s)
	if err := s.stop(ctx); err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	cd, err := n.controlData(ctx, u.m.ToMajor, n.DataDir)
	if err != nil {
		return err
	}
	u.status("reset DCS")
	if _, err := n.resetDCS(ctx, u.m.OldSysID, cd.SystemID); err != nil {
		return err
	}
	hook("dcs-reset")
	return retireMarker(n.root(), fmt.Sprintf("done-%d-%d", u.m.FromMajor, u.m.ToMajor))
}

func (u *upgrader) postSteps(ctx context.Context, s *server) error {
	n := u.n
	super := u.m.SuperUser
	c, err := s.connect(ctx, super, "postgres")
	if err != nil {
		return err
	}
	dbs, err := databases(ctx, c)
	c.Close(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	u.status("extension updates")
	for _, db := range dbs {
		if err := u.updateExtensions(ctx, s, db); err != nil {
			return fmt.Errorf("while updating extensions in database %q: %w", db, err)
		}
		hook("extensions-db")
	}
	// pg_upgrade (16+) writes update_extensions.sql for extensions it knows need updating.
	script := filepath.Join(u.m.WorkDir, "update_extensions.sql")
	if exists(script) {
		if err := command.Run(ctx, command.Spec{
			Path: n.bin(u.m.ToMajor, "psql"), Credential: n.cred(), Env: n.env(),
			Args: []string{"-X", "-q", "-v", "ON_ERROR_STOP=0", "-h", s.sock, "-p", strconv.Itoa(privatePort), "-U", super, "-d", "postgres", "-f", script},
		}); err != nil {
			return fmt.Errorf("while running pg_upgrade's %s: %w", script, err)
		}
	}
	u.status("vacuumdb --analyze-in-stages")
	if err := command.Run(ctx, command.Spec{
		Path: n.bin(u.m.ToMajor, "vacuumdb"), Credential: n.cred(), Env: n.env(),
		Args: []string{"--all", "--analyze-in-stages", "-j", strconv.Itoa(u.jobs()), "-h", s.sock, "-p", strconv.Itoa(privatePort), "-U", super},
	}); err != nil {
		return fmt.Errorf("while running vacuumdb --analyze-in-stages: %w", err)
	}
	hook("analyzed")
	return nil
}

// updateExtensions updates every extension of one database to the version the new
// image's files provide. TimescaleDB's update must be the first statement of its session
// (its docs), so it gets a session of its own; PostGIS goes through
// postgis_extensions_upgrade(), which also handles raster, topology and sfcgal.
func (u *upgrader) updateExtensions(ctx context.Context, s *server, db string) error {
	super := u.m.SuperUser
	c, err := s.connect(ctx, super, db)
	if err != nil {
		return err
	}
	var hasTS bool
	err = c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").Scan(&hasTS)
	c.Close(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	if hasTS {
		tc, err := s.connect(ctx, super, db)
		if err != nil {
			return err
		}
		_, err = tc.Exec(ctx, "ALTER EXTENSION timescaledb UPDATE")
		tc.Close(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("ALTER EXTENSION timescaledb UPDATE: %w", err)
		}
	}
	c, err = s.connect(ctx, super, db)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	type ext struct{ name, have, want string }
	list := func() ([]ext, error) {
		rows, err := c.Query(ctx, `SELECT e.extname, e.extversion, coalesce(a.default_version, '')
			FROM pg_extension e LEFT JOIN pg_available_extensions a ON a.name = e.extname ORDER BY e.extname`)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ext, error) {
			var e ext
			return e, r.Scan(&e.name, &e.have, &e.want)
		})
	}
	exts, err := list()
	if err != nil {
		return err
	}
	hasPostGIS := false
	for _, e := range exts {
		if e.name == "postgis" {
			hasPostGIS = true
		}
	}
	if hasPostGIS {
		var msg string
		if err := c.QueryRow(ctx, "SELECT postgis_extensions_upgrade()").Scan(&msg); err != nil {
			return fmt.Errorf("postgis_extensions_upgrade(): %w", err)
		}
		slog.Info("PostGIS updated", "database", db, "result", msg)
		if exts, err = list(); err != nil {
			return err
		}
	}
	for _, e := range exts {
		if e.want == "" || e.have == e.want || e.name == "timescaledb" || e.name == "plpgsql" {
			continue
		}
		if strings.HasPrefix(e.name, "postgis") && strings.HasPrefix(e.have, e.want) {
			continue // PostGIS marks freshly upgraded versions as "<version>next"
		}
		if _, err := c.Exec(ctx, "ALTER EXTENSION "+pgx.Identifier{e.name}.Sanitize()+" UPDATE"); err != nil {
			return fmt.Errorf("ALTER EXTENSION %s UPDATE: %w", e.name, err)
		}
		slog.Info("extension updated", "database", db, "extension", e.name, "from", e.have, "to", e.want)
	}
	return nil
}
