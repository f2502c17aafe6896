package backups

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// hasWALG tells whether img has a wal-g program on PATH.
func hasWALG(img string) bool {
	_, err := testenv.DockerErr("run", "--rm", "--entrypoint", "sh", img, "-c", "command -v wal-g")
	return err == nil
}

// walgImage returns an image with WAL-G: the pgnode image itself when it has wal-g, else
// a throw-away image FROM it plus the binary named by PGNODE_E2E_WALG (built here, removed
// when the test ends). Without either the test is skipped with one SKIP line.
func walgImage(t *testing.T) string {
	t.Helper()
	img := image()
	if hasWALG(img) {
		return img
	}
	bin := os.Getenv("PGNODE_E2E_WALG")
	if bin == "" {
		t.Skipf("SKIP: image %s has no wal-g and PGNODE_E2E_WALG (path of a wal-g binary to add) is not set", img)
	}
	dir := t.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatalf("PGNODE_E2E_WALG: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wal-g"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	df := "FROM " + img + "\nCOPY --chmod=0755 wal-g /usr/local/bin/wal-g\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := "e2ebk-walg:" + strings.ToLower(testenv.RandomSecret(6))
	tag = regexp.MustCompile(`[^a-z0-9:-]`).ReplaceAllString(tag, "x")
	testenv.Docker(t, "build", "-q", "-t", tag, dir)
	t.Cleanup(func() { _, _ = testenv.DockerErr("rmi", "-f", tag) })
	if out, err := testenv.DockerErr("run", "--rm", "--entrypoint", "wal-g", tag, "--version"); err != nil {
		t.Fatalf("wal-g in %s does not run: %v\n%s", tag, err, out)
	} else {
		t.Logf("using %s (%s)", tag, firstLine(out))
	}
	return tag
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// metrics fetches the agent's Prometheus text from node (PGNODE_METRICS_PORT default 9187).
func (c *cluster) metrics(node string) (string, error) {
	cl := &http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + c.ip(node) + ":9187/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

// metric returns the value of an unlabelled metric ("" when absent).
func metric(text, name string) string {
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

// logs returns a service's container logs.
func (c *cluster) logs(service string) string {
	out, _ := c.p.ComposeErr("logs", "--no-color", "--no-log-prefix", service)
	return out
}

// restarts returns how often Docker restarted a service's container.
func (c *cluster) restarts(service string) string {
	out, _ := testenv.DockerErr("inspect", "-f", "{{.RestartCount}}", c.p.Container(service))
	return out
}

// pgnode runs `pgnode args...` in a service's container (docker exec, as the image's user).
func (c *cluster) pgnode(service string, args ...string) (string, error) {
	return c.p.Exec(service, append([]string{"pgnode"}, args...)...)
}
