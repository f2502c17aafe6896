package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// testConsulImage is built from the host's real Consul binary with `docker import` (no
// registry here).
const testConsulImage = "compose-test-consul:local"

func dockerOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func imageExists(ref string) bool {
	return exec.Command("docker", "image", "inspect", ref).Run() == nil
}

// importImage builds a single-layer image from files (path in image → local file).
func importImage(t *testing.T, ref string, files map[string]string, dirs []string, changes ...string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o1777, Typeflag: tar.TypeDir}); err != nil {
			t.Fatal(err)
		}
	}
	for dst, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: dst, Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	args = append(args, "-", ref)
	cmd := exec.Command("docker", args...)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import %s: %v: %s", ref, err, out)
	}
}

func ensureConsulImage(t *testing.T) {
	t.Helper()
	if imageExists(testConsulImage) {
		return
	}
	consul := testenv.RequireBinary(t, "consul")
	files := map[string]string{"usr/local/bin/consul": consul}
	// Debian's consul is dynamically linked: take its libraries along.
	out, err := exec.Command("ldd", consul).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", consul, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				files[strings.TrimPrefix(f, "/")] = f
			}
		}
	}
	importImage(t, testConsulImage, files,
		[]string{"tmp", "consul", "consul/data", "consul/config"}, `ENTRYPOINT ["consul"]`)
}

// localCluster is a cluster of n DB nodes (all Consul servers) on this machine: every node
// is its own compose project with its own bundle directory, data volume and ports, reached
// through the test sshd.
func localCluster(t *testing.T, sshd *testenv.SSHD, ports *testenv.Ports, n int, image string) *Cluster {
	t.Helper()
	name, tag, _ := strings.Cut(image, ":")
	base := t.TempDir()
	id := fmt.Sprintf("composetest%d", sshd.Port)
	c := &Cluster{Scope: id, Image: Image{Name: name, Tag: tag}, Consul: Consul{Image: testConsulImage}}
	for i := 1; i <= n; i++ {
		node := fmt.Sprintf("pg%d", i)
		c.Nodes = append(c.Nodes, Node{
			Name: node, SSHHost: "127.0.0.1", SSHPort: sshd.Port, SSHUser: sshd.User, LANHost: "127.0.0.1",
			Patroni: true, Consul: "server",
			Deploy: Deploy{Dir: filepath.Join(base, node), Project: id + "-" + node, Volume: id + "-" + node + "-data"},
			Ports: Ports{Postgres: ports.Next(t), PatroniAPI: ports.Next(t), ConsulHTTP: ports.Next(t),
				ConsulDNS: ports.Next(t), ConsulSerfLAN: ports.Next(t), ConsulSerfWAN: ports.Next(t),
				ConsulServer: ports.Next(t), Metrics: ports.Next(t), Alive: ports.Next(t)},
		})
	}
	c.ApplyDefaults()
	if err := c.FillSecrets(); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := range c.Nodes {
			r := c.Resolve(i)
			out, err := exec.Command("docker", "compose", "-p", r.Project, "down", "-v", "-t", "5").CombinedOutput()
			if err != nil {
				t.Logf("cleanup %s: %v: %s", r.Project, err, out)
			}
			_ = exec.Command("docker", "volume", "rm", "-f", r.Volume, r.Project+"_consul-data").Run()
		}
	})
	return c
}

func sshOpts(sshd *testenv.SSHD) SSHOptions {
	return SSHOptions{KnownHosts: sshd.KnownHosts, IdentityFile: sshd.IdentityFile, ConnectTimeout: 3 * time.Second}
}

// containerFacts returns "id startedAt" of every container of the cluster's projects.
func containerFacts(t *testing.T, c *Cluster) string {
	t.Helper()
	var facts []string
	for i := range c.Nodes {
		r := c.Resolve(i)
		ids := strings.Fields(dockerOut(t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+r.Project))
		for _, id := range ids {
			facts = append(facts, dockerOut(t, "inspect", "-f", "{{.Name}} {{.Id}} {{.State.StartedAt}} {{.State.Status}}", id))
		}
	}
	return strings.Join(facts, "\n")
}

