package entrypoint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"pgnode/ci/testenv"
)

func loadFromMap(t *testing.T, env map[string]string) (*Config, []string, error) {
	t.Helper()
	// Load reads the process environment (envconfig); isolate it for this test.
	saved := os.Environ()
	os.Clearenv()
	t.Cleanup(func() {
		os.Clearenv()
		for _, kv := range saved {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
	})
	for k, v := range env {
		os.Setenv(k, v)
	}
	return Load(environ(env))
}

// TestRenderedPatroniConfigPassesPatroniValidation renders patroni.yml for a table of
// environments and checks each with the real Patroni's --validate-config (it needs the
// Consul host to answer, so a real Consul dev agent runs).
func TestRenderedPatroniConfigPassesPatroniValidation(t *testing.T) {
	patroni := testenv.RequireBinary(t, "patroni")
	consul := testenv.StartConsul(t, testenv.NewPorts(20000))
	paramsFile := filepath.Join(t.TempDir(), "params.yml")
	if err := os.WriteFile(paramsFile, []byte("work_mem: 16MB\nmax_connections: 300\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s3 := map[string]string{"S3_BACKUP_PATH": "s3://backups/postgres/", "S3_ACCESS_KEY_RW": "AKIAKIAKI2", "S3_SECRET_KEY_RW": "secret456",
		"S3_ENDPOINT": "https://storage.example.com/", "S3_PATH_STYLE": "true", "S3_REGION": "ru-central1"}
	cases := []struct {
		name  string
		set   map[string]string
		check func(t *testing.T, p map[string]any, r *Rendered)
	}{
		{"defaults", nil, func(t *testing.T, p map[string]any, r *Rendered) {
			dcs := p["bootstrap"].(map[string]any)["dcs"].(map[string]any)
			if dcs["ttl"] != 20 || dcs["loop_wait"] != 5 || dcs["retry_timeout"] != 5 || dcs["failsafe_mode"] != true {
				t.Errorf("unexpected timings: %v", dcs)
			}
			pg := dcs["postgresql"].(map[string]any)
			if pg["use_pg_rewind"] != true || pg["remove_data_directory_on_diverged_timelines"] != true || pg["remove_data_directory_on_rewind_failure"] != true {
				t.Errorf("rewind settings missing: %v", pg)
			}
			if pg["parameters"].(map[string]any)["archive_mode"] != "off" {
				t.Errorf("archive_mode should be off without S3")
			}
			c := p["consul"].(map[string]any)
			if c["register_service"] != true {
				t.Errorf("register_service not set")
			}
			if r.WalgRW != nil {
				t.Errorf("WAL-G config rendered without S3")
			}
			for _, l := range p["postgresql"].(map[string]any)["pg_hba"].([]any) {
				f := strings.Fields(l.(string))
				if f[0] != "local" && f[len(f)-1] == "trust" {
					t.Errorf("trust on the network: %q", l)
				}
			}
		}},
		{"S3 and parameters", mergeMaps(s3, map[string]string{"POSTGRES_PARAMETERS": "shared_buffers=256MB;max_connections=200", "POSTGRES_PARAMETERS_FILE": paramsFile}), func(t *testing.T, p map[string]any, r *Rendered) {
			params := p["bootstrap"].(map[string]any)["dcs"].(map[string]any)["postgresql"].(map[string]any)["parameters"].(map[string]any)
			if params["max_connections"] != "200" || params["work_mem"] != "16MB" || params["shared_buffers"] != "256MB" {
				t.Errorf("user parameters not applied (env wins over file): %v", params)
			}
			if params["archive_mode"] != "on" || !strings.Contains(params["archive_command"].(string), "wal-push") {
				t.Errorf("archiving not configured: %v", params)
			}
			if !strings.Contains(string(r.WalgRW), "s3://backups/postgres/patroni-cluster/pg15") || !strings.Contains(string(r.WalgRW), "secret456") {
				t.Errorf("WAL-G config lacks prefix or key: %s", r.WalgRW)
			}
			if r.WalgRO != nil {
				t.Errorf("read-only WAL-G config rendered without read-only keys")
			}
		}},
		{"restore from backup", mergeMaps(s3, map[string]string{"PATRONI_BOOTSTRAP_METHOD": "walg", "S3_ACCESS_KEY_RO": "AKIAKIAKI1", "S3_SECRET_KEY_RO": "secret123"}), func(t *testing.T, p map[string]any, r *Rendered) {
			b := p["bootstrap"].(map[string]any)
			if b["method"] != "walg" || b["walg"] == nil {
				t.Errorf("walg bootstrap not rendered: %v", b)
			}
			if r.WalgRO == nil || !strings.Contains(string(r.WalgRO), "secret123") || strings.Contains(string(r.WalgRO), "secret456") {
				t.Errorf("read-only config must carry only the read-only keys: %s", r.WalgRO)
			}
		}},
		{"synchronous, TTL-only failover, custom ports and hba", map[string]string{"PATRONI_SYNCHRONOUS_MODE": "true", "PGNODE_FAST_FAILOVER": "false",
			"POSTGRES_PORT": "6432", "PATRONI_RESTAPI_PORT": "9008", "POSTGRES_HBA": "host app app 10.0.0.0/8 scram-sha-256\nhostssl all all 192.168.0.0/16 cert",
			"PATRONI_TTL": "30", "PATRONI_LOOP_WAIT": "10", "PATRONI_RETRY_TIMEOUT": "10"}, func(t *testing.T, p map[string]any, r *Rendered) {
			dcs := p["bootstrap"].(map[string]any)["dcs"].(map[string]any)
			if dcs["synchronous_mode"] != true || dcs["ttl"] != 30 {
				t.Errorf("synchronous mode / ttl not rendered: %v", dcs)
			}
			if _, ok := p["consul"].(map[string]any)["checks"]; ok {
				t.Errorf("TTL-only failover must not bind session checks")
			}
			hba := p["postgresql"].(map[string]any)["pg_hba"].([]any)
			if !strings.Contains(hba[3].(string), "host app app 10.0.0.0/8") {
				t.Errorf("user hba lines must come before the defaults: %v", hba)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			env := mergeMaps(baseEnv(dir), map[string]string{"PATRONI_CONSUL_HOST": consul.Addr, "PGDATA": filepath.Join(dir, "data")}, tc.set)
			cfg, _, err := loadFromMap(t, env)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			r, err := cfg.Render(RenderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "patroni.yml")
			if err := os.WriteFile(path, r.PatroniYAML, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(patroni, "--validate-config", path).CombinedOutput()
			if err != nil {
				t.Fatalf("patroni --validate-config rejected the rendered config: %v\n%s\n%s", err, out, r.PatroniYAML)
			}
			var parsed map[string]any
			if err := yaml.Unmarshal(r.PatroniYAML, &parsed); err != nil {
				t.Fatal(err)
			}
			tc.check(t, parsed, r)
			red, err := cfg.Render(RenderOptions{Redacted: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range red.Files() {
				for k, v := range env {
					if (strings.Contains(k, "PASSWORD") || strings.Contains(k, "SECRET") || strings.Contains(k, "KEY_R")) && strings.Contains(string(f.Data), v) {
						t.Errorf("redacted %s shows %s", f.Name, k)
					}
				}
			}
		})
	}
}

func mergeMaps(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestRenderCommandWritesRedactedFilesOnly(t *testing.T) {
	dir := t.TempDir()
	env := mergeMaps(baseEnv(dir), map[string]string{"S3_BACKUP_PATH": "s3://b/p", "S3_ACCESS_KEY_RW": "AKIA-rw-key", "S3_SECRET_KEY_RW": "rw-secret-value"})
	out := filepath.Join(dir, "out")
	cmd := exec.Command(pgnodeBin, "render", "--dir", out)
	cmd.Env = environ(env)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render --dir: %v\n%s", err, b)
	}
	for _, name := range []string{PatroniFile, WalgFile} {
		st, err := os.Stat(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, st.Mode().Perm())
		}
		b, _ := os.ReadFile(filepath.Join(out, name))
		for _, s := range []string{"rw-secret-value", "AKIA-rw-key", "super-secret-1", "rest-secret-1"} {
			if strings.Contains(string(b), s) {
				t.Errorf("%s contains a secret", name)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "volume")); err == nil {
		t.Errorf("render touched the data volume")
	}
}

// TestS3WithoutWalgRendersNoArchiving: an image without WAL-G must not get an
// archive_command that cannot run (pg_wal would fill up) nor a WAL-G replica method.
func TestS3WithoutWalgRendersNoArchiving(t *testing.T) {
	dir := t.TempDir()
	env := mergeMaps(baseEnv(dir), map[string]string{"S3_BACKUP_PATH": "s3://b/p", "S3_ACCESS_KEY_RW": "AKIA-rw-key",
		"S3_SECRET_KEY_RW": "rw-secret-value", "WALG_BINARY": "/nonexistent/wal-g"})
	cmd := exec.Command(pgnodeBin, "render")
	cmd.Env = environ(env)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("render: %v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "WAL-G is not installed") {
		t.Errorf("no warning about the missing WAL-G:\n%s", text)
	}
	if strings.Contains(text, "wal-push") || strings.Contains(text, "restore_command") || strings.Contains(text, "    - walg") {
		t.Errorf("archiving or WAL-G methods rendered without WAL-G:\n%s", text)
	}
	if !strings.Contains(text, "archive_mode: \"off\"") {
		t.Errorf("archive_mode not off")
	}
	env["PATRONI_BOOTSTRAP_METHOD"] = "walg"
	cmd = exec.Command(pgnodeBin, "run")
	cmd.Env = environ(env)
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "WALG_BINARY") {
		t.Errorf("walg bootstrap without WAL-G must stop naming WALG_BINARY: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "volume")); err == nil {
		t.Errorf("the volume was touched")
	}
}
