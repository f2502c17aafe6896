package testenv

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// ConsulServer is one member of a real (non-dev) Consul server cluster on loopback, with
// its own node name, ports and data directory, so that it can be killed and restarted
// like a node's agent.
type ConsulServer struct {
	Name     string
	HTTPPort int
	DNSPort  int
	Addr     string
	args     []string
	dataDir  string
	LogPath  string
	cmd      *exec.Cmd
	done     chan struct{}
	t        testing.TB
}

// StartConsulCluster starts n Consul servers (n odd) that form one cluster, and waits
// for a leader. Each gets a distinct node name, so each has its own serfHealth check.
func StartConsulCluster(t testing.TB, p *Ports, n int) []*ConsulServer {
	t.Helper()
	bin := RequireBinary(t, "consul")
	type portSet struct{ http, dns, serfLAN, serfWAN, server int }
	sets := make([]portSet, n)
	for i := range sets {
		sets[i] = portSet{p.Next(t), p.Next(t), p.Next(t), p.Next(t), p.Next(t)}
	}
	var servers []*ConsulServer
	for i, s := range sets {
		dir := t.TempDir()
		cs := &ConsulServer{Name: fmt.Sprintf("consul-%d-%d", s.http, i+1), HTTPPort: s.http, DNSPort: s.dns,
			Addr: fmt.Sprintf("127.0.0.1:%d", s.http), dataDir: filepath.Join(dir, "data"), LogPath: filepath.Join(dir, "consul.log"), t: t}
		cs.args = []string{"agent", "-server", "-bootstrap-expect=" + strconv.Itoa(n), "-bind=127.0.0.1", "-client=127.0.0.1",
			"-node=" + cs.Name, "-data-dir=" + cs.dataDir,
			"-http-port=" + strconv.Itoa(s.http), "-dns-port=" + strconv.Itoa(s.dns),
			"-serf-lan-port=" + strconv.Itoa(s.serfLAN), "-serf-wan-port=" + strconv.Itoa(s.serfWAN),
			"-server-port=" + strconv.Itoa(s.server), "-grpc-port=-1",
			"-hcl", "performance { raft_multiplier = 1 }", "-hcl", "enable_script_checks = false"}
		for j, o := range sets {
			if j != i {
				cs.args = append(cs.args, "-retry-join=127.0.0.1:"+strconv.Itoa(o.serfLAN))
			}
		}
		_ = bin
		cs.Start()
		servers = append(servers, cs)
		t.Cleanup(cs.Kill)
	}
	for _, cs := range servers {
		cs.WaitLeader(60 * time.Second)
	}
	return servers
}

// Start starts (or restarts) the server with its data directory.
func (cs *ConsulServer) Start() {
	cs.t.Helper()
	logf, err := os.OpenFile(cs.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		cs.t.Fatal(err)
	}
	cs.cmd = exec.Command(RequireBinary(cs.t, "consul"), cs.args...)
	cs.cmd.Stdout, cs.cmd.Stderr = logf, logf
	cs.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cs.cmd.Start(); err != nil {
		cs.t.Fatalf("starting %s: %v", cs.Name, err)
	}
	done := make(chan struct{})
	cs.done = done
	cmd := cs.cmd
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
}

// WaitLeader waits until the server's HTTP API knows a Raft leader.
func (cs *ConsulServer) WaitLeader(d time.Duration) {
	cs.t.Helper()
	WaitFor(cs.t, d, cs.Name+" leader", func() error {
		resp, err := http.Get("http://" + cs.Addr + "/v1/status/leader")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b := make([]byte, 64)
		k, _ := resp.Body.Read(b)
		if resp.StatusCode != 200 || k < 5 {
			return fmt.Errorf("no leader (%q)", b[:k])
		}
		return nil
	})
}

// Kill stops the server with SIGKILL (a crashed agent).
func (cs *ConsulServer) Kill() {
	if cs.cmd == nil || cs.cmd.Process == nil {
		return
	}
	select {
	case <-cs.done:
		return
	default:
	}
	_ = syscall.Kill(-cs.cmd.Process.Pid, syscall.SIGKILL)
	<-cs.done
}

// Restart stops the server gracefully (SIGTERM, as a service restart does) and starts it
// again with the same data.
func (cs *ConsulServer) Restart() {
	select {
	case <-cs.done:
	default:
		_ = syscall.Kill(-cs.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-cs.done:
		case <-time.After(15 * time.Second):
			cs.Kill()
		}
	}
	cs.Start()
}

// AsConsul returns the server as a *Consul for code that takes the dev agent type.
func (cs *ConsulServer) AsConsul() *Consul {
	return &Consul{HTTPPort: cs.HTTPPort, DNSPort: cs.DNSPort, Addr: cs.Addr, LogPath: cs.LogPath}
}

// WaitVoters waits until the Raft configuration seen by this server has n healthy voters
// (a restarted server only counts again after autopilot promotes it).
func (cs *ConsulServer) WaitVoters(n int, d time.Duration) {
	cs.t.Helper()
	WaitFor(cs.t, d, fmt.Sprintf("%d Raft voters", n), func() error {
		resp, err := http.Get("http://" + cs.Addr + "/v1/operator/autopilot/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var h struct {
			Healthy bool
			Servers []struct {
				Name    string
				Healthy bool
				Voter   bool
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			return err
		}
		voters := 0
		for _, s := range h.Servers {
			if s.Voter && s.Healthy {
				voters++
			}
		}
		if voters != n {
			return fmt.Errorf("%d healthy voters", voters)
		}
		return nil
	})
}
