// Package backup wires WAL-G into the node: the WAL-G configuration, WAL archiving and
// restore commands, the in-agent backup schedule on the leader, retention, restore checks
// and metrics. It never imports entrypoint or upgrade.
package backup

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"pgnode/internal/envspec"
)

// Config is the backup part of the node's environment. Loaded by entrypoint (embedded in
// its Config), validated by Validate, then read-only.
type Config struct {
	S3Endpoint    string         `envconfig:"S3_ENDPOINT" desc:"S3 endpoint URL (https://storage.example.com); empty means AWS S3. Backups are off while S3_BACKUP_PATH is empty."`
	S3Region      string         `envconfig:"S3_REGION" default:"us-east-1" desc:"S3 region name"`
	S3BackupPath  string         `envconfig:"S3_BACKUP_PATH" desc:"s3://bucket/prefix/ under which this cluster's backups live (the cluster scope and major are appended: <path>/<scope>/pg<major>); empty disables WAL archiving and backups"`
	S3PathStyle   bool           `envconfig:"S3_PATH_STYLE" default:"false" desc:"true for path-style S3 URLs (MinIO, most self-hosted S3)"`
	S3AccessKeyRW envspec.Secret `envconfig:"S3_ACCESS_KEY_RW" desc:"read-write S3 access key (WAL archiving, backups, retention)"`
	S3SecretKeyRW envspec.Secret `envconfig:"S3_SECRET_KEY_RW" desc:"read-write S3 secret key"`
	S3AccessKeyRO envspec.Secret `envconfig:"S3_ACCESS_KEY_RO" desc:"read-only S3 access key (restore checks; never used to write)"`
	S3SecretKeyRO envspec.Secret `envconfig:"S3_SECRET_KEY_RO" desc:"read-only S3 secret key"`
	Schedule      string         `envconfig:"POSTGRES_BACKUP_SCHEDULE" default:"20 5 * * *" desc:"cron expression (minute hour day-of-month month day-of-week) of the full backup, run on the leader only"`
	KeepFull      int            `envconfig:"POSTGRES_BACKUP_KEEP_FULL" default:"7" desc:"full backups to keep; older backups and the WAL before the oldest kept one are deleted after each successful full backup"`
	WalgBinary    string         `envconfig:"WALG_BINARY" default:"wal-g" desc:"path or name of the wal-g program"`
	Compression   string         `envconfig:"WALG_COMPRESSION_METHOD" default:"zstd" desc:"WAL-G compression: lz4, lzma, zstd or brotli"`

	ArchiveTimeout time.Duration `envconfig:"POSTGRES_ARCHIVE_TIMEOUT" default:"60s" desc:"archive_timeout: a WAL segment is switched and shipped at least this often, so at most this much committed work (plus upload time) is lost when the whole node is lost (RPO); 0 disables, minimum 10s"`
	BackupTimeout  time.Duration `envconfig:"POSTGRES_BACKUP_TIMEOUT" default:"6h" desc:"a full backup running longer than this is killed and counted as failed"`
	Retries        int           `envconfig:"POSTGRES_BACKUP_RETRIES" default:"3" desc:"how many times a failed scheduled backup is retried (with doubling delay) before the slot is given up"`
	RetryDelay     time.Duration `envconfig:"POSTGRES_BACKUP_RETRY_DELAY" default:"1m" desc:"delay before the first retry of a failed backup; doubles for each further retry (at most 30m)"`
	MaxAgeHours    int           `envconfig:"POSTGRES_BACKUP_MAX_AGE_HOURS" default:"26" desc:"the backup status is flagged when no successful full backup is newer than this many hours; 0 turns the check off"`

	VerifySchedule string `envconfig:"POSTGRES_BACKUP_VERIFY_SCHEDULE" desc:"cron expression of an automatic restore check (pgnode backup verify) on this node; empty: only on demand. Needs the read-only S3 keys"`
	VerifyDir      string `envconfig:"POSTGRES_BACKUP_VERIFY_DIR" default:"/var/lib/postgresql/restore-check" desc:"scratch directory for restore checks (needs room for a full copy of the database; emptied afterwards)"`
	VerifyPort     int    `envconfig:"POSTGRES_BACKUP_VERIFY_PORT" default:"55432" desc:"private port of the PostgreSQL started by a restore check (listens on its unix socket only)"`

	BootstrapBackup         string `envconfig:"PATRONI_BOOTSTRAP_BACKUP_NAME" default:"LATEST" desc:"backup a walg bootstrap restores (LATEST or a name from pgnode backup list); with a recovery target time pick one that finished before the target"`
	RecoveryTargetTime      string `envconfig:"PATRONI_RECOVERY_TARGET_TIME" desc:"walg bootstrap: replay WAL up to this time (e.g. 2026-01-31 12:00:00+00); empty: to the end of the archived WAL"`
	RecoveryTargetTimeline  string `envconfig:"PATRONI_RECOVERY_TARGET_TIMELINE" default:"latest" desc:"walg bootstrap: timeline to follow (latest, current or a number)"`
	RecoveryTargetInclusive bool   `envconfig:"PATRONI_RECOVERY_TARGET_INCLUSIVE" default:"true" desc:"walg bootstrap: whether the transactions committed exactly at the target time are kept"`
	RecoveryTargetAction    string `envconfig:"PATRONI_RECOVERY_TARGET_ACTION" default:"promote" desc:"walg bootstrap: what PostgreSQL does at the target (promote, pause or shutdown; only promote finishes the bootstrap unattended)"`
	CloneFrom               string `envconfig:"S3_CLONE_FROM_PATH" desc:"walg bootstrap from another cluster: its full WAL-G prefix (s3://bucket/prefix/<scope>/pg<major>, see pgnode render); read with the read-only keys when set. Empty: this cluster's own prefix"`
}

