package upgrade

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"pgnode/internal/command"
)

// clusterInfo is what the upgrade learns from the old cluster while it runs privately.
type clusterInfo struct {
	SuperUser     string // the bootstrap superuser (oid 10): pg_upgrade needs the same in the new cluster
	Encoding      string
	Collate       string
	Ctype         string
	LocProvider   string // "c" libc, "i" ICU, "b" builtin (PostgreSQL 15+)
	Locale        string // ICU or builtin locale of template0
	PreloadLibs   []string
	Extensions    map[string]map[string]string // db -> extension -> version
	Libraries     []string                     // C libraries functions reference ($libdir/… stripped)
	SizeBytes     int64
	HasTimescale  bool
	TimescaleVers map[string]bool
}

func (n *Node) gatherInfo(ctx context.Context, major int, dir string) (clusterInfo, error) {
	info := clusterInfo{Extensions: map[string]map[string]string{}, TimescaleVers: map[string]bool{}}
	s, err := n.startPrivate(ctx, major, dir)
	if err != nil {
		return info, err
	}
	gerr := func() error {
		c, _, err := s.superConnect(ctx, "postgres")
		if err != nil {
			return err
		}
		defer c.Close(context.WithoutCancel(ctx))
		if err := c.QueryRow(ctx, `SELECT (SELECT rolname FROM pg_authid WHERE oid = 10),
			pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = 'template0'`).
			Scan(&info.SuperUser, &info.Encoding, &info.Collate, &info.Ctype); err != nil {
			return fmt.Errorf("while reading the old cluster's encoding and locale: %w", err)
		}
		var vnum int
		if err := c.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&vnum); err != nil {
			return err
		}
		info.LocProvider = "c"
		if vnum >= 150000 {
			col := "daticulocale"
			if vnum >= 170000 {
				col = "datlocale"
			}
			if err := c.QueryRow(ctx, "SELECT datlocprovider::text, coalesce("+col+", '') FROM pg_database WHERE datname = 'template0'").
				Scan(&info.LocProvider, &info.Locale); err != nil {
				return fmt.Errorf("while reading the old cluster's locale provider: %w", err)
			}
		}
		var spl string
		if err := c.QueryRow(ctx, "SELECT current_setting('shared_preload_libraries')").Scan(&spl); err != nil {
			return err
		}
		for _, l := range strings.Split(spl, ",") {
			if l = strings.Trim(strings.TrimSpace(l), `"`); l != "" {
				info.PreloadLibs = append(info.PreloadLibs, l)
			}
		}
		dbs, err := databases(ctx, c)
		if err != nil {
			return err
		}
		libs := map[string]bool{}
		for _, db := range dbs {
			dc, err := s.connect(ctx, info.SuperUser, db)
			if err != nil {
				return err
			}
			exts := map[string]string{}
			rows, err := dc.Query(ctx, "SELECT extname, extversion FROM pg_extension")
			if err == nil {
				for rows.Next() {
					var name, ver string
					if err = rows.Scan(&name, &ver); err != nil {
						break
					}
					exts[name] = ver
				}
				rows.Close()
				err = rows.Err()
			}
			if err == nil {
				var rows2 []string
				r, qerr := dc.Query(ctx, "SELECT DISTINCT probin FROM pg_proc WHERE probin IS NOT NULL")
				if qerr == nil {
					for r.Next() {
						var p string
						if qerr = r.Scan(&p); qerr != nil {
							break
						}
						rows2 = append(rows2, p)
					}
					r.Close()
					if qerr == nil {
						qerr = r.Err()
					}
				}
				err = qerr
				for _, p := range rows2 {
					libs[strings.TrimPrefix(p, "$libdir/")] = true
				}
			}
			dc.Close(context.WithoutCancel(ctx))
			if err != nil {
				return fmt.Errorf("while listing extensions of database %q: %w", db, err)
			}
			info.Extensions[db] = exts
			if v, ok := exts["timescaledb"]; ok {
				info.HasTimescale = true
				info.TimescaleVers[v] = true
			}
		}
		for l := range libs {
			info.Libraries = append(info.Libraries, l)
		}
		return nil
	}()
	if err := s.stop(ctx); err != nil {
		return info, err
	}
	if gerr != nil {
		return info, gerr
	}
	info.SizeBytes = dirSize(dir)
	return info, nil
}

func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			total += fi.Size()
		}
		return nil
	})
	return total
}

// pgConfig returns pg_config --<what> of a major, falling back to Debian's layout.
func (n *Node) pgConfig(ctx context.Context, major int, what string) string {
	out, err := command.Output(ctx, command.Spec{Path: n.bin(major, "pg_config"), Args: []string{"--" + what}, Env: n.env()})
	if err == nil && strings.TrimSpace(out) != "" {
		return strings.TrimSpace(out)
	}
	switch what {
	case "pkglibdir":
		return fmt.Sprintf("/usr/lib/postgresql/%d/lib", major)
	default:
		return fmt.Sprintf("/usr/share/postgresql/%d", major)
	}
}

// checkLibraries verifies that every C library and extension the old cluster uses exists
// for both majors, and that TimescaleDB has the same version on both sides (its docs
// require it for pg_upgrade). The error lists everything missing.
func (n *Node) checkLibraries(ctx context.Context, from, to int, info clusterInfo) error {
	var missing []string
	oldLib, newLib := n.pgConfig(ctx, from, "pkglibdir"), n.pgConfig(ctx, to, "pkglibdir")
	newShare := n.pgConfig(ctx, to, "sharedir")
	have := func(dir, lib string) bool {
		return exists(filepath.Join(dir, lib+".so")) || exists(filepath.Join(dir, lib))
	}
	for _, l := range info.Libraries {
		for _, side := range []struct {
			major int
			dir   string
		}{{from, oldLib}, {to, newLib}} {
			if !have(side.dir, l) {
				missing = append(missing, fmt.Sprintf("library %s for PostgreSQL %d (%s)", l, side.major, side.dir))
			}
		}
	}
	for _, l := range info.PreloadLibs {
		if !have(newLib, l) {
			missing = append(missing, fmt.Sprintf("shared_preload_libraries entry %s for PostgreSQL %d", l, to))
		}
	}
	seen := map[string]bool{}
	for db, exts := range info.Extensions {
		for name, ver := range exts {
			if name == "timescaledb" {
				lib := "timescaledb-" + ver
				if !have(oldLib, lib) || !have(newLib, lib) {
					missing = append(missing, fmt.Sprintf("TimescaleDB %s (database %q) needs %s.so for both PostgreSQL %d and %d: "+
						"TimescaleDB upgrades across majors only with the same extension version on both sides; "+
						"run ALTER EXTENSION timescaledb UPDATE on the old major first or use an image that ships TimescaleDB %s for both", ver, db, lib, from, to, ver))
				}
				continue
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			if !exists(filepath.Join(newShare, "extension", name+".control")) {
				missing = append(missing, fmt.Sprintf("extension %s (database %q) for PostgreSQL %d", name, db, to))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the image lacks what the old cluster uses: %s; nothing was changed", strings.Join(missing, "; "))
	}
	return nil
}
