package upgrade

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"pgnode/ci/testenv"
)

// tmpfsVolume mounts a tmpfs of sizeMB as a volume root owned by postgres.
func tmpfsVolume(t *testing.T, sizeMB int64) string {
	t.Helper()
	uid, gid := testenv.PostgresUser(t)
	dir, err := os.MkdirTemp("", "pgnode-upgrade-tmpfs-")
	if err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("size=%dm,mode=0755,uid=%d,gid=%d", sizeMB, uid, gid)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "pgnode-upgrade-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("umount", "-l", dir).Run()
		_ = os.Remove(dir)
	})
	return dir
}

// TestDiskFull runs copy-mode upgrades on a small tmpfs: the free-space pre-check refuses
// before anything is written; with the pre-check's margin removed the copy itself runs
// out of space, and the upgrade rolls back to an intact old cluster.
func TestDiskFull(t *testing.T) {
	fixture.once.Do(func() { buildFixture(t) })
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
	data := dirSize(filepath.Join(fixture.root, "data")) >> 20
	cfg := Config{AutoUpgrade: true, Mode: "copy", Jobs: 1}

	t.Run("pre-check", func(t *testing.T) {
		root := oldVolume(t, tmpfsVolume(t, data+70))
		n := testNode(t, root)
		_, err := Prepare(context.Background(), cfg, n)
		if err == nil || !strings.Contains(err.Error(), "not enough free space") || !strings.Contains(err.Error(), "POSTGRES_UPGRADE_MODE=link") {
			t.Fatalf("want a free-space refusal, got %v", err)
		}
		if exists(markerPath(root)) {
			t.Fatal("a refused pre-check wrote the upgrade marker")
		}
		checkOld(t, n)
	})

	t.Run("mid-way", func(t *testing.T) {
		// The pre-check passes; then something else fills the volume while pg_upgrade
		// copies (simulated by a filler file written right after initdb).
		root := oldVolume(t, tmpfsVolume(t, 2*data+300))
		n := testNode(t, root)
		testHook = func(step string) {
			if step == "initdb-done" {
				fill(t, filepath.Join(root, "filler"), 20<<20)
			}
		}
		defer func() { testHook = nil }()
		_, err := Prepare(context.Background(), cfg, n)
		if err == nil || !strings.Contains(err.Error(), "rolled back") || !strings.Contains(err.Error(), "No space left on device") {
			t.Fatalf("want a rolled-back upgrade naming the full disk, got %v", err)
		}
		t.Logf("error: %v", err)
		m, _ := readMarker(root)
		if m == nil || m.Step != StepFailed || len(m.Leftovers) == 0 {
			t.Fatalf("marker after the failure: %+v", m)
		}
		// A restart refuses (and says how to retry) rather than failing the same way again.
		_, err = Prepare(context.Background(), cfg, n)
		if err == nil || !strings.Contains(err.Error(), "pgnode upgrade retry") {
			t.Fatalf("restart after a failed attempt: %v", err)
		}
		// The operator frees the space the failed attempt took; the old cluster works.
		for _, l := range m.Leftovers {
			if err := os.RemoveAll(l); err != nil {
				t.Fatal(err)
			}
		}
		_ = os.Remove(filepath.Join(root, "filler"))
		checkOld(t, n)
		var so, se strings.Builder
		if c := CLI(context.Background(), cfg, n, []string{"retry"}, &so, &se); c != 0 {
			t.Fatalf("retry: %s", se.String())
		}
		if exists(markerPath(root)) {
			t.Fatal("retry left the marker")
		}
	})
}

// fill writes a file until the filesystem has only leave bytes free.
func fill(t *testing.T, path string, leave int64) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
			t.Fatal(err)
		}
		if int64(st.Bavail)*int64(st.Bsize) <= leave {
			return
		}
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
}