// Enabled reports whether S3 is configured (and so WAL archiving and backups are on).
func (c *Config) Enabled() bool { return c.S3BackupPath != "" }

// Validate checks the backup settings; errors name the variable.
func (c *Config) Validate() error {
	if !c.Enabled() {
		for _, s := range []struct {
			name string
			set  bool
		}{{"S3_ACCESS_KEY_RW", c.S3AccessKeyRW.IsSet()}, {"S3_SECRET_KEY_RW", c.S3SecretKeyRW.IsSet()}, {"S3_ENDPOINT", c.S3Endpoint != ""}} {
			if s.set {
				return envspec.Errorf("S3_BACKUP_PATH", "s3://bucket/prefix/", "is empty but %s is set; set S3_BACKUP_PATH to enable backups or unset %s", s.name, s.name)
			}
		}
	} else {
		u, err := url.Parse(c.S3BackupPath)
		if err != nil || u.Scheme != "s3" || u.Host == "" {
			return envspec.Errorf("S3_BACKUP_PATH", "s3://bucket/prefix/", "%q is not an s3:// URL with a bucket", c.S3BackupPath)
		}
		if !c.S3AccessKeyRW.IsSet() || !c.S3SecretKeyRW.IsSet() {
			return envspec.Errorf("S3_ACCESS_KEY_RW", "both S3_ACCESS_KEY_RW and S3_SECRET_KEY_RW (or their _FILE forms)", "read-write S3 keys are required when S3_BACKUP_PATH is set")
		}
	}
	if c.S3AccessKeyRO.IsSet() != c.S3SecretKeyRO.IsSet() {
		return envspec.Errorf("S3_SECRET_KEY_RO", "both S3_ACCESS_KEY_RO and S3_SECRET_KEY_RO, or neither", "only one of the read-only S3 keys is set")
	}
	if c.S3Endpoint != "" {
		u, err := url.Parse(c.S3Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return envspec.Errorf("S3_ENDPOINT", "an http:// or https:// URL such as https://storage.example.com", "%q is not a URL", c.S3Endpoint)
		}
	}
	if err := ValidateSchedule(c.Schedule); err != nil {
		return envspec.Errorf("POSTGRES_BACKUP_SCHEDULE", "a 5-field cron expression such as \"20 5 * * *\"", "%q: %v", c.Schedule, err)
	}
	if c.KeepFull < 1 {
		return envspec.Errorf("POSTGRES_BACKUP_KEEP_FULL", "an integer >= 1", "%d would delete every backup", c.KeepFull)
	}
	if c.ArchiveTimeout != 0 && c.ArchiveTimeout < 10*time.Second {
		return envspec.Errorf("POSTGRES_ARCHIVE_TIMEOUT", "0 (off) or a duration of at least 10s such as 60s", "%s would switch (and upload a 16 MB segment) too often", c.ArchiveTimeout)
	}
	if c.BackupTimeout < time.Minute {
		return envspec.Errorf("POSTGRES_BACKUP_TIMEOUT", "a duration of at least 1m such as 6h", "%s is too short for a full backup", c.BackupTimeout)
	}
	if c.Retries < 0 || c.Retries > 20 {
		return envspec.Errorf("POSTGRES_BACKUP_RETRIES", "an integer from 0 to 20", "%d is out of range", c.Retries)
	}
	if c.RetryDelay <= 0 {
		return envspec.Errorf("POSTGRES_BACKUP_RETRY_DELAY", "a positive duration such as 1m", "%s is not positive", c.RetryDelay)
	}
	if c.MaxAgeHours < 0 {
		return envspec.Errorf("POSTGRES_BACKUP_MAX_AGE_HOURS", "0 (off) or a positive number of hours such as 26", "%d is negative", c.MaxAgeHours)
	}
	if c.VerifySchedule != "" {
		if err := ValidateSchedule(c.VerifySchedule); err != nil {
			return envspec.Errorf("POSTGRES_BACKUP_VERIFY_SCHEDULE", "a 5-field cron expression such as \"40 6 * * 0\", or empty", "%q: %v", c.VerifySchedule, err)
		}
		if c.Enabled() && (!c.S3AccessKeyRO.IsSet() || !c.S3SecretKeyRO.IsSet()) {
			return envspec.Errorf("POSTGRES_BACKUP_VERIFY_SCHEDULE", "S3_ACCESS_KEY_RO and S3_SECRET_KEY_RO set as well", "restore checks run only with read-only keys, which are not set")
		}
	}
	if c.VerifyPort < 1 || c.VerifyPort > 65535 {
		return envspec.Errorf("POSTGRES_BACKUP_VERIFY_PORT", "a TCP port number", "%d is out of range", c.VerifyPort)
	}
	if c.VerifyDir == "" || !strings.HasPrefix(c.VerifyDir, "/") || c.VerifyDir == "/" {
		return envspec.Errorf("POSTGRES_BACKUP_VERIFY_DIR", "an absolute directory path", "%q is not usable as a scratch directory", c.VerifyDir)
	}
	if c.BootstrapBackup == "" || strings.ContainsAny(c.BootstrapBackup, " \t\n'\"/") {
		return envspec.Errorf("PATRONI_BOOTSTRAP_BACKUP_NAME", "LATEST or a backup name such as base_000000010000000000000003", "%q is not a backup name", c.BootstrapBackup)
	}
	if c.RecoveryTargetTime != "" {
		if _, err := ParseTargetTime(c.RecoveryTargetTime); err != nil {
			return envspec.Errorf("PATRONI_RECOVERY_TARGET_TIME", "a timestamp with time zone such as \"2026-01-31 12:00:00+00\"", "%q: %v", c.RecoveryTargetTime, err)
		}
	}
	switch tl := c.RecoveryTargetTimeline; tl {
	case "latest", "current":
	default:
		if n, err := strconv.Atoi(tl); err != nil || n < 1 {
			return envspec.Errorf("PATRONI_RECOVERY_TARGET_TIMELINE", "latest, current or a timeline number >= 1", "%q is neither", tl)
		}
	}
	switch c.RecoveryTargetAction {
	case "promote", "pause", "shutdown":
	default:
		return envspec.Errorf("PATRONI_RECOVERY_TARGET_ACTION", "promote, pause or shutdown", "unknown action %q", c.RecoveryTargetAction)
	}
	if c.CloneFrom != "" {
		u, err := url.Parse(c.CloneFrom)
		if err != nil || u.Scheme != "s3" || u.Host == "" || strings.ContainsAny(c.CloneFrom, " '\"") {
			return envspec.Errorf("S3_CLONE_FROM_PATH", "the source cluster's WAL-G prefix such as s3://bucket/backups/patroni-cluster/pg17", "%q is not an s3:// URL with a bucket", c.CloneFrom)
		}
		if !c.Enabled() {
			return envspec.Errorf("S3_CLONE_FROM_PATH", "S3_BACKUP_PATH and the S3 keys set as well", "a clone needs S3 configured")
		}
	}
	switch c.Compression {
	case "lz4", "lzma", "zstd", "brotli":
	default:
		return envspec.Errorf("WALG_COMPRESSION_METHOD", "lz4, lzma, zstd or brotli", "unknown method %q", c.Compression)
	}
	return nil
}

