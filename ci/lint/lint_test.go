// Package lint validates the project's own CI and compose files: .gitlab-ci.yml against
// GitLab's CI schema, compose/demo against the Compose Specification schema and with
// `docker compose config` (the real compose v2 CLI). The schemas are the vendored copies in
// ../shared/schemas (beside the repository, as CI lays it out).
package lint

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"pgnode/ci/testenv"
)

func schema(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	path := filepath.Join(testenv.RepoRoot(t), "..", "shared", "schemas", name)
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("schema %s (shared/schemas beside the repository): %v", name, err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(path, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(path)
	if err != nil {
		t.Fatalf("compiling %s: %v", path, err)
	}
	return s
}

// yamlToJSONValue decodes YAML (anchors and merge keys resolved) into the generic values
// the validator expects (via a JSON round trip, so numbers are json.Number-compatible).
func yamlToJSONValue(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("YAML: %v", err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("YAML to JSON: %v", err)
	}
	out, err := jsonschema.UnmarshalJSON(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGitLabCIValidates(t *testing.T) {
	s := schema(t, "gitlab-ci.json")
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), ".gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		doc     []byte
		wantErr bool
	}{
		{"repository .gitlab-ci.yml", data, false},
		{"job script is a number", []byte("stages: [test]\njob:\n  stage: test\n  script: 1\n"), true},
		{"unknown stage keyword type", []byte("stages: test-build\njob:\n  script: [echo]\n  when: sometimes\n"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Validate(yamlToJSONValue(t, tc.doc))
			if (err != nil) != tc.wantErr {
				t.Fatalf("validation error = %v, want error: %v", err, tc.wantErr)
			}
		})
	}

	// The pipeline the issue asks for: stages in order, every job in one of them.
	var ci map[string]any
	if err := yaml.Unmarshal(data, &ci); err != nil {
		t.Fatal(err)
	}
	stages, _ := ci["stages"].([]any)
	var got []string
	for _, s := range stages {
		got = append(got, s.(string))
	}
	if strings.Join(got, ",") != "test,build,e2e,release" {
		t.Errorf("stages = %v, want test, build, e2e, release", got)
	}
	for name, v := range ci {
		job, ok := v.(map[string]any)
		if !ok || strings.HasPrefix(name, ".") || name == "variables" || name == "default" {
			continue
		}
		if st, _ := job["stage"].(string); !contains(got, st) {
			t.Errorf("job %s: stage %q not among %v", name, st, got)
		}
	}
}

// composeEnv is what compose/demo requires to interpolate (ci/demo.sh writes these).
var composeEnv = map[string]string{
	"POSTGRES_SUPERUSER_PASSWORD": "x", "POSTGRES_REPLICATOR_PASSWORD": "x",
	"POSTGRES_REWIND_PASSWORD": "x", "PATRONI_RESTAPI_PASSWORD": "x",
	"CONSUL_GOSSIP_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "MINIO_ROOT_PASSWORD": "x",
}

func composeFiles(t *testing.T) []string {
	files, _ := filepath.Glob(filepath.Join(testenv.RepoRoot(t), "compose", "demo", "*.yml"))
	if len(files) == 0 {
		t.Fatal("no compose files under compose/demo")
	}
	return files
}

func TestComposeFilesMatchSchema(t *testing.T) {
	s := schema(t, "compose-spec.json")
	for _, f := range composeFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Validate(yamlToJSONValue(t, data)); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		})
	}
	bad := map[string]string{
		"unknown top-level key":    "servicez:\n  a:\n    image: x\n",
		"unknown service property": "services:\n  a:\n    image: x\n    imagee: y\n",
	}
	for name, doc := range bad {
		t.Run(name, func(t *testing.T) {
			if err := s.Validate(yamlToJSONValue(t, []byte(doc))); err == nil {
				t.Fatal("invalid compose file passed the schema")
			}
		})
	}
}

// TestComposeConfig runs the real compose v2 CLI (`docker compose config`, no daemon
// needed) on every demo file with and without the s3 profile, and checks the result is
// valid against the schema too.
func TestComposeConfig(t *testing.T) {
	docker := testenv.RequireBinary(t, "docker")
	s := schema(t, "compose-spec.json")
	envFile := filepath.Join(t.TempDir(), "demo.env")
	var b strings.Builder
	for k, v := range composeEnv {
		b.WriteString(k + "=" + v + "\n")
	}
	if err := os.WriteFile(envFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range composeFiles(t) {
		for _, profile := range []string{"", "s3"} {
			t.Run(filepath.Base(f)+"/profile="+profile, func(t *testing.T) {
				args := []string{"compose", "-f", f, "--env-file", envFile}
				if profile != "" {
					args = append(args, "--profile", profile)
				}
				out, err := exec.Command(docker, append(args, "config", "--format", "json")...).CombinedOutput()
				if err != nil {
					t.Fatalf("docker compose config: %v\n%s", err, out)
				}
				v, err := jsonschema.UnmarshalJSON(strings.NewReader(string(out)))
				if err != nil {
					t.Fatalf("config output: %v", err)
				}
				if err := s.Validate(v); err != nil {
					t.Fatalf("interpolated config fails the schema: %v", err)
				}
				if !strings.Contains(string(out), `"pg3"`) || (profile == "s3") != strings.Contains(string(out), `"minio"`) {
					t.Fatalf("unexpected services for profile %q:\n%s", profile, out)
				}
			})
		}
	}
	// Missing secrets are refused with a message naming the variable.
	empty := filepath.Join(t.TempDir(), "empty.env")
	_ = os.WriteFile(empty, nil, 0o600)
	cmd := exec.Command(docker, "compose", "-f", composeFiles(t)[0], "--env-file", empty, "config")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "PASSWORD") {
		t.Fatalf("compose config without secrets: err=%v, want a message naming the missing password:\n%s", err, out)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
