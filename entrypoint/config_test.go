package entrypoint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var pgnodeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgnode-bin-")
	if err != nil {
		panic(err)
	}
	pgnodeBin = filepath.Join(dir, "pgnode")
	out, err := exec.Command("go", "build", "-o", pgnodeBin, "pgnode/cmd/pgnode").CombinedOutput()
	if err != nil {
		panic("building pgnode: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// hostBinDir is the PostgreSQL installed on the test host (ci/setup-host.sh).
const hostBinDir = "/usr/lib/postgresql/15/bin"

// baseEnv is a valid node environment rooted in dir.
func baseEnv(dir string) map[string]string {
	return map[string]string{
		"PATH":                         os.Getenv("PATH"),
		"LAN_HOST":                     "10.1.0.13",
		"PATRONI_NAME":                 "pg1",
		"PATRONI_RESTAPI_PASSWORD":     "rest-secret-1",
		"POSTGRES_SUPERUSER_PASSWORD":  "super-secret-1",
		"POSTGRES_REPLICATOR_PASSWORD": "repl-secret-1",
		"POSTGRES_REWIND_PASSWORD":     "rewind-secret-1",
		"POSTGRES_BIN_DIR":             hostBinDir,
		"PG_MAJOR":                     "15",
		"PGDATA":                       filepath.Join(dir, "volume", "data"),
		"PGNODE_CONFIG_DIR":            filepath.Join(dir, "etc"),
		"PGNODE_SOCKET_DIR":            filepath.Join(dir, "run"),
		"PGNODE_STATUS_FILE":           filepath.Join(dir, "status", "status.json"),
	}
}

func environ(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

func TestBadInputStopsBeforeTouchingTheVolume(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "unreadable")
	if err := os.WriteFile(secretFile, []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	badYAML := filepath.Join(t.TempDir(), "params.yml")
	if err := os.WriteFile(badYAML, []byte("- just\n- a list\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		set     map[string]string
		unset   []string
		wantVar string
	}{
		{"LAN_HOST missing", nil, []string{"LAN_HOST"}, "LAN_HOST"},
		{"LAN_HOST with scheme", map[string]string{"LAN_HOST": "http://10.0.0.1"}, nil, "LAN_HOST"},
		{"LAN_HOST with port", map[string]string{"LAN_HOST": "10.0.0.1:5432"}, nil, "LAN_HOST"},
		{"LAN_HOST unspecified", map[string]string{"LAN_HOST": "0.0.0.0"}, nil, "LAN_HOST"},
		{"listen host garbage", map[string]string{"PGNODE_LISTEN_HOST": "not a host"}, nil, "PGNODE_LISTEN_HOST"},
		{"port not a number", map[string]string{"POSTGRES_PORT": "54x2"}, nil, "POSTGRES_PORT"},
		{"port out of range", map[string]string{"POSTGRES_PORT": "70000"}, nil, "POSTGRES_PORT"},
		{"REST port zero", map[string]string{"PATRONI_RESTAPI_PORT": "0"}, nil, "PATRONI_RESTAPI_PORT"},
		{"REST port equals PG port", map[string]string{"PATRONI_RESTAPI_PORT": "5432"}, nil, "PATRONI_RESTAPI_PORT"},
		{"alive port clash", map[string]string{"PGNODE_ALIVE_PORT": "8008"}, nil, "PGNODE_ALIVE_PORT"},
		{"metrics port negative", map[string]string{"PGNODE_METRICS_PORT": "-1"}, nil, "PGNODE_METRICS_PORT"},
		{"scope invalid", map[string]string{"PATRONI_SCOPE": "my cluster"}, nil, "PATRONI_SCOPE"},
		{"name invalid", map[string]string{"PATRONI_NAME": "pg/1"}, nil, "PATRONI_NAME"},
		{"superuser password missing", nil, []string{"POSTGRES_SUPERUSER_PASSWORD"}, "POSTGRES_SUPERUSER_PASSWORD"},
		{"replicator password missing", nil, []string{"POSTGRES_REPLICATOR_PASSWORD"}, "POSTGRES_REPLICATOR_PASSWORD"},
		{"rewind password missing", nil, []string{"POSTGRES_REWIND_PASSWORD"}, "POSTGRES_REWIND_PASSWORD"},
		{"REST password missing", nil, []string{"PATRONI_RESTAPI_PASSWORD"}, "PATRONI_RESTAPI_PASSWORD"},
		{"password too short", map[string]string{"POSTGRES_SUPERUSER_PASSWORD": "abc"}, nil, "POSTGRES_SUPERUSER_PASSWORD"},
		{"secret file unreadable", map[string]string{"POSTGRES_REPLICATOR_PASSWORD_FILE": "/nonexistent/secret"}, []string{"POSTGRES_REPLICATOR_PASSWORD"}, "POSTGRES_REPLICATOR_PASSWORD_FILE"},
		{"secret file empty", map[string]string{"POSTGRES_REWIND_PASSWORD_FILE": emptyFile}, []string{"POSTGRES_REWIND_PASSWORD"}, "POSTGRES_REWIND_PASSWORD_FILE"},
		{"secret and file both set", map[string]string{"POSTGRES_SUPERUSER_PASSWORD_FILE": emptyFile}, nil, "POSTGRES_SUPERUSER_PASSWORD_FILE"},
		{"consul host without port", map[string]string{"PATRONI_CONSUL_HOST": "consul1"}, nil, "PATRONI_CONSUL_HOST"},
		{"consul port bad", map[string]string{"PATRONI_CONSUL_HOST": "consul1:85x0"}, nil, "PATRONI_CONSUL_HOST"},
		{"consul scheme", map[string]string{"PATRONI_CONSUL_SCHEME": "ftp"}, nil, "PATRONI_CONSUL_SCHEME"},
		{"bootstrap method unknown", map[string]string{"PATRONI_BOOTSTRAP_METHOD": "pg_dump"}, nil, "PATRONI_BOOTSTRAP_METHOD"},
		{"walg bootstrap without S3", map[string]string{"PATRONI_BOOTSTRAP_METHOD": "walg"}, nil, "PATRONI_BOOTSTRAP_METHOD"},
		{"sync mode not bool", map[string]string{"PATRONI_SYNCHRONOUS_MODE": "maybe"}, nil, "PATRONI_SYNCHRONOUS_MODE"},
		{"ttl too small", map[string]string{"PATRONI_TTL": "10"}, nil, "PATRONI_TTL"},
		{"ttl below loop_wait+2*retry", map[string]string{"PATRONI_TTL": "20", "PATRONI_LOOP_WAIT": "10", "PATRONI_RETRY_TIMEOUT": "10"}, nil, "PATRONI_TTL"},
		{"loop_wait zero", map[string]string{"PATRONI_LOOP_WAIT": "0"}, nil, "PATRONI_LOOP_WAIT"},
		{"watchdog mode", map[string]string{"PGNODE_WATCHDOG": "sometimes"}, nil, "PGNODE_WATCHDOG"},
		{"fast failover not bool", map[string]string{"PGNODE_FAST_FAILOVER": "yes please"}, nil, "PGNODE_FAST_FAILOVER"},
		{"stale grace not duration", map[string]string{"PGNODE_STALE_DCS_GRACE": "10 minutes"}, nil, "PGNODE_STALE_DCS_GRACE"},
		{"stop timeout too short", map[string]string{"PGNODE_STOP_TIMEOUT": "1s"}, nil, "PGNODE_STOP_TIMEOUT"},
		{"PGDATA relative", map[string]string{"PGDATA": "data"}, nil, "PGDATA"},
		{"config dir inside PGDATA", map[string]string{"PGNODE_CONFIG_DIR": "/var/lib/postgresql/data/etc", "PGDATA": "/var/lib/postgresql/data"}, nil, "PGNODE_CONFIG_DIR"},
		{"bin dir without postgres", map[string]string{"POSTGRES_BIN_DIR": "/usr/bin"}, nil, "POSTGRES_BIN_DIR"},
		{"PG_MAJOR garbage", map[string]string{"PG_MAJOR": "seventeen"}, nil, "PG_MAJOR"},
		{"parameters without =", map[string]string{"POSTGRES_PARAMETERS": "max_connections 200"}, nil, "POSTGRES_PARAMETERS"},
		{"parameter managed by pgnode", map[string]string{"POSTGRES_PARAMETERS": "port=5433"}, nil, "POSTGRES_PARAMETERS"},
		{"parameter name invalid", map[string]string{"POSTGRES_PARAMETERS": "Max-Connections=5"}, nil, "POSTGRES_PARAMETERS"},
		{"parameters file unreadable", map[string]string{"POSTGRES_PARAMETERS_FILE": "/nonexistent.yml"}, nil, "POSTGRES_PARAMETERS_FILE"},
		{"parameters file not a map", map[string]string{"POSTGRES_PARAMETERS_FILE": badYAML}, nil, "POSTGRES_PARAMETERS_FILE"},
		{"hba trust on network", map[string]string{"POSTGRES_HBA": "host all all 0.0.0.0/0 trust"}, nil, "POSTGRES_HBA"},
		{"hba unknown type", map[string]string{"POSTGRES_HBA": "hots all all 10.0.0.0/8 scram-sha-256"}, nil, "POSTGRES_HBA"},
		{"hba too few fields", map[string]string{"POSTGRES_HBA": "host all all"}, nil, "POSTGRES_HBA"},
		{"log format", map[string]string{"LOG_FORMAT": "xml"}, nil, "LOG_FORMAT"},
		{"log level", map[string]string{"LOG_LEVEL": "loud"}, nil, "LOG_LEVEL"},
		{"S3 path not s3 URL", map[string]string{"S3_BACKUP_PATH": "backups/pg", "S3_ACCESS_KEY_RW": "k", "S3_SECRET_KEY_RW": "s"}, nil, "S3_BACKUP_PATH"},
		{"S3 keys missing", map[string]string{"S3_BACKUP_PATH": "s3://bucket/pg"}, nil, "S3_ACCESS_KEY_RW"},
		{"S3 keys without path", map[string]string{"S3_ACCESS_KEY_RW": "k"}, nil, "S3_BACKUP_PATH"},
		{"S3 endpoint not URL", map[string]string{"S3_BACKUP_PATH": "s3://b/p", "S3_ACCESS_KEY_RW": "k", "S3_SECRET_KEY_RW": "s", "S3_ENDPOINT": "storage:9000"}, nil, "S3_ENDPOINT"},
		{"S3 path style not bool", map[string]string{"S3_PATH_STYLE": "sometimes"}, nil, "S3_PATH_STYLE"},
		{"only one RO key", map[string]string{"S3_ACCESS_KEY_RO": "k"}, nil, "S3_SECRET_KEY_RO"},
		{"cron invalid", map[string]string{"POSTGRES_BACKUP_SCHEDULE": "every night"}, nil, "POSTGRES_BACKUP_SCHEDULE"},
		{"cron out of range", map[string]string{"POSTGRES_BACKUP_SCHEDULE": "61 5 * * *"}, nil, "POSTGRES_BACKUP_SCHEDULE"},
		{"keep full zero", map[string]string{"POSTGRES_BACKUP_KEEP_FULL": "0"}, nil, "POSTGRES_BACKUP_KEEP_FULL"},
		{"keep full negative", map[string]string{"POSTGRES_BACKUP_KEEP_FULL": "-3"}, nil, "POSTGRES_BACKUP_KEEP_FULL"},
		{"autoupgrade not bool", map[string]string{"POSTGRES_DB_AUTOUPGRADE": "si"}, nil, "POSTGRES_DB_AUTOUPGRADE"},
		{"upgrade mode", map[string]string{"POSTGRES_UPGRADE_MODE": "dump"}, nil, "POSTGRES_UPGRADE_MODE"},
	}
	if len(cases) < 30 {
		t.Fatalf("want at least 30 bad-input cases, have %d", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			env := baseEnv(dir)
			for _, k := range tc.unset {
				delete(env, k)
			}
			for k, v := range tc.set {
				env[k] = v
			}
			cmd := exec.Command(pgnodeBin, "run")
			cmd.Env = environ(env)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("pgnode run accepted bad input; output:\n%s", out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, tc.wantVar+":") {
				t.Errorf("error does not name %s: %q", tc.wantVar, last)
			}
			if !strings.HasPrefix(last, "pgnode: invalid configuration: ") {
				t.Errorf("not a one-line configuration error: %q", last)
			}
			for _, p := range []string{filepath.Join(dir, "volume"), filepath.Join(dir, "etc"), filepath.Join(dir, "run")} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s was created despite invalid configuration", p)
				}
			}
			for k, v := range env {
				if strings.Contains(k, "PASSWORD") && !strings.HasSuffix(k, "_FILE") && len(v) >= 8 && strings.Contains(string(out), v) {
					t.Errorf("output leaks the value of %s", k)
				}
			}
		})
	}
}

func TestUnknownLookAlikeVariableWarns(t *testing.T) {
	env := baseEnv(t.TempDir())
	env["PATRONI_SCOPPE"] = "x"
	env["POSTGRES_SUPERUSER_PASWORD"] = "y"
	cmd := exec.Command(pgnodeBin, "render")
	cmd.Env = environ(env)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("render failed: %v\n%s", err, out)
	}
	for _, want := range []string{"PATRONI_SCOPPE ignored; did you mean PATRONI_SCOPE", "POSTGRES_SUPERUSER_PASWORD ignored; did you mean POSTGRES_SUPERUSER_PASSWORD"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("missing warning %q in:\n%s", want, out)
		}
	}
}

func TestEnvListsEveryVariable(t *testing.T) {
	out, err := exec.Command(pgnodeBin, "env").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"LAN_HOST", "PATRONI_SCOPE", "POSTGRES_PARAMETERS", "S3_BACKUP_PATH", "POSTGRES_BACKUP_KEEP_FULL", "POSTGRES_DB_AUTOUPGRADE", "PGNODE_REMOVE_STALE_DCS"} {
		if !strings.Contains(string(out), v) {
			t.Errorf("pgnode env does not list %s", v)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n")[1:] {
		if len(strings.Fields(line)) < 2 {
			t.Errorf("variable without meaning: %q", line)
		}
	}
}

// TestEnvReferenceIsCurrent keeps docs/env.md equal to `pgnode env --markdown`.
func TestEnvReferenceIsCurrent(t *testing.T) {
	b, err := os.ReadFile("../docs/env.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != EnvMarkdown() {
		t.Errorf("docs/env.md is stale: run `go run ./cmd/pgnode env --markdown > docs/env.md`")
	}
}
