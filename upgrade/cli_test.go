package upgrade

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLI: `pgnode upgrade status|check|retry|rollback` on a real PostgreSQL 13 volume and
// bad usage.
func TestCLI(t *testing.T) {
	root := oldVolume(t, "")
	n := testNode(t, root)
	cfg := Config{AutoUpgrade: true, Mode: "link", Jobs: 1}
	run := func(args ...string) (int, string, string) {
		var so, se strings.Builder
		code := CLI(context.Background(), cfg, n, args, &so, &se)
		return code, so.String(), se.String()
	}
	code, out, _ := run("status")
	if code != 0 || !strings.Contains(out, "volume state:   older-major") || !strings.Contains(out, "data major:     13") || !strings.Contains(out, fixture.sysid) {
		t.Fatalf("status: %d\n%s", code, out)
	}
	before, _ := os.ReadDir(root)
	code, out, errOut := run("check")
	if code != 0 || !strings.Contains(out, "all pre-checks passed") {
		t.Fatalf("check: %d %s %s", code, out, errOut)
	}
	after, _ := os.ReadDir(root)
	if len(after) != len(before) {
		t.Fatalf("check left files in the volume root: %v", after)
	}
	if _, err := os.Stat(filepath.Join(n.DataDir, "global", "pg_control")); err != nil {
		t.Fatalf("check disturbed the old cluster: %v", err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage"},
		{[]string{"bogus"}, 2, `unknown upgrade command "bogus"`},
		{[]string{"retry"}, 1, "no failed upgrade attempt"},
		{[]string{"rollback"}, 1, "no upgrade to roll back"},
	} {
		code, _, errOut := run(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: %d %q", tc.args, code, errOut)
		}
	}
	checkOld(t, n)
}
