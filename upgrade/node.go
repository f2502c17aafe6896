package upgrade

import (
	"fmt"
	"path/filepath"
	"syscall"

	"pgnode/internal/envspec"
)

// Node describes the data volume and the cluster around it, as the entrypoint knows them.
type Node struct {
	// DataDir is PGDATA, e.g. /var/lib/postgresql/data. Its parent is the volume root:
	// the upgrade's marker file, the new cluster while it is built and every renamed-aside
	// copy live there, so renames never cross filesystems.
	DataDir string
	// Major is the PostgreSQL major of the image.
	Major int
	// BinDir returns the binary directory of a major (/usr/lib/postgresql/%d/bin).
	BinDir func(major int) string `json:"-"`
	// UID and GID are the postgres user's; every PostgreSQL program runs as them.
	UID, GID int
	// Name is this member's Patroni name (PATRONI_NAME); used to tell whether the leader
	// key in the DCS is ours.
	Name string

	SuperUser           string
	SuperPassword       envspec.Secret
	ReplicationUser     string
	ReplicationPassword envspec.Secret
	RewindUser          string
	RewindPassword      envspec.Secret

	// Scope is the Patroni scope; its DCS keys are service/<Scope>/.
	Scope string
	// ConsulAddr (host:port), ConsulScheme and ConsulToken reach Patroni's DCS. An empty
	// ConsulAddr disables every DCS look-up and reset.
	ConsulAddr   string
	ConsulScheme string
	ConsulToken  envspec.Secret
	// StatusFile is where the agent's phase is published for `pgnode health`.
	StatusFile string
}

// State is what Detect found on the data volume.
type State string

// States Detect reports.
const (
	StateEmpty       State = "empty"        // no data directory or an empty one
	StatePatroni     State = "patroni"      // a Patroni-managed cluster of the image's major
	StateSingle      State = "single"       // a plain single server of the image's major
	StateOlder       State = "older-major"  // a cluster of an older major
	StateNewer       State = "newer-major"  // a cluster of a newer major (refused)
	StateHalfUpgrade State = "half-upgrade" // an upgrade marker is present
	StateGarbage     State = "garbage"      // a non-empty directory that is not a cluster (refused)
)

// Outcome is what Prepare did.
type Outcome struct {
	// State is what the volume held when Prepare started.
	State State
	// FromMajor is the major found on the volume (0 when empty).
	FromMajor int
	// Adopted is true when a plain single server was given the roles Patroni needs.
	Adopted bool
	// Upgraded is true when pg_upgrade ran (now or in a resumed earlier attempt).
	Upgraded bool
	// RenamedAside is the path the data directory was moved to when it was a stale
	// replica copy that Patroni must re-clone; empty otherwise.
	RenamedAside string
	// SystemID is the system identifier of the cluster now in DataDir ("" when empty).
	SystemID string
	// RequestFullBackup asks the backup scheduler for a new full backup as soon as this
	// node leads (the old backups belong to another system identifier).
	RequestFullBackup bool
	// DCSReset is true when the scope's keys in Consul were deleted.
	DCSReset bool
	// Leftovers lists renamed-aside directories on the volume, for the operator.
	Leftovers []string
}

func (n *Node) root() string { return filepath.Dir(filepath.Clean(n.DataDir)) }

func (n *Node) bin(major int, prog string) string {
	if n.BinDir != nil {
		return filepath.Join(n.BinDir(major), prog)
	}
	return filepath.Join(fmt.Sprintf("/usr/lib/postgresql/%d/bin", major), prog)
}

func (n *Node) cred() *syscall.Credential {
	return &syscall.Credential{Uid: uint32(n.UID), Gid: uint32(n.GID), NoSetGroups: true}
}

func (n *Node) superUser() string {
	if n.SuperUser == "" {
		return "postgres"
	}
	return n.SuperUser
}
