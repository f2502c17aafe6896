// Package upgrade looks at an existing data volume before Patroni starts: detection,
// adopting a single server, pg_upgrade with rollback, and extension updates. It never
// imports entrypoint or backup.
package upgrade

import "pgnode/internal/envspec"

// Config is the upgrade part of the node's environment.
type Config struct {
	AutoUpgrade bool   `envconfig:"POSTGRES_DB_AUTOUPGRADE" default:"false" desc:"true lets the agent pg_upgrade a data volume of an older PostgreSQL major to the image's major before Patroni starts"`
	Mode        string `envconfig:"POSTGRES_UPGRADE_MODE" default:"link" desc:"pg_upgrade transfer mode: link (fast, hard links), clone (reflinks, needs a CoW filesystem) or copy (slow, keeps the old cluster startable)"`
	Jobs        int    `envconfig:"POSTGRES_UPGRADE_JOBS" default:"0" desc:"pg_upgrade --jobs; 0 means the number of CPUs"`
}

// Validate checks the upgrade settings; errors name the variable.
func (c *Config) Validate() error {
	switch c.Mode {
	case "link", "clone", "copy":
	default:
		return envspec.Errorf("POSTGRES_UPGRADE_MODE", "link, clone or copy", "unknown mode %q", c.Mode)
	}
	if c.Jobs < 0 || c.Jobs > 64 {
		return envspec.Errorf("POSTGRES_UPGRADE_JOBS", "an integer from 0 to 64", "%d is out of range", c.Jobs)
	}
	return nil
}
