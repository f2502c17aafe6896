package backup

import (
	"fmt"
	"syscall"

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

// Patroni returns the settings patroni.yml needs. bootstrapFromBackup is true when the
// cluster is to be bootstrapped from a backup (PATRONI_BOOTSTRAP_METHOD=walg).
func (c *Config) Patroni(node Node, bootstrapFromBackup bool) PatroniSettings {
	s := PatroniSettings{Parameters: map[string]any{}}
	if !c.Enabled() {
		s.Parameters["archive_mode"] = "off"
		return s
	}
	walg := fmt.Sprintf("%s --config %s", c.WalgBinary, node.WalgConfigRW)
	s.Parameters["archive_mode"] = "on"
	s.Parameters["archive_command"] = walg + " wal-push %p"
	s.Parameters["archive_timeout"] = "60s"
	s.RestoreCommand = walg + " wal-fetch %f %p"
	s.ReplicaMethods = []string{"walg"}
	s.ReplicaMethodConfs = map[string]map[string]any{
		"walg": {"command": walg + " backup-fetch " + node.DataDir + " LATEST", "no_params": true, "no_leader": false, "keep_data": false},
	}
	if bootstrapFromBackup {
		s.BootstrapMethod = "walg"
		s.BootstrapConf = map[string]any{
			"command":   walg + " backup-fetch " + node.DataDir + " LATEST",
			"no_params": true,
			"recovery_conf": map[string]any{
				"restore_command":          s.RestoreCommand,
				"recovery_target_timeline": "latest",
				"recovery_target_action":   "promote",
			},
		}
	}
	return s
}