var targetTimeRe = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?\s*(Z|[+-]\d{2}(:?\d{2})?)$`)

// ParseTargetTime parses a recovery target time. A time zone is required: PostgreSQL would
// otherwise read it in the server's time zone, which an operator restoring at 3 a.m. should
// not have to guess.
func ParseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if !targetTimeRe.MatchString(s) {
		return time.Time{}, fmt.Errorf("not of the form YYYY-MM-DD HH:MM:SS[.frac]+TZ")
	}
	norm := strings.Replace(s, " ", "T", 1)
	norm = strings.ReplaceAll(norm, " ", "")
	if strings.HasSuffix(norm, "Z") {
		return time.Parse(time.RFC3339Nano, norm)
	}
	// +HH, +HHMM or +HH:MM
	i := strings.LastIndexAny(norm, "+-")
	zone := norm[i+1:]
	switch len(zone) {
	case 2:
		zone += ":00"
	case 4:
		zone = zone[:2] + ":" + zone[2:]
	}
	return time.Parse(time.RFC3339Nano, norm[:i+1]+zone)
}

// Prefix returns the WAL-G storage prefix of a cluster scope and PostgreSQL major: a new
// major after pg_upgrade never mixes its WAL with the old timeline.
func (c *Config) Prefix(scope string, major int) string {
	return fmt.Sprintf("%s/%s/pg%d", strings.TrimRight(c.S3BackupPath, "/"), scope, major)
}

// Keys selects which S3 key pair a WAL-G config carries.
type Keys int

const (
	// ReadWrite keys archive WAL, push backups and apply retention.
	ReadWrite Keys = iota
	// ReadOnly keys restore (restore checks, clones) and can never write.
	ReadOnly
)

// WalgParams are the node facts the WAL-G config needs besides Config.
type WalgParams struct {
	Prefix string // from Prefix
	PGHost string // unix socket directory
	PGPort int
	PGUser string
	// PGPassword is the password of PGUser (written only into the 0600 file; empty when
	// the local socket trusts/peers the user).
	PGPassword envspec.Secret
	Redacted   bool // replace secrets with envspec.Redacted
}

// WalgConfig renders the JSON config file wal-g reads with --config.
func (c *Config) WalgConfig(keys Keys, p WalgParams) ([]byte, error) {
	access, secret := c.S3AccessKeyRW, c.S3SecretKeyRW
	if keys == ReadOnly {
		access, secret = c.S3AccessKeyRO, c.S3SecretKeyRO
	}
	val := func(s envspec.Secret) string {
		if p.Redacted && s.IsSet() {
			return envspec.Redacted
		}
		return s.Value()
	}
	m := map[string]string{
		"WALG_S3_PREFIX":          p.Prefix,
		"AWS_ACCESS_KEY_ID":       val(access),
		"AWS_SECRET_ACCESS_KEY":   val(secret),
		"AWS_REGION":              c.S3Region,
		"AWS_S3_FORCE_PATH_STYLE": fmt.Sprint(c.S3PathStyle),
		"WALG_COMPRESSION_METHOD": c.Compression,
		"PGHOST":                  p.PGHost,
		"PGPORT":                  fmt.Sprint(p.PGPort),
		"PGUSER":                  p.PGUser,
		"PGDATABASE":              "postgres",
	}
	if c.S3Endpoint != "" {
		m["AWS_ENDPOINT"] = c.S3Endpoint
	}
	if p.PGPassword.IsSet() {
		m["PGPASSWORD"] = val(p.PGPassword)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("while rendering the WAL-G config: %w", err)
	}
	return append(b, '\n'), nil
}
