package backup

import (
	"fmt"
	"strings"
	"syscall"
	"time"

	"pgnode/internal/envspec"
)

// Node is what the backup package needs to know about the node it runs on. entrypoint
// fills it from its own config.
type Node struct {
	Scope           string
	Name            string
	Major           int
	DataDir         string
	PGHost          string // unix socket directory
	PGPort          int
	SuperUser       string
	SuperPassword   envspec.Secret
	PatroniURL      string // e.g. http://127.0.0.1:8008
	PatroniUser     string
	PatroniPassword envspec.Secret
	ConsulAddr      string // host:port of the local Consul agent
	ConsulScheme    string
	ConsulToken     envspec.Secret
	WalgConfigRW    string // path of the rendered read-write WAL-G config
	WalgConfigRO    string // path of the rendered read-only WAL-G config
	PGBinDir        string // PostgreSQL programs (POSTGRES_BIN_DIR); empty: /usr/lib/postgresql/<Major>/bin
	// Credential runs wal-g as the postgres user when the agent runs as root (nil: as is).
	Credential *syscall.Credential
}

// PatroniSettings is what patroni.yml needs from the backup package.
type PatroniSettings struct {
	// Parameters are PostgreSQL parameters (archive_mode, archive_command, archive_timeout).
	Parameters map[string]any
	// RestoreCommand is postgresql.recovery_conf.restore_command ("" when backups are off).
	RestoreCommand string
	// ReplicaMethods are create_replica_methods entries before "basebackup", with their
	// settings keyed by method name.
	ReplicaMethods     []string
	ReplicaMethodConfs map[string]map[string]any
	// BootstrapMethod is the bootstrap.method name and BootstrapConf its settings, for
	// PATRONI_BOOTSTRAP_METHOD=walg ("" otherwise).
	BootstrapMethod string
	BootstrapConf   map[string]any
}

// walgCommand is the wal-g command line with the given config file; extra flags (never
// secrets) follow the config.
func (c *Config) walgCommand(configPath string, extra ...string) string {
	parts := append([]string{c.WalgBinary, "--config", configPath}, extra...)
	return strings.Join(parts, " ")
}

// Patroni returns the settings patroni.yml needs. bootstrapFromBackup is true when the
// cluster is to be bootstrapped from a backup (PATRONI_BOOTSTRAP_METHOD=walg).
//
// With S3 configured: WAL is archived by wal-push with the read-write config, every node
// can fetch WAL (wal-fetch) for recovery and replicas, new replicas are first restored from
// the latest backup in S3 (falling back to pg_basebackup from the leader when there is no
// backup or the fetch fails), and a walg bootstrap restores a backup (this cluster's or, for
// a clone, another cluster's prefix read with the read-only keys) and replays WAL to the
// configured target.
func (c *Config) Patroni(node Node, bootstrapFromBackup bool) PatroniSettings {
	s := PatroniSettings{Parameters: map[string]any{}}
	if !c.Enabled() {
		s.Parameters["archive_mode"] = "off"
		return s
	}
	walg := c.walgCommand(node.WalgConfigRW)
	s.Parameters["archive_mode"] = "on"
	s.Parameters["archive_command"] = walg + " wal-push %p"
	s.Parameters["archive_timeout"] = archiveTimeout(c.ArchiveTimeout)
	s.RestoreCommand = walg + " wal-fetch %f %p"
	s.ReplicaMethods = []string{"walg"}
	s.ReplicaMethodConfs = map[string]map[string]any{
		// no_leader: a replica can be restored from S3 even while no leader runs;
		// keep_data false: Patroni empties the data directory before the next method
		// (basebackup) when this one fails.
		"walg": {"command": walg + " backup-fetch " + node.DataDir + " LATEST", "no_params": true, "no_leader": true, "keep_data": false},
	}
	if bootstrapFromBackup {
		cfgPath, extra := node.WalgConfigRW, []string(nil)
		if c.CloneFrom != "" {
			if c.S3AccessKeyRO.IsSet() {
				cfgPath = node.WalgConfigRO
			}
			extra = []string{"--walg-s3-prefix=" + c.CloneFrom}
		}
		src := c.walgCommand(cfgPath, extra...)
		rc := map[string]any{
			"restore_command":          src + " wal-fetch %f %p",
			"recovery_target_timeline": c.RecoveryTargetTimeline,
			"recovery_target_action":   c.RecoveryTargetAction,
		}
		if c.RecoveryTargetTime != "" {
			rc["recovery_target_time"] = c.RecoveryTargetTime
			rc["recovery_target_inclusive"] = fmt.Sprint(c.RecoveryTargetInclusive) // "true"/"false", as PostgreSQL spells it
		}
		s.BootstrapMethod = "walg"
		s.BootstrapConf = map[string]any{
			"command":                     src + " backup-fetch " + node.DataDir + " " + c.BootstrapBackup,
			"no_params":                   true,
			"keep_existing_recovery_conf": false,
			"recovery_conf":               rc,
		}
	}
	return s
}

// archiveTimeout renders archive_timeout in seconds ("0" turns it off).
func archiveTimeout(d time.Duration) string {
	return fmt.Sprintf("%ds", int(d/time.Second))
}
