package upgrade

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pgnode/ci/testenv"
)

// TestRefusals: every bad volume gets one clear error and is left exactly as it was.
// The old-major cases use the real PostgreSQL 13 fixture.
func TestRefusals(t *testing.T) {
	uid, gid := testenv.PostgresUser(t)
	write := func(t *testing.T, dir string, files map[string]string, owner int) {
		for name, content := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, owner, gid) })
	}
	cases := []struct {
		name    string
		setup   func(t *testing.T, root string)
		cfg     Config
		want    []string
		noExtra bool
	}{
		{name: "garbage", setup: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "data"), map[string]string{"notes.txt": "hello", "photos/a.jpg": "x"}, uid)
		}, want: []string{"holds no PostgreSQL cluster", "notes.txt", "refusing to touch it"}},
		{name: "newer major", setup: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "data"), map[string]string{"PG_VERSION": "16\n", "global/pg_control": "x"}, uid)
		}, want: []string{"PostgreSQL 16, newer than this image's PostgreSQL 15", "nothing was changed"}},
		{name: "wrong owner", setup: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "data"), map[string]string{"PG_VERSION": "15\n", "global/pg_control": "x"}, 0)
		}, want: []string{"owned by uid 0", "chown -R"}},
		{name: "missing old binaries", setup: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "data"), map[string]string{"PG_VERSION": "12\n", "global/pg_control": "x"}, uid)
		}, cfg: Config{AutoUpgrade: true, Mode: "link"}, want: []string{"PostgreSQL 12", "no PostgreSQL 12 binaries", "/usr/lib/postgresql/12/bin/postgres"}},
		{name: "9.6", setup: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "data"), map[string]string{"PG_VERSION": "9.6\n", "global/pg_control": "x"}, uid)
		}, want: []string{"PostgreSQL 9.6", "10 or newer"}},
		{name: "standby of an older major", setup: func(t *testing.T, root string) {
			oldVolume(t, root)
			write(t, filepath.Join(root, "data"), map[string]string{"standby.signal": ""}, uid)
		}, cfg: Config{AutoUpgrade: true, Mode: "link"}, want: []string{"holds a standby of PostgreSQL 13", "never upgraded on its own", "nothing was changed"}},
		{name: "standby single server of the image's major", setup: func(t *testing.T, root string) {
			testenv.InitDB(t, newMajor, filepath.Join(root, "data"))
			write(t, filepath.Join(root, "data"), map[string]string{"standby.signal": ""}, uid)
		}, want: []string{"holds a standby", "adopts only a primary", "nothing was changed"}},
		{name: "autoupgrade off", setup: func(t *testing.T, root string) { oldVolume(t, root) },
			cfg: Config{AutoUpgrade: false, Mode: "link"}, want: []string{"holds PostgreSQL 13", "set POSTGRES_DB_AUTOUPGRADE=true", "nothing was changed"}},
		{name: "timescaledb library missing", setup: func(t *testing.T, root string) {
			oldVolume(t, root)
			p := testenv.StartPG(t, oldMajor, filepath.Join(root, "data"), 0)
			// The catalog references TimescaleDB 2.11.0, whose library no installed major has
			// (Debian ships no TimescaleDB for 13 or 15).
			p.SQL(t, "app2", `INSERT INTO pg_extension (oid, extname, extowner, extnamespace, extrelocatable, extversion)
				VALUES (99999, 'timescaledb', 10, 2200, false, '2.11.0')`)
			p.Stop(t)
		}, cfg: Config{AutoUpgrade: true, Mode: "link"}, want: []string{"TimescaleDB 2.11.0", "timescaledb-2.11.0.so", "same extension version on both sides", "nothing was changed"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := testenv.PostgresTempDir(t)
			tc.setup(t, root)
			n := testNode(t, root)
			cfg := tc.cfg
			if cfg.Mode == "" {
				cfg.Mode = "link"
			}
			pv, _ := os.ReadFile(filepath.Join(n.DataDir, "PG_VERSION"))
			realCluster := exists(filepath.Join(n.DataDir, "base")) && strings.TrimSpace(string(pv)) == "13"
			before := treeState(t, n.DataDir)
			rootBefore, _ := os.ReadDir(root)
			_, err := Prepare(context.Background(), cfg, n)
			if err == nil {
				t.Fatal("Prepare accepted the volume")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			st, _ := ReadStatus(n.StatusFile)
			if st.Phase != PhaseFailed || st.Message == "" {
				t.Errorf("status after a refusal: %+v", st)
			}
			rootAfter, _ := os.ReadDir(root)
			if len(rootAfter) != len(rootBefore) {
				t.Errorf("volume root changed: %v -> %v", rootBefore, rootAfter)
			}
			if realCluster {
				// The pre-checks may start the old cluster privately (crash recovery,
				// catalog look-up); the data must be identical and startable.
				checkOld(t, n)
			} else if after := treeState(t, n.DataDir); after != before {
				t.Errorf("data directory changed:\n%s\n---\n%s", before, after)
			}
		})
	}
}
