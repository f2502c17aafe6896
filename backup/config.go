// Package backup wires WAL-G into the node: the WAL-G configuration, WAL archiving and
// restore commands, the in-agent backup schedule on the leader, retention, restore checks
// and metrics. It never imports entrypoint or upgrade.
package backup

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

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
	switch c.Compression {
	case "lz4", "lzma", "zstd", "brotli":
	default:
		return envspec.Errorf("WALG_COMPRESSION_METHOD", "lz4, lzma, zstd or brotli", "unknown method %q", c.Compression)
	}
	return nil
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
	Prefix   string // from Prefix
	PGHost   string // unix socket directory
	PGPort   int
	PGUser   string
	Redacted bool // replace secrets with envspec.Redacted
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
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("while rendering the WAL-G config: %w", err)
	}
	return append(b, '\n'), nil
}
