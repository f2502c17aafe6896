package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Volume is what Detect found.
type Volume struct {
	State   State
	Major   int
	Control ControlData
	// Patroni is true when Patroni has managed the directory before (postgresql.base.conf
	// or patroni.dynamic.json present).
	Patroni bool
	// Standby is true when the directory is (or was) a standby.
	Standby bool
	Marker  *Marker
}

// Detect looks at the data volume without writing anything. A refused volume (newer
// major, garbage, wrong owner, missing binaries) is returned as an error explaining what
// was found and what to do.
func Detect(ctx context.Context, node Node) (Volume, error) {
	var v Volume
	root := node.root()
	m, err := readMarker(root)
	if err != nil {
		return v, err
	}
	if m != nil {
		v.State, v.Marker, v.Major = StateHalfUpgrade, m, m.FromMajor
		return v, nil
	}
	entries, err := os.ReadDir(node.DataDir)
	if errors.Is(err, fs.ErrNotExist) {
		v.State = StateEmpty
		return v, nil
	}
	if err != nil {
		return v, fmt.Errorf("while reading the data directory %s: %w", node.DataDir, err)
	}
	st, err := os.Stat(node.DataDir)
	if err != nil {
		return v, fmt.Errorf("while reading the data directory %s: %w", node.DataDir, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != node.UID {
		return v, fmt.Errorf("data directory %s is owned by uid %d, but PostgreSQL runs as uid %d (postgres): "+
			"fix the volume's ownership on the host (chown -R %d:%d <volume>) or mount the right volume; nothing was changed",
			node.DataDir, sys.Uid, node.UID, node.UID, node.GID)
	}
	if len(entries) == 0 {
		v.State = StateEmpty
		return v, nil
	}
	raw, err := os.ReadFile(filepath.Join(node.DataDir, "PG_VERSION"))
	if err != nil {
		names := make([]string, 0, 5)
		for i, e := range entries {
			if i == 5 {
				names = append(names, "…")
				break
			}
			names = append(names, e.Name())
		}
		v.State = StateGarbage
		return v, fmt.Errorf("data directory %s is not empty but holds no PostgreSQL cluster (no PG_VERSION; found %s): "+
			"refusing to touch it; mount the right volume or move its content away", node.DataDir, strings.Join(names, ", "))
	}
	ver := strings.TrimSpace(string(raw))
	major, err := strconv.Atoi(ver)
	if err != nil || major < 10 {
		if strings.HasPrefix(ver, "9.") {
			return v, fmt.Errorf("data directory %s holds PostgreSQL %s, which pgnode cannot upgrade directly: "+
				"upgrade it to 10 or newer with pg_upgrade first; nothing was changed", node.DataDir, ver)
		}
		v.State = StateGarbage
		return v, fmt.Errorf("data directory %s has an unreadable PG_VERSION %q: refusing to touch it", node.DataDir, ver)
	}
	v.Major = major
	if major > node.Major {
		v.State = StateNewer
		return v, fmt.Errorf("data directory %s holds PostgreSQL %d, newer than this image's PostgreSQL %d: "+
			"downgrades are impossible; use an image with PostgreSQL %d or newer (PG_MAJOR); nothing was changed",
			node.DataDir, major, node.Major, major)
	}
	v.Patroni = exists(filepath.Join(node.DataDir, "postgresql.base.conf")) || exists(filepath.Join(node.DataDir, "patroni.dynamic.json"))
	if !exists(filepath.Join(node.DataDir, "global", "pg_control")) {
		if exists(filepath.Join(node.DataDir, "global", "pg_control.old")) {
			return v, fmt.Errorf("data directory %s has global/pg_control.old but no pg_control and no upgrade marker: "+
				"a pg_upgrade --link not run by pgnode was interrupted; if the new cluster was never started, "+
				"rename global/pg_control.old to global/pg_control to get the old cluster back", node.DataDir)
		}
		v.State = StateGarbage
		return v, fmt.Errorf("data directory %s has PG_VERSION %d but no global/pg_control: it is not a usable cluster; refusing to touch it", node.DataDir, major)
	}
	for _, prog := range []string{"postgres", "pg_controldata", "pg_ctl"} {
		if _, err := os.Stat(node.bin(major, prog)); err != nil {
			return v, fmt.Errorf("data directory %s holds PostgreSQL %d but this image has no PostgreSQL %d binaries (%s missing): "+
				"use an image that ships PostgreSQL %d beside %d; nothing was changed", node.DataDir, major, major, node.bin(major, prog), major, node.Major)
		}
	}
	cd, err := node.controlData(ctx, major, node.DataDir)
	if err != nil {
		return v, err
	}
	v.Control = cd
	v.Standby = cd.InRecovery() || exists(filepath.Join(node.DataDir, "standby.signal")) || exists(filepath.Join(node.DataDir, "recovery.conf"))
	switch {
	case major < node.Major:
		v.State = StateOlder
	case v.Patroni:
		v.State = StatePatroni
	default:
		v.State = StateSingle
	}
	return v, nil
}