func ship(t *testing.T, c *Cluster, o ShipOptions) (string, error) {
	t.Helper()
	var out bytes.Buffer
	o.Out = &out
	if o.WaitTimeout == 0 {
		o.WaitTimeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	err := Ship(ctx, c, o)
	t.Logf("ship output:\n%s", out.String())
	return out.String(), err
}

// TestShipSSH ships to a real sshd (Debian's openssh-server) on loopback, with the real
// docker compose of this machine as the "remote" one and a real Consul (3 servers) in the
// bundles. The DB service runs the real pgnode image (built by ci/setup-images.sh);
// TestShipE2E additionally checks the Patroni cluster and status.
func TestShipSSH(t *testing.T) {
	testenv.RequireBinary(t, "docker")
	ports := testenv.NewPorts(23000)
	sshd := testenv.StartSSHD(t, ports)
	ensureConsulImage(t)
	image := "pgnode:pg17"
	if !imageExists(image) {
		t.Fatalf("the image %s is missing: run ci/setup-images.sh (ci/test.sh does)", image)
	}
	c := localCluster(t, sshd, ports, 3, image)
	o := ShipOptions{SSH: sshOpts(sshd)}
	noDirs := func(t *testing.T) {
		t.Helper()
		for i := range c.Nodes {
			if _, err := os.Stat(c.Resolve(i).Dir); err == nil {
				t.Fatalf("%s: bundle directory exists", c.Nodes[i].Name)
			}
		}
		if f := containerFacts(t, c); f != "" {
			t.Fatalf("containers exist:\n%s", f)
		}
	}

	t.Run("unknown host key refused", func(t *testing.T) {
		empty := filepath.Join(t.TempDir(), "known_hosts")
		oo := o
		oo.SSH.KnownHosts = empty
		_, err := ship(t, c, oo)
		if err == nil || !strings.Contains(err.Error(), "is unknown (SHA256:") || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("error = %v", err)
		}
		noDirs(t)
	})
	t.Run("changed host key refused", func(t *testing.T) {
		other := testenv.StartSSHD(t, ports) // a different host key
		kh := filepath.Join(t.TempDir(), "known_hosts")
		line := fmt.Sprintf("[127.0.0.1]:%d %s\n", sshd.Port, other.HostKeyPub)
		if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		oo := o
		oo.SSH.KnownHosts = kh
		_, err := ship(t, c, oo)
		if err == nil || !strings.Contains(err.Error(), "has CHANGED") || !strings.Contains(err.Error(), "SHA256:") {
			t.Fatalf("error = %v", err)
		}
		noDirs(t)
	})
	t.Run("unreachable node", func(t *testing.T) {
		// A port that accepts TCP but never speaks SSH: the handshake must time out.
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports.Next(t)))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
			}
		}()
		bad := *c
		bad.Nodes = append([]Node(nil), c.Nodes...)
		bad.Nodes[2].SSHPort = ln.Addr().(*net.TCPAddr).Port
		_, err = ship(t, &bad, o)
		if err == nil || !strings.Contains(err.Error(), "node pg3") || !strings.Contains(err.Error(), "no SSH handshake within 3s") || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("error = %v", err)
		}
		noDirs(t)
	})
	t.Run("dry run changes nothing", func(t *testing.T) {
		oo := o
		oo.DryRun = true
		out, err := ship(t, c, oo)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"[pg1] bundle", "would change", "+ PATRONI_NAME=pg1", "+ POSTGRES_SUPERUSER_PASSWORD=[REDACTED: changed]"} {
			if !strings.Contains(out, s) {
				t.Errorf("dry-run output lacks %q", s)
			}
		}
		if strings.Contains(out, c.Secrets.SuperuserPassword) || strings.Contains(out, c.Secrets.ConsulEncrypt) {
			t.Error("dry-run output shows a secret")
		}
		noDirs(t)
	})
	shipped := t.Run("ship brings the cluster up in order", func(t *testing.T) {
		out, err := ship(t, c, o)
		if err != nil {
			t.Fatal(err)
		}
		order := []string{"[pg1] docker compose up -d consul", "[pg3] docker compose up -d consul",
			"waiting for Consul quorum", "[pg1] docker compose up -d \n", "[pg1] healthy",
			"[pg2] docker compose up -d", "[pg2] healthy", "[pg3] healthy", "ship: done"}
		pos := 0
		for _, s := range order {
			i := strings.Index(out[pos:], s)
			if i < 0 {
				t.Fatalf("output lacks %q after position %d", s, pos)
			}
			pos += i + len(s)
		}
		peers := dockerOut(t, "compose", "-p", c.Resolve(0).Project, "exec", "-T", "consul", "consul", "operator", "raft", "list-peers",
			fmt.Sprintf("-http-addr=http://127.0.0.1:%d", c.Resolve(0).Ports.ConsulHTTP))
		if leader, voters := parseRaftPeers(peers); !leader || voters != 3 {
			t.Fatalf("consul peers:\n%s", peers)
		}
		for i := range c.Nodes {
			st, err := os.Stat(filepath.Join(c.Resolve(i).Dir, EnvFileName))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: env file %v %v", c.Nodes[i].Name, st, err)
			}
		}
	})
	if !shipped {
		t.FailNow()
	}
	t.Run("second ship is a no-op", func(t *testing.T) {
		before := containerFacts(t, c)
		stBefore, _ := os.Stat(c.Resolve(0).Dir)
		out, err := ship(t, c, o)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "upload") || strings.Contains(out, "docker compose up") {
			t.Errorf("second ship changed something:\n%s", out)
		}
		if after := containerFacts(t, c); after != before {
			t.Fatalf("containers changed:\n%s\n---\n%s", before, after)
		}
		stAfter, _ := os.Stat(c.Resolve(0).Dir)
		if !os.SameFile(stBefore, stAfter) || !stBefore.ModTime().Equal(stAfter.ModTime()) {
			t.Fatal("bundle directory was replaced")
		}
	})
	t.Run("limit updates one node, dry run shows the diff", func(t *testing.T) {
		c.Nodes[1].Env = map[string]string{"PATRONI_TTL": "20"}
		before := containerFacts(t, c)
		oldEnv, _ := os.ReadFile(filepath.Join(c.Resolve(1).Dir, EnvFileName))
		oo := o
		oo.DryRun, oo.Limit = true, "pg2"
		out, err := ship(t, c, oo)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "+ PATRONI_TTL=20") || strings.Contains(out, "[pg1]") || strings.Contains(out, "REDACTED") {
			t.Fatalf("dry-run diff:\n%s", out)
		}
		if now, _ := os.ReadFile(filepath.Join(c.Resolve(1).Dir, EnvFileName)); !bytes.Equal(now, oldEnv) {
			t.Fatal("dry run changed the env file")
		}
		oo.DryRun = false
		out, err = ship(t, c, oo)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "[pg2] upload") || strings.Contains(out, "[pg1]") || strings.Contains(out, "[pg3]") {
			t.Fatalf("limited ship:\n%s", out)
		}
		after := containerFacts(t, c)
		for _, line := range strings.Split(before, "\n") {
			if strings.Contains(line, "pg2-pgnode") {
				if strings.Contains(after, line) {
					t.Errorf("pg2's pgnode container was not recreated")
				}
			} else if !strings.Contains(after, line) {
				t.Errorf("container changed: %s", line)
			}
		}
	})
	t.Run("keys from ssh-agent", func(t *testing.T) {
		agentBin := testenv.RequireBinary(t, "ssh-agent")
		sock := filepath.Join(t.TempDir(), "agent.sock")
		ag := exec.Command(agentBin, "-D", "-a", sock)
		if err := ag.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ag.Process.Kill(); _ = ag.Wait() }()
		testenv.WaitFor(t, 10*time.Second, "ssh-agent socket", func() error { _, err := os.Stat(sock); return err })
		add := exec.Command(testenv.RequireBinary(t, "ssh-add"), sshd.IdentityFile)
		add.Env = []string{"SSH_AUTH_SOCK=" + sock}
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v: %s", err, out)
		}
		t.Setenv("SSH_AUTH_SOCK", sock)
		oo := o
		oo.SSH.IdentityFile = ""
		oo.DryRun = true
		out, err := ship(t, c, oo)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(out, ": unchanged") != 3 {
			t.Fatalf("dry run after ship:\n%s", out)
		}
	})
	t.Run("hosts over SSH", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hosts")
		if err := os.WriteFile(path, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := c.UpdateHostsRemote(context.Background(), path, "pg1", o.SSH, &out); err != nil {
			t.Fatal(err)
		}
		if err := c.UpdateHostsRemote(context.Background(), path, "pg1", o.SSH, &out); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		if !strings.HasPrefix(string(b), "127.0.0.1 localhost\n# BEGIN pgdeploy") || !strings.Contains(out.String(), "updated\n[pg1] "+path+" unchanged") {
			t.Fatalf("hosts:\n%s\noutput:\n%s", b, out.String())
		}
	})
}

