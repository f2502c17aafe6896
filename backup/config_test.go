package backup

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"pgnode/internal/envspec"
)

func TestValidate(t *testing.T) {
	ok := testConfig("wal-g")
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	off := Config{Schedule: "20 5 * * *", KeepFull: 7, Compression: "zstd", BackupTimeout: time.Hour, RetryDelay: time.Minute,
		VerifyDir: "/x", VerifyPort: 1, BootstrapBackup: "LATEST", RecoveryTargetTimeline: "latest", RecoveryTargetAction: "promote"}
	if err := off.Validate(); err != nil {
		t.Fatalf("backups-off config rejected: %v", err)
	}
	cases := []struct {
		name    string
		mut     func(c *Config)
		wantVar string
	}{
		{"invalid cron", func(c *Config) { c.Schedule = "every night" }, "POSTGRES_BACKUP_SCHEDULE"},
		{"cron with 6 fields", func(c *Config) { c.Schedule = "0 20 5 * * *" }, "POSTGRES_BACKUP_SCHEDULE"},
		{"cron minute out of range", func(c *Config) { c.Schedule = "61 5 * * *" }, "POSTGRES_BACKUP_SCHEDULE"},
		{"retention zero", func(c *Config) { c.KeepFull = 0 }, "POSTGRES_BACKUP_KEEP_FULL"},
		{"retention negative", func(c *Config) { c.KeepFull = -3 }, "POSTGRES_BACKUP_KEEP_FULL"},
		{"path not s3", func(c *Config) { c.S3BackupPath = "https://bucket/x" }, "S3_BACKUP_PATH"},
		{"path without bucket", func(c *Config) { c.S3BackupPath = "s3:///x" }, "S3_BACKUP_PATH"},
		{"no rw keys", func(c *Config) { c.S3SecretKeyRW = "" }, "S3_ACCESS_KEY_RW"},
		{"half ro keys", func(c *Config) { c.S3SecretKeyRO = "" }, "S3_SECRET_KEY_RO"},
		{"endpoint not url", func(c *Config) { c.S3Endpoint = "minio:9000" }, "S3_ENDPOINT"},
		{"keys without path", func(c *Config) { c.S3BackupPath = "" }, "S3_BACKUP_PATH"},
		{"compression", func(c *Config) { c.Compression = "gzip" }, "WALG_COMPRESSION_METHOD"},
		{"archive timeout too small", func(c *Config) { c.ArchiveTimeout = 5 * time.Second }, "POSTGRES_ARCHIVE_TIMEOUT"},
		{"backup timeout too small", func(c *Config) { c.BackupTimeout = time.Second }, "POSTGRES_BACKUP_TIMEOUT"},
		{"retries negative", func(c *Config) { c.Retries = -1 }, "POSTGRES_BACKUP_RETRIES"},
		{"retry delay zero", func(c *Config) { c.RetryDelay = 0 }, "POSTGRES_BACKUP_RETRY_DELAY"},
		{"max age negative", func(c *Config) { c.MaxAgeHours = -1 }, "POSTGRES_BACKUP_MAX_AGE_HOURS"},
		{"verify cron", func(c *Config) { c.VerifySchedule = "weekly" }, "POSTGRES_BACKUP_VERIFY_SCHEDULE"},
		{"verify without ro keys", func(c *Config) { c.VerifySchedule = "@weekly"; c.S3AccessKeyRO, c.S3SecretKeyRO = "", "" }, "POSTGRES_BACKUP_VERIFY_SCHEDULE"},
		{"verify dir relative", func(c *Config) { c.VerifyDir = "scratch" }, "POSTGRES_BACKUP_VERIFY_DIR"},
		{"verify port", func(c *Config) { c.VerifyPort = 70000 }, "POSTGRES_BACKUP_VERIFY_PORT"},
		{"target time without zone", func(c *Config) { c.RecoveryTargetTime = "2026-01-31 12:00:00" }, "PATRONI_RECOVERY_TARGET_TIME"},
		{"target time garbage", func(c *Config) { c.RecoveryTargetTime = "yesterday" }, "PATRONI_RECOVERY_TARGET_TIME"},
		{"timeline", func(c *Config) { c.RecoveryTargetTimeline = "newest" }, "PATRONI_RECOVERY_TARGET_TIMELINE"},
		{"timeline zero", func(c *Config) { c.RecoveryTargetTimeline = "0" }, "PATRONI_RECOVERY_TARGET_TIMELINE"},
		{"action", func(c *Config) { c.RecoveryTargetAction = "stop" }, "PATRONI_RECOVERY_TARGET_ACTION"},
		{"backup name", func(c *Config) { c.BootstrapBackup = "base_1; rm -rf /" }, "PATRONI_BOOTSTRAP_BACKUP_NAME"},
		{"clone not s3", func(c *Config) { c.CloneFrom = "/srv/backups" }, "S3_CLONE_FROM_PATH"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig("wal-g")
			tc.mut(&c)
			err := c.Validate()
			var fe *envspec.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a FieldError naming %s, got %v", tc.wantVar, err)
			}
			if fe.Var != tc.wantVar || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: want one line naming %s", err, tc.wantVar)
			}
			if strings.Contains(err.Error(), "secret-value") {
				t.Fatalf("error leaks a secret: %q", err)
			}
		})
	}
}

func TestParseTargetTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // RFC3339 UTC, "" = error
	}{
		{"2026-01-31 12:00:00+00", "2026-01-31T12:00:00Z"},
		{"2026-01-31 12:00:00.250+03", "2026-01-31T09:00:00.25Z"},
		{"2026-01-31T12:00:00Z", "2026-01-31T12:00:00Z"},
		{"2026-01-31 12:00:00 +0530", "2026-01-31T06:30:00Z"},
		{"2026-01-31 12:00:00-05:00", "2026-01-31T17:00:00Z"},
		{"2026-01-31 12:00:00", ""},
		{"2026-13-31 12:00:00+00", ""},
		{"now", ""},
	} {
		got, err := ParseTargetTime(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%q: want error, got %v", tc.in, got)
			}
			continue
		}
		if err != nil || got.UTC().Format(time.RFC3339Nano) != tc.want {
			t.Errorf("%q: got %v, %v; want %s", tc.in, got.UTC().Format(time.RFC3339Nano), err, tc.want)
		}
	}
}

func TestWalgConfigKeys(t *testing.T) {
	c := testConfig("wal-g")
	p := WalgParams{Prefix: c.Prefix("s", 17), PGHost: "/run/postgresql", PGPort: 5432, PGUser: "postgres", PGPassword: "pg-pass"}
	for _, tc := range []struct {
		keys        Keys
		redacted    bool
		access, sec string
		pgPass      string
	}{
		{ReadWrite, false, "RWKEYID", "rw-secret-value", "pg-pass"},
		{ReadOnly, false, "ROKEYID", "ro-secret-value", "pg-pass"},
		{ReadWrite, true, envspec.Redacted, envspec.Redacted, envspec.Redacted},
	} {
		p.Redacted = tc.redacted
		b, err := c.WalgConfig(tc.keys, p)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]string
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if m["AWS_ACCESS_KEY_ID"] != tc.access || m["AWS_SECRET_ACCESS_KEY"] != tc.sec || m["PGPASSWORD"] != tc.pgPass {
			t.Errorf("keys %v redacted %v: got %v", tc.keys, tc.redacted, m)
		}
		if m["WALG_S3_PREFIX"] != "s3://pgnode-test/backups/s/pg17" {
			t.Errorf("prefix %q", m["WALG_S3_PREFIX"])
		}
	}
}

