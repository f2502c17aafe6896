package entrypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// dcsPrefix is the KV prefix of the cluster's state (Patroni namespace /service/).
func (c *Config) dcsPrefix() string { return "service/" + c.Scope + "/" }

// dataDirEmpty reports whether PGDATA holds no cluster (missing, empty, or only
// lost+found).
func dataDirEmpty(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.Name() != "lost+found" {
			return false, nil
		}
	}
	return true, nil
}

// dcsState is what Consul holds for the cluster.
type dcsState struct {
	initialize      string // system identifier, "" when absent
	initializeIndex uint64
	leader          string
	members         []string
}

func readDCSState(cl *consul.Client, prefix string) (*dcsState, error) {
	pairs, _, err := cl.KV().List(prefix, &consul.QueryOptions{RequireConsistent: true})
	if err != nil {
		return nil, fmt.Errorf("while reading the cluster state under %s in Consul: %w", prefix, err)
	}
	st := &dcsState{}
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, prefix)
		switch {
		case rest == "initialize":
			st.initialize, st.initializeIndex = string(p.Value), p.ModifyIndex
		case rest == "leader":
			st.leader = string(p.Value)
		case strings.HasPrefix(rest, "members/") && len(rest) > len("members/"):
			st.members = append(st.members, strings.TrimPrefix(rest, "members/"))
		}
	}
	return st, nil
}

// CheckStaleDCS handles the playbook's known problem (a): after a reinstall Patroni waits
// forever for "leader to bootstrap" because Consul remembers a cluster whose members are
// all gone. When this node's data directory is empty, Consul holds an initialize key and
// no member or leader appears during the grace period, it logs the remedy; with
// PGNODE_REMOVE_STALE_DCS=true it removes the state — atomically, only if the initialize
// key is still the stale one it saw (so two nodes doing this at once, or a member that
// comes back, can never lose a live cluster's state).
func CheckStaleDCS(ctx context.Context, cfg *Config, cl *consul.Client) error {
	empty, err := dataDirEmpty(cfg.DataDir)
	if err != nil || !empty {
		return err
	}
	prefix := cfg.dcsPrefix()
	var st *dcsState
	err = retryConsul(ctx, func() error { var e error; st, e = readDCSState(cl, prefix); return e })
	if err != nil {
		return err
	}
	if st.initialize == "" {
		return nil
	}
	if st.leader != "" || len(st.members) > 0 {
		slog.Info("cluster state found in Consul with live members: this node will join as a replica", "leader", st.leader, "members", st.members)
		return nil
	}
	// Members may be just starting: watch for the grace period.
	deadline := time.Now().Add(cfg.StaleDCSGrace)
	slog.Info("Consul holds a cluster whose members are all absent; watching before calling it stale",
		"scope", cfg.Scope, "system_identifier", st.initialize, "grace", cfg.StaleDCSGrace)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
		now, err := readDCSState(cl, prefix)
		if err != nil {
			continue
		}
		if now.initialize == "" || now.leader != "" || len(now.members) > 0 || now.initializeIndex != st.initializeIndex {
			slog.Info("cluster state changed in Consul; not stale", "leader", now.leader, "members", now.members)
			return nil
		}
	}
	remedy := fmt.Sprintf("run `patronictl -c %s remove %s` on any node, or set PGNODE_REMOVE_STALE_DCS=true and restart this container",
		filepath.Join(cfg.ConfigDir, PatroniFile), cfg.Scope)
	if !cfg.RemoveStaleDCS {
		slog.Error("stale cluster state: Consul remembers cluster "+cfg.Scope+" (system identifier "+st.initialize+
			") but no member is alive and this node's data directory is empty, so Patroni would wait forever for the leader to bootstrap; "+remedy,
			"scope", cfg.Scope)
		return nil
	}
	ok, _, _, err := cl.KV().Txn(consul.KVTxnOps{
		{Verb: consul.KVCheckIndex, Key: prefix + "initialize", Index: st.initializeIndex},
		{Verb: consul.KVDeleteTree, Key: prefix},
	}, nil)
	if err != nil {
		return fmt.Errorf("while removing the stale cluster state under %s: %w", prefix, err)
	}
	if !ok {
		slog.Info("cluster state changed while removing it; left as it is")
		return nil
	}
	slog.Warn("removed stale cluster state from Consul (PGNODE_REMOVE_STALE_DCS=true)", "scope", cfg.Scope, "system_identifier", st.initialize)
	return nil
}

func retryConsul(ctx context.Context, f func() error) error {
	var err error
	for i := 0; i < 60; i++ {
		if err = f(); err == nil {
			return nil
		}
		if i%10 == 0 {
			slog.Warn("Consul not reachable yet; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return err
}