// TestShipE2E ships a 3-node cluster of the real pgnode image (tag pgnode:pg17, built by
// ci/setup-images.sh) with real Consul servers through the real sshd, waits for every node
// to be healthy, and checks that `pgdeploy status` shows one leader and two replicas.
// Without the image it prints one SKIP line, or fails when PGNODE_E2E_REQUIRE_IMAGE=1.
func TestShipE2E(t *testing.T) {
	testenv.RequireBinary(t, "docker")
	const image = "pgnode:pg17"
	if !imageExists(image) {
		if os.Getenv("PGNODE_E2E_REQUIRE_IMAGE") == "1" {
			t.Fatalf("image %s is missing and PGNODE_E2E_REQUIRE_IMAGE=1 (build it with ci/setup-images.sh)", image)
		}
		t.Skipf("SKIP: image %s not built (ci/setup-images.sh); set PGNODE_E2E_REQUIRE_IMAGE=1 to require it", image)
	}
	ports := testenv.NewPorts(23500)
	sshd := testenv.StartSSHD(t, ports)
	ensureConsulImage(t)
	c := localCluster(t, sshd, ports, 3, image)
	o := ShipOptions{SSH: sshOpts(sshd), WaitTimeout: 10 * time.Minute}
	if _, err := ship(t, c, o); err != nil {
		for i := range c.Nodes {
			out, _ := exec.Command("docker", "compose", "-p", c.Resolve(i).Project, "logs", "--tail", "40").CombinedOutput()
			t.Logf("%s logs:\n%s", c.Nodes[i].Name, out)
		}
		t.Fatal(err)
	}
	var rows []NodeStatus
	testenv.WaitFor(t, 3*time.Minute, "one leader and two streaming replicas", func() error {
		var err error
		_, rows, err = Status(context.Background(), c, StatusOptions{SSH: sshOpts(sshd)})
		if err != nil {
			return err
		}
		leaders, replicas := 0, 0
		for _, r := range rows {
			switch {
			case r.Role == "Leader" && r.State == "running":
				leaders++
			case r.Role == "Replica" && (r.State == "streaming" || r.State == "running"):
				replicas++
			}
		}
		if leaders != 1 || replicas != 2 {
			return fmt.Errorf("%d leaders, %d replicas: %+v", leaders, replicas, rows)
		}
		return nil
	})
	var buf bytes.Buffer
	PrintStatus(&buf, "Cluster: "+c.Scope, rows)
	t.Logf("status:\n%s", buf.String())
	// A second ship changes nothing on the running cluster.
	before := containerFacts(t, c)
	if _, err := ship(t, c, o); err != nil {
		t.Fatal(err)
	}
	if after := containerFacts(t, c); after != before {
		t.Fatalf("second ship changed containers:\n%s\n---\n%s", before, after)
	}
}