func TestPatroniSettings(t *testing.T) {
	node := Node{DataDir: "/var/lib/postgresql/data", WalgConfigRW: "/etc/pgnode/walg.json", WalgConfigRO: "/etc/pgnode/walg-ro.json"}

	off := Config{}
	s := off.Patroni(node, false)
	if s.Parameters["archive_mode"] != "off" || s.RestoreCommand != "" || len(s.ReplicaMethods) != 0 || s.BootstrapMethod != "" {
		t.Fatalf("backups off: %+v", s)
	}

	c := testConfig("/usr/local/bin/wal-g")
	s = c.Patroni(node, false)
	rw := "/usr/local/bin/wal-g --config /etc/pgnode/walg.json"
	want := map[string]any{"archive_mode": "on", "archive_command": rw + " wal-push %p", "archive_timeout": "60s"}
	for k, v := range want {
		if s.Parameters[k] != v {
			t.Errorf("%s = %v, want %v", k, s.Parameters[k], v)
		}
	}
	if s.RestoreCommand != rw+" wal-fetch %f %p" {
		t.Errorf("restore_command %q", s.RestoreCommand)
	}
	if len(s.ReplicaMethods) != 1 || s.ReplicaMethods[0] != "walg" ||
		s.ReplicaMethodConfs["walg"]["command"] != rw+" backup-fetch /var/lib/postgresql/data LATEST" {
		t.Errorf("replica methods %v %v", s.ReplicaMethods, s.ReplicaMethodConfs)
	}
	if s.BootstrapMethod != "" {
		t.Errorf("bootstrap method without walg bootstrap: %q", s.BootstrapMethod)
	}

	// PITR of this cluster's own backups.
	c.RecoveryTargetTime = "2026-01-31 12:00:00+00"
	c.RecoveryTargetInclusive = false
	c.RecoveryTargetTimeline = "3"
	s = c.Patroni(node, true)
	rc := s.BootstrapConf["recovery_conf"].(map[string]any)
	if s.BootstrapMethod != "walg" || s.BootstrapConf["command"] != rw+" backup-fetch /var/lib/postgresql/data LATEST" ||
		rc["recovery_target_time"] != "2026-01-31 12:00:00+00" || rc["recovery_target_inclusive"] != "false" ||
		rc["recovery_target_timeline"] != "3" || rc["recovery_target_action"] != "promote" || rc["restore_command"] != rw+" wal-fetch %f %p" {
		t.Errorf("PITR bootstrap: %+v", s.BootstrapConf)
	}

	// Clone of another cluster: read-only keys, the other prefix, no target = to the end.
	c = testConfig("wal-g")
	c.CloneFrom = "s3://other/backups/old-cluster/pg15"
	c.BootstrapBackup = "base_000000010000000000000007"
	s = c.Patroni(node, true)
	ro := "wal-g --config /etc/pgnode/walg-ro.json --walg-s3-prefix=s3://other/backups/old-cluster/pg15"
	rc = s.BootstrapConf["recovery_conf"].(map[string]any)
	if s.BootstrapConf["command"] != ro+" backup-fetch /var/lib/postgresql/data base_000000010000000000000007" ||
		rc["restore_command"] != ro+" wal-fetch %f %p" || rc["recovery_target_time"] != nil {
		t.Errorf("clone bootstrap: %+v", s.BootstrapConf)
	}
	// The node's own archiving still goes to its own prefix with the read-write keys.
	if s.Parameters["archive_command"] != "wal-g --config /etc/pgnode/walg.json wal-push %p" {
		t.Errorf("clone archive_command %v", s.Parameters["archive_command"])
	}
}

func TestConfValue(t *testing.T) {
	for in, want := range map[string]string{
		"100\t\t\t# (change requires restart)":  "100",
		"'timescaledb,pg_stat_statements'  # x": "timescaledb,pg_stat_statements",
		"'it''s # not a comment'":               "it's # not a comment",
		"on":                                    "on",
	} {
		if got := confValue(in); got != want {
			t.Errorf("confValue(%q) = %q, want %q", in, got, want)
		}
	}
}
