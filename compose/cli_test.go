package compose

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestCLI drives init, import and render through the command line.
func TestCLI(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yml")
	if _, _, err := runCLI(t, "init", "-f", cf, "--nodes", "3"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, "init", "-f", cf); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second init: %v", err)
	}
	if _, _, err := runCLI(t, "import", "-f", cf, "--inventory", "testdata/playbook/inventory.ini", "--vars", "testdata/playbook/group_vars/all.yml"); err == nil {
		t.Fatal("import overwrote without --force")
	}
	_, stderr, err := runCLI(t, "import", "-f", cf, "--force", "--inventory", "testdata/playbook/inventory.ini", "--vars", "testdata/playbook/group_vars/all.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"not imported: testdata/playbook/group_vars/all.yml:27: key consul_version", "generated: secrets.restapi_password"} {
		if !strings.Contains(stderr, s) {
			t.Errorf("import stderr lacks %q:\n%s", s, stderr)
		}
	}
	if _, _, err := runCLI(t, "import", "-f", cf, "--force", "--strict", "--inventory", "testdata/playbook/inventory.ini", "--vars", "testdata/playbook/group_vars/all.yml"); err == nil {
		t.Fatal("--strict accepted unknown keys")
	}
	out := filepath.Join(dir, "bundles")
	if _, _, err := runCLI(t, "render", "-f", cf, "-o", out); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(filepath.Join(out, "pg1", EnvFileName))
	if _, _, err := runCLI(t, "render", "-f", cf, "-o", out); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(filepath.Join(out, "pg1", EnvFileName))
	if !bytes.Equal(first, second) || len(first) == 0 {
		t.Fatal("render is not deterministic")
	}
	for _, p := range []string{"pg1/" + EnvFileName, "app1/" + ConsulFileName} {
		st, err := os.Stat(filepath.Join(out, p))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", p, st, err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "app1", EnvFileName)); err == nil {
		t.Error("Consul-only host got an env file")
	}
	// A bad cluster file: the error names the field.
	b, _ := os.ReadFile(cf)
	bad := filepath.Join(dir, "bad.yml")
	_ = os.WriteFile(bad, []byte(strings.Replace(string(b), "lan_host: 10.1.0.32", "lan_host: 10.1.0.13", 1)), 0o600)
	if _, _, err := runCLI(t, "render", "-f", bad, "-o", out); err == nil || !strings.Contains(err.Error(), "nodes[1] (pg2).lan_host") {
		t.Fatalf("render of a bad file: %v", err)
	}
	if _, _, err := runCLI(t, "hosts", "-f", cf); err == nil {
		t.Fatal("hosts without --file/--remote accepted")
	}
	if _, _, err := runCLI(t, "frobnicate"); err == nil {
		t.Fatal("unknown command accepted")
	}
}
