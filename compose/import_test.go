package compose

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"pgnode/ci/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

func importSample(t *testing.T) *ImportResult {
	t.Helper()
	inv, err := os.ReadFile("testdata/playbook/inventory.ini")
	if err != nil {
		t.Fatal(err)
	}
	vars, err := os.ReadFile("testdata/playbook/group_vars/all.yml")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ImportPlaybook("inventory.ini", inv, "group_vars/all.yml", vars)
	if err != nil {
		t.Fatal(err)
	}
	// The playbook has no rewind or REST API password: import generates them. Pin them
	// for the golden comparison.
	c := res.Cluster
	if len(c.Secrets.RewindPassword) != 32 || len(c.Secrets.RestAPIPassword) != 32 {
		t.Fatalf("generated secrets missing: %q %q", c.Secrets.RewindPassword, c.Secrets.RestAPIPassword)
	}
	c.Secrets.RewindPassword, c.Secrets.RestAPIPassword = "generated-rewind-pw", "generated-api-pw"
	return res
}

// TestImportGolden: the playbook's files (written from its README's examples) produce a
// cluster file and bundles equal to the hand-checked files in testdata/golden.
func TestImportGolden(t *testing.T) {
	res := importSample(t)
	wantUnknown := []string{
		"inventory.ini:6: host variable ansible_ssh_private_key_file of app1 has no equivalent (ignored)",
		"group_vars/all.yml:27: key consul_version has no equivalent in the cluster file (ignored)",
	}
	if strings.Join(res.Unknown, "\n") != strings.Join(wantUnknown, "\n") {
		t.Errorf("unknown keys:\n%s\nwant:\n%s", strings.Join(res.Unknown, "\n"), strings.Join(wantUnknown, "\n"))
	}
	if strings.Join(res.Generated, ",") != "secrets.replicator_password,secrets.restapi_password" &&
		strings.Join(res.Generated, ",") != "secrets.restapi_password,secrets.rewind_password" {
		t.Errorf("generated: %v", res.Generated)
	}
	c := res.Cluster
	files := map[string][]byte{}
	cf, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	files["cluster.yml"] = cf
	for i := range c.Nodes {
		b, err := c.RenderNode(i)
		if err != nil {
			t.Fatal(err)
		}
		for p, f := range b.Files {
			files[c.Nodes[i].Name+"/"+p] = f.Data
		}
	}
	for name, got := range files {
		path := filepath.Join("testdata/golden", filepath.FromSlash(name))
		if *update {
			_ = os.MkdirAll(filepath.Dir(path), 0o755)
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./compose -run TestImportGolden -update and review the files)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the golden file:\n%s", name, strings.Join(lineDiff(splitLines(want), splitLines(got)), "\n"))
		}
	}
	// Re-parsing the written cluster file gives the same cluster.
	back, err := ParseCluster(cf)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := back.Marshal()
	if !bytes.Equal(again, cf) {
		t.Fatal("cluster file does not round-trip")
	}
}

