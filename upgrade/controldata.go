package upgrade

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"

	"pgnode/internal/command"
)

// ControlData is the part of pg_controldata's output the upgrade needs.
type ControlData struct {
	SystemID        string
	State           string // "shut down", "shut down in recovery", "in production", …
	ChecksumVersion int    // 0 = no data checksums
	WALSegmentBytes int64
	BlockSize       int64
	CatalogVersion  string
	ControlVersion  string
	TimelineID      string
	raw             map[string]string
}

// ParseControlData parses pg_controldata output (English, as run with LANG=C).
func ParseControlData(out string) (ControlData, error) {
	cd := ControlData{raw: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		cd.raw[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	cd.SystemID = cd.raw["Database system identifier"]
	cd.State = cd.raw["Database cluster state"]
	cd.CatalogVersion = cd.raw["Catalog version number"]
	cd.ControlVersion = cd.raw["pg_control version number"]
	cd.TimelineID = cd.raw["Latest checkpoint's TimeLineID"]
	if cd.SystemID == "" || cd.State == "" {
		return cd, fmt.Errorf("pg_controldata output lacks the system identifier or cluster state")
	}
	var err error
	if v := cd.raw["Data page checksum version"]; v != "" {
		if cd.ChecksumVersion, err = strconv.Atoi(v); err != nil {
			return cd, fmt.Errorf("bad checksum version %q", v)
		}
	}
	if v := cd.raw["Bytes per WAL segment"]; v != "" {
		if cd.WALSegmentBytes, err = strconv.ParseInt(v, 10, 64); err != nil {
			return cd, fmt.Errorf("bad WAL segment size %q", v)
		}
	}
	if v := cd.raw["Database block size"]; v != "" {
		if cd.BlockSize, err = strconv.ParseInt(v, 10, 64); err != nil {
			return cd, fmt.Errorf("bad block size %q", v)
		}
	}
	return cd, nil
}

// CleanShutdown reports whether the cluster was shut down cleanly as a primary (what
// pg_upgrade needs).
func (c ControlData) CleanShutdown() bool { return c.State == "shut down" }

// InRecovery reports whether the control file says the cluster is (or was, when it
// stopped) a standby.
func (c ControlData) InRecovery() bool {
	return c.State == "shut down in recovery" || c.State == "in archive recovery"
}

func (n *Node) controlData(ctx context.Context, major int, dir string) (ControlData, error) {
	out, err := command.Output(ctx, command.Spec{
		Path: n.bin(major, "pg_controldata"), Args: []string{"-D", dir},
		Credential: n.cred(), Env: command.MinimalEnv("LANG=C", "LC_ALL=C"),
	})
	if err != nil {
		return ControlData{}, fmt.Errorf("while running pg_controldata of PostgreSQL %d on %s: %w", major, dir, err)
	}
	cd, err := ParseControlData(out)
	if err != nil {
		return cd, fmt.Errorf("while reading pg_controldata of %s: %w", dir, err)
	}
	return cd, nil
}
