package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// dcsView is what Patroni's keys in Consul say about the cluster.
type dcsView struct {
	Configured bool   // a Consul address is set
	Initialize string // service/<scope>/initialize: the cluster's system identifier
	Leader     string // service/<scope>/leader: the leading member's name
	// Timeline is the cluster's current timeline according to Patroni's history key (the
	// last switch's timeline + 1); 0 when unknown.
	Timeline int64
	// Upgrader is the member holding pgnode's upgrade lock (service/<scope>/pgnode-upgrade).
	Upgrader string
	// UpgradedFrom is the system identifier the scope had before its last major upgrade
	// (service/<scope>/pgnode-upgraded, written with the reset); copies of that system are
	// stale.
	UpgradedFrom string
	UpgradedBy   string
}

// upgradedKey records, after the scope reset, which system the cluster was upgraded from.
const upgradedKey = "pgnode-upgraded"

// upgradeLockKey is written (create-only) by the member that upgrades the cluster's data,
// so that two members with primary copies never upgrade independently.
const upgradeLockKey = "pgnode-upgrade"

// parseHistory returns the timeline after the last switch in Patroni's history key
// ([[timeline, lsn, reason, time, leader], …]).
func parseHistory(b []byte) int64 {
	var h [][]any
	if json.Unmarshal(b, &h) != nil || len(h) == 0 {
		return 0
	}
	last := h[len(h)-1]
	if len(last) == 0 {
		return 0
	}
	if f, ok := last[0].(float64); ok {
		return int64(f) + 1
	}
	return 0
}

func (n *Node) consul() (*api.Client, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = n.ConsulAddr
	if n.ConsulScheme != "" {
		cfg.Scheme = n.ConsulScheme
	}
	cfg.Token = n.ConsulToken.Value()
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("while creating the Consul client for %s: %w", n.ConsulAddr, err)
	}
	return c, nil
}

func (n *Node) prefix() string { return "service/" + n.Scope + "/" }

func (n *Node) readDCS(ctx context.Context) (dcsView, error) {
	var d dcsView
	if n.ConsulAddr == "" || n.Scope == "" {
		return d, nil
	}
	d.Configured = true
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := n.consul()
	if err != nil {
		return d, err
	}
	q := (&api.QueryOptions{}).WithContext(ctx)
	var history, upgraded string
	for key, dst := range map[string]*string{"initialize": &d.Initialize, "leader": &d.Leader, "history": &history,
		upgradeLockKey: &d.Upgrader, upgradedKey: &upgraded} {
		kv, _, err := c.KV().Get(n.prefix()+key, q)
		if err != nil {
			return d, fmt.Errorf("while reading %s%s from Consul at %s: %w", n.prefix(), key, n.ConsulAddr, err)
		}
		if kv != nil {
			*dst = string(kv.Value)
		}
	}
	d.Timeline = parseHistory([]byte(history))
	if f := strings.Fields(upgraded); len(f) == 3 {
		d.UpgradedFrom, d.UpgradedBy = f[0], f[2]
	}
	if name, _, ok := strings.Cut(d.Upgrader, " "); ok {
		d.Upgrader = name
	}
	return d, nil
}