func TestImportErrors(t *testing.T) {
	goodInv, _ := os.ReadFile("testdata/playbook/inventory.ini")
	goodVars, _ := os.ReadFile("testdata/playbook/group_vars/all.yml")
	tests := []struct {
		name      string
		inv, vars string
		want      string
	}{
		{"malformed group header", "[all\npg1 ansible_host=1.2.3.4\n", string(goodVars), "inventory.ini:1: malformed group header"},
		{"host before group", "pg1 ansible_host=1.2.3.4\n", string(goodVars), "inventory.ini:1: host line before any [group]"},
		{"bad host var", "[all]\npg1 ansible_host\n", string(goodVars), `inventory.ini:2: "ansible_host" is not key=value`},
		{"duplicate host", strings.Replace(string(goodInv), "[consul]\npg1\n", "[consul]\npg1\npg1\n", 1), string(goodVars), "inventory.ini:10: duplicate host pg1 in [consul]"},
		{"conflicting host vars", strings.Replace(string(goodInv), "[consul]\npg1\n", "[consul]\npg1 lan_host=10.9.9.9\n", 1), string(goodVars), `inventory.ini:9: lan_host of pg1 is "10.9.9.9" here but "10.1.0.13" on line 3`},
		{"duplicate address", strings.Replace(string(goodInv), "lan_host=10.1.0.32", "lan_host=10.1.0.13", 1), string(goodVars), "nodes[1] (pg2).lan_host: address 10.1.0.13:"},
		{"even consul servers", strings.Replace(string(goodInv), "[consul]\npg1\n", "[consul]\n", 1), string(goodVars), "nodes[*].consul: 2 Consul servers"},
		{"both consul groups", strings.Replace(string(goodInv), "[consul_client]\napp1\n", "[consul_client]\napp1\npg1\n", 1), string(goodVars), "pg1 is in both [consul] and [consul_client]"},
		{"malformed yaml", string(goodInv), "postgres_superuser_password: [\n", "group_vars/all.yml: invalid YAML: yaml: line"},
		{"yaml not a mapping", string(goodInv), "- a\n- b\n", "group_vars/all.yml:1: expected a mapping"},
		{"missing superuser password", string(goodInv), strings.Replace(string(goodVars), "postgres_superuser_password:", "#", 1), "postgres_superuser_password is missing"},
		{"empty consul key", string(goodInv), strings.Replace(string(goodVars), `consul_encrypt: "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="`, `consul_encrypt: ""`, 1), "group_vars/all.yml:5: consul_encrypt is empty"},
		{"bad gossip key", string(goodInv), strings.Replace(string(goodVars), `pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=`, `abc`, 1), "secrets.consul_encrypt: not the base64"},
		{"jinja", string(goodInv), strings.Replace(string(goodVars), `"Repl1cat0r-pw"`, `"{{ vault_repl }}"`, 1), "group_vars/all.yml:4: postgres_replicator_password: Jinja"},
		{"bad bool", string(goodInv), strings.Replace(string(goodVars), `s3_path_style: "true"`, `s3_path_style: "ja"`, 1), `group_vars/all.yml:23: s3_path_style: "ja" is not true or false`},
		{"s3 incomplete", string(goodInv), strings.Replace(string(goodVars), `s3_secret_key_rw: "secret456"`, ``, 1), "backup.s3_secret_key_rw: missing"},
		{"bad cron", string(goodInv), strings.Replace(string(goodVars), `postgres_backup_cron_hour: "5"`, `postgres_backup_cron_hour: "25"`, 1), "backup.schedule:"},
		{"duplicate key", string(goodInv), string(goodVars) + "s3_region: x\n", "duplicate key s3_region"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ImportPlaybook("inventory.ini", []byte(tt.inv), "group_vars/all.yml", []byte(tt.vars))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestRenderedComposeValid runs the real `docker compose config` on every rendered bundle
// (DB node, Consul-only host, single-node dev cluster) and validates each compose file
// against the compose specification's JSON schema. It also checks that compose reads the
// env file back with the exact values (quoting of special characters).
func TestRenderedComposeValid(t *testing.T) {
	docker := testenv.RequireBinary(t, "docker")
	schema := compileComposeSchema(t)
	res := importSample(t)
	dev := testCluster()
	dev.Nodes = dev.Nodes[:1]
	dev.Secrets.SuperuserPassword = `pa ss"wo$rd#1`
	for _, c := range []*Cluster{res.Cluster, dev} {
		for i := range c.Nodes {
			b, err := c.RenderNode(i)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := WriteBundle(dir, b); err != nil {
				t.Fatal(err)
			}
			var doc any
			if err := json.Unmarshal(yamlToJSON(t, b.Files[ComposeFileName].Data), &doc); err != nil {
				t.Fatal(err)
			}
			if err := schema.Validate(doc); err != nil {
				t.Errorf("%s: compose file does not match compose-spec.json: %v", b.Node, err)
			}
			cmd := exec.Command(docker, "compose", "-f", filepath.Join(dir, ComposeFileName), "config", "--format", "json")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			out, err := cmd.Output()
			if err != nil {
				var stderr string
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = string(ee.Stderr)
				}
				t.Fatalf("%s: docker compose config: %v: %s", b.Node, err, stderr)
			}
			var cfg struct {
				Services map[string]struct {
					Environment map[string]*string `json:"environment"`
					NetworkMode string             `json:"network_mode"`
				} `json:"services"`
			}
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			r := c.Resolve(i)
			if !r.Patroni {
				if _, ok := cfg.Services["pgnode"]; ok || len(cfg.Services) != 1 {
					t.Errorf("%s: Consul-only bundle has services %v", b.Node, cfg.Services)
				}
				continue
			}
			env := cfg.Services["pgnode"].Environment
			for _, v := range c.envVars(r) {
				got := env[v.key]
				if got != nil {
					// compose config prints a compose file: it escapes $ as $$.
					un := strings.ReplaceAll(*got, "$$", "$")
					got = &un
				}
				if got == nil || *got != v.val {
					t.Errorf("%s: compose reads %s as %s, want %q", b.Node, v.key, strOrNil(got), v.val)
				}
			}
			if cfg.Services["pgnode"].NetworkMode != "host" || cfg.Services["consul"].NetworkMode != "host" {
				t.Errorf("%s: not host networking", b.Node)
			}
		}
	}
}

func compileComposeSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	// ../shared/schemas next to the repository (DESIGN.md), or COMPOSE_SPEC_SCHEMA.
	path := filepath.Join("..", "..", "shared", "schemas", "compose-spec.json")
	if p := os.Getenv("COMPOSE_SPEC_SCHEMA"); p != "" {
		path = p
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("compose schema: %v (set COMPOSE_SPEC_SCHEMA)", err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	comp := jsonschema.NewCompiler()
	if err := comp.AddResource("compose-spec.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := comp.Compile("compose-spec.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func yamlToJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func strOrNil(p *string) string {
	if p == nil {
		return "<unset>"
	}
	return fmt.Sprintf("%q", *p)
}
