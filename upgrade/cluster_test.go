package upgrade

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

func TestDecideCluster(t *testing.T) {
	const mine, other = "7000000000000000001", "7000000000000000002"
	primary13 := Volume{State: StateOlder, Major: 13, Control: ControlData{SystemID: mine, State: "shut down"}, Patroni: true}
	standby13 := primary13
	standby13.Standby = true
	primary13tl := func(tl int) Volume {
		v := primary13
		v.Control.TimelineID = strconv.Itoa(tl)
		return v
	}
	single15 := Volume{State: StateSingle, Major: 15, Control: ControlData{SystemID: mine, State: "shut down"}}
	patroni15 := Volume{State: StatePatroni, Major: 15, Control: ControlData{SystemID: mine}, Patroni: true}
	cases := []struct {
		name string
		v    Volume
		d    dcsView
		want clusterAction
	}{
		{"no DCS configured", primary13, dcsView{}, actProceed},
		{"empty scope", primary13, dcsView{Configured: true}, actProceed},
		{"leader on new system: stale old-major replica", standby13, dcsView{Configured: true, Initialize: other, Leader: "n0"}, actRenameAside},
		{"leader on new system: stale old-major ex-primary", primary13, dcsView{Configured: true, Initialize: other, Leader: "n0"}, actRenameAside},
		{"leader on new system: same-major copy of another system", patroni15, dcsView{Configured: true, Initialize: other, Leader: "n0"}, actRenameAside},
		{"new system without leader yet: wait", standby13, dcsView{Configured: true, Initialize: other}, actWait},
		{"another member still leads the old cluster: wait", primary13, dcsView{Configured: true, Initialize: mine, Leader: "n0"}, actWait},
		{"standby, nobody leads: wait for the leader's node", standby13, dcsView{Configured: true, Initialize: mine}, actWait},
		{"old primary, nobody leads: upgrade", primary13, dcsView{Configured: true, Initialize: mine}, actProceed},
		{"old primary, our own stale leader key: upgrade", primary13, dcsView{Configured: true, Initialize: mine, Leader: "n1"}, actProceed},
		{"single server into a foreign scope: refuse", single15, dcsView{Configured: true, Initialize: other, Leader: "n0"}, actRefuse},
		{"same-major member of this cluster", patroni15, dcsView{Configured: true, Initialize: mine, Leader: "n0"}, actProceed},
		{"scope reset, no leader yet: old standby waits", standby13, dcsView{Configured: true}, actWait},
		{"upgraded from our system, new leader up: rename aside", standby13, dcsView{Configured: true, Initialize: other, Leader: "n0", UpgradedFrom: mine, UpgradedBy: "n0"}, actRenameAside},
		{"upgraded from our system, scope still empty: wait (even a primary copy)", primary13, dcsView{Configured: true, UpgradedFrom: mine, UpgradedBy: "n0"}, actWait},
		{"upgraded from our system, plain single server: refuse", Volume{State: StateOlder, Major: 13, Control: ControlData{SystemID: mine}}, dcsView{Configured: true, UpgradedFrom: mine, UpgradedBy: "n0"}, actRefuse},
		{"another member holds the upgrade lock: wait", primary13, dcsView{Configured: true, Initialize: mine, Upgrader: "n0"}, actWait},
		{"our own upgrade lock (restart): upgrade", primary13, dcsView{Configured: true, Initialize: mine, Upgrader: "n1"}, actProceed},
		{"timeline behind the cluster's (demoted ex-leader): wait", primary13tl(1), dcsView{Configured: true, Initialize: mine, Timeline: 3}, actWait},
		{"timeline equal to the cluster's: upgrade", primary13tl(3), dcsView{Configured: true, Initialize: mine, Timeline: 3}, actProceed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why := decideCluster(tc.v, tc.d, "n1", "s", 15)
			if got != tc.want {
				t.Fatalf("got %d (%s), want %d", got, why, tc.want)
			}
			if got != actProceed && why == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

// TestReplicaOfUpgradedLeader: a Patroni-managed PostgreSQL 13 replica volume whose scope
// in (real) Consul already shows a leader on the new system identifier is renamed aside,
// never upgraded on its own; while the old cluster's leader still runs elsewhere it waits
// (status "waiting", volume untouched).
func TestReplicaOfUpgradedLeader(t *testing.T) {
	consul := testenv.StartConsul(t, ports)
	root := oldVolume(t, "")
	n := testNode(t, root)
	n.ConsulAddr, n.Scope = consul.Addr, "replica-test"
	// Patroni-managed: Patroni left postgresql.base.conf behind.
	if err := os.WriteFile(filepath.Join(n.DataDir, "postgresql.base.conf"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(filepath.Join(n.DataDir, "postgresql.base.conf"), n.UID, n.GID)
	cli, err := n.consul()
	if err != nil {
		t.Fatal(err)
	}
	put := func(k, v string) {
		if _, err := cli.KV().Put(&kvPair{Key: n.prefix() + k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{AutoUpgrade: true, Mode: "link"}

	// 1. The old cluster still has another leader: wait, touch nothing.
	put("initialize", fixture.sysid)
	put("leader", "n0")
	before := treeState(t, n.DataDir)
	old := waitInterval
	waitInterval = 200 * time.Millisecond
	defer func() { waitInterval = old }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	done := make(chan error, 1)
	go func() { _, err := Prepare(ctx, cfg, n); done <- err }()
	testenv.WaitFor(t, 10*time.Second, "status waiting", func() error {
		st, _ := ReadStatus(n.StatusFile)
		if st.Phase != PhaseWaiting || !st.Busy() || !strings.Contains(st.Message, `"n0" still leads`) {
			return os.ErrNotExist
		}
		return nil
	})
	if err := <-done; err == nil {
		t.Fatal("Prepare returned without waiting")
	}
	cancel()
	if after := treeState(t, n.DataDir); after != before {
		t.Fatal("a waiting replica touched its volume")
	}

	// 2. The leader has upgraded: new system identifier, leader n0 → rename aside.
	put("initialize", "7999999999999999999")
	out, err := Prepare(context.Background(), cfg, n)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if out.RenamedAside == "" || out.Upgraded || exists(n.DataDir) {
		t.Fatalf("outcome %+v; data dir exists: %v", out, exists(n.DataDir))
	}
	if !strings.Contains(out.RenamedAside, "stale-"+fixture.sysid) || !exists(filepath.Join(out.RenamedAside, "PG_VERSION")) {
		t.Fatalf("renamed-aside copy: %s", out.RenamedAside)
	}
}

func TestParseHistory(t *testing.T) {
	for in, want := range map[string]int64{
		`[[1, 50331800, "no recovery target specified", "2026-01-01T00:00:00+00:00", "n2"], [2, 67109016, "no recovery target specified"]]`: 3,
		`[]`: 0, ``: 0, `garbage`: 0,
	} {
		if got := parseHistory([]byte(in)); got != want {
			t.Errorf("parseHistory(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestParseControlData(t *testing.T) {
	out := `pg_control version number:            1300
Catalog version number:               202007201
Database system identifier:           7312345678901234567
Database cluster state:               shut down in recovery
Latest checkpoint's TimeLineID:       3
Database block size:                  8192
Bytes per WAL segment:                16777216
Data page checksum version:           1
`
	cd, err := ParseControlData(out)
	if err != nil {
		t.Fatal(err)
	}
	if cd.SystemID != "7312345678901234567" || cd.ChecksumVersion != 1 || cd.WALSegmentBytes != 16<<20 || !cd.InRecovery() || cd.CleanShutdown() || cd.TimelineID != "3" {
		t.Fatalf("%+v", cd)
	}
	if _, err := ParseControlData("garbage"); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestSCRAMVerifier(t *testing.T) {
	// RFC 7677's test vector uses SHA-256 with this salt/iteration count for "pencil".
	v, err := scramWithSalt("pencil", []byte{0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81}, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$") {
		t.Fatalf("verifier %s", v)
	}
	// ServerKey from RFC 7677 (derived from its ServerSignature example) is not given
	// directly; real logins with verifiers made here are tested in TestAdoptSingleServer.
}