// takeUpgradeLock records this member as the one upgrading the cluster (create-only). It
// returns the holder when another member has it.
func (n *Node) takeUpgradeLock(ctx context.Context) (string, error) {
	if n.ConsulAddr == "" || n.Scope == "" {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := n.consul()
	if err != nil {
		return "", err
	}
	key := n.prefix() + upgradeLockKey
	val := n.Name + " " + time.Now().UTC().Format(time.RFC3339)
	ok, _, err := c.KV().CAS(&api.KVPair{Key: key, Value: []byte(val), ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("while taking the upgrade lock %s in Consul: %w", key, err)
	}
	if ok {
		return "", nil
	}
	kv, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || kv == nil {
		return "", fmt.Errorf("while reading the upgrade lock %s: %v", key, err)
	}
	holder, _, _ := strings.Cut(string(kv.Value), " ")
	if holder == n.Name {
		return "", nil
	}
	return holder, nil
}

// resetDCS deletes the scope's keys so Patroni starts the upgraded cluster (a new system
// identifier) instead of waiting for the old one. It refuses while a leader is registered
// by another member.
func (n *Node) resetDCS(ctx context.Context, oldSysID, newSysID string) (bool, error) {
	d, err := n.readDCS(ctx)
	if err != nil || !d.Configured {
		return false, err
	}
	if d.Initialize == newSysID {
		return false, nil // already the new cluster's
	}
	if d.Leader != "" && d.Leader != n.Name {
		return false, fmt.Errorf("will not reset %s in Consul: member %q holds the leader key; stop the other members first", n.prefix(), d.Leader)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := n.consul()
	if err != nil {
		return false, err
	}
	if _, err := c.KV().DeleteTree(n.prefix(), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return false, fmt.Errorf("while deleting %s in Consul: %w", n.prefix(), err)
	}
	// Tell the other members that copies of the old system are stale (Patroni ignores
	// keys it does not know).
	val := fmt.Sprintf("%s %s %s", oldSysID, newSysID, n.Name)
	if _, err := c.KV().Put(&api.KVPair{Key: n.prefix() + upgradedKey, Value: []byte(val)}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return true, fmt.Errorf("while writing %s%s in Consul: %w", n.prefix(), upgradedKey, err)
	}
	return true, nil
}

// clusterAction is what the DCS view means for this volume.
type clusterAction int

const (
	actProceed     clusterAction = iota // handle the volume locally
	actRenameAside                      // stale replica copy: move aside, Patroni re-clones
	actWait                             // the leader must move first
	actRefuse                           // would fork the cluster
)

// decideCluster decides, from the volume and the DCS, whether this node may act on its
// own. Only Patroni-managed or standby copies are ever renamed aside; a plain single
// server pointed at a scope that already has another cluster is refused.
func decideCluster(v Volume, d dcsView, me, scope string, imageMajor int) (clusterAction, string) {
	if !d.Configured {
		return actProceed, ""
	}
	sysid := v.Control.SystemID
	replicaCopy := v.Patroni || v.Standby
	if d.UpgradedFrom != "" && d.UpgradedFrom == sysid && d.Initialize != sysid {
		// This is a copy of the system the cluster was upgraded from.
		if !replicaCopy {
			return actRefuse, fmt.Sprintf("the volume holds system %s, which member %q already upgraded (Consul key %s); "+
				"this copy is stale: move it away or use another PATRONI_SCOPE", sysid, d.UpgradedBy, upgradedKey)
		}
		if d.Leader != "" && d.Leader != me {
			return actRenameAside, fmt.Sprintf("member %q upgraded system %s and %q leads the new system %s; this volume holds the old system (PostgreSQL %d): a stale copy to be re-cloned",
				d.UpgradedBy, sysid, d.Leader, d.Initialize, v.Major)
		}
		return actWait, fmt.Sprintf("member %q upgraded this cluster; waiting for the new system's leader to re-clone from it", d.UpgradedBy)
	}
	if d.Initialize == "" {
		if v.Standby && v.Major < imageMajor {
			return actWait, fmt.Sprintf("this volume is a standby of PostgreSQL %d and Consul scope %q is empty: waiting for a leader to re-clone from", v.Major, scope)
		}
		return actProceed, ""
	}
	if d.Initialize != sysid {
		if !replicaCopy {
			return actRefuse, fmt.Sprintf("the volume holds a single server (system identifier %s) but Consul scope %q already belongs to cluster %s; "+
				"use another PATRONI_SCOPE, or remove the scope with `patronictl remove` if that cluster is gone", sysid, scope, d.Initialize)
		}
		if d.Leader != "" && d.Leader != me {
			return actRenameAside, fmt.Sprintf("the cluster in Consul has system identifier %s and leader %q, this volume holds %s (PostgreSQL %d): it is a stale copy to be re-cloned", d.Initialize, d.Leader, sysid, v.Major)
		}
		return actWait, fmt.Sprintf("Consul holds cluster %s without a leader; this volume holds %s: waiting for a leader to re-clone from", d.Initialize, sysid)
	}
	if v.Major < imageMajor {
		if d.Upgrader != "" && d.Upgrader != me {
			return actWait, fmt.Sprintf("member %q is upgrading the cluster (Consul key %s); this node re-clones from it afterwards", d.Upgrader, upgradeLockKey)
		}
		if d.Leader != "" && d.Leader != me {
			return actWait, fmt.Sprintf("member %q still leads the PostgreSQL %d cluster: it upgrades when its node gets the new image; this node re-clones afterwards", d.Leader, v.Major)
		}
		if tl, err := strconv.ParseInt(v.Control.TimelineID, 10, 64); err == nil && d.Timeline > 0 && tl < d.Timeline {
			return actWait, fmt.Sprintf("this volume is on timeline %d but the cluster reached timeline %d: another member was promoted after this one stopped, "+
				"so its node must upgrade; this node re-clones afterwards", tl, d.Timeline)
		}
		if v.Standby {
			return actWait, fmt.Sprintf("this volume is a standby of PostgreSQL %d and no member leads: waiting for the leader's node to upgrade", v.Major)
		}
	}
	return actProceed, ""
}

type consulKV = api.KVPair
