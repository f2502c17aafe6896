package compose

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testGossipKey = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="

// testCluster is a valid 3-DB-node cluster with one Consul-only application host.
func testCluster() *Cluster {
	c := &Cluster{
		Secrets: Secrets{SuperuserPassword: "su-pw", ReplicatorPassword: "repl-pw", RewindPassword: "rw-pw",
			RestAPIPassword: "api-pw", ConsulEncrypt: testGossipKey},
		Nodes: []Node{
			{Name: "pg1", SSHHost: "192.0.2.1", LANHost: "10.0.0.1", Patroni: true, Consul: "server"},
			{Name: "pg2", SSHHost: "192.0.2.2", LANHost: "10.0.0.2", Patroni: true, Consul: "server"},
			{Name: "pg3", SSHHost: "192.0.2.3", LANHost: "10.0.0.3", Patroni: true, Consul: "server"},
			{Name: "app1", SSHHost: "192.0.2.9", LANHost: "10.0.0.9", Consul: "client"},
		},
	}
	c.ApplyDefaults()
	return c
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Cluster)
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(c *Cluster) {}, ""},
		{"single-node dev cluster", func(c *Cluster) { c.Nodes = c.Nodes[:1] }, ""},
		{"even consul servers", func(c *Cluster) { c.Nodes[3].Consul = "server" }, "nodes[*].consul: 4 Consul servers"},
		{"one server of many", func(c *Cluster) { c.Nodes[1].Consul = "client"; c.Nodes[2].Consul = "client" }, "1 Consul servers"},
		{"duplicate name", func(c *Cluster) { c.Nodes[1].Name = "pg1" }, "nodes[1] (pg1).name: duplicate node name"},
		{"duplicate lan host", func(c *Cluster) { c.Nodes[2].LANHost = "10.0.0.1" }, "nodes[2] (pg3).lan_host: address 10.0.0.1:"},
		{"same host distinct ports ok", func(c *Cluster) {
			c.Nodes[2].LANHost = "10.0.0.1"
			c.Nodes[2].SSHHost = "192.0.2.1"
			c.Nodes[2].Deploy = Deploy{Dir: "/opt/pg3", Project: "pg3"}
			c.Nodes[2].Ports = Ports{Postgres: 6432, PatroniAPI: 9008, ConsulHTTP: 9500, ConsulDNS: 9600, ConsulSerfLAN: 9301, ConsulSerfWAN: 9302, ConsulServer: 9300, Metrics: 9387, Alive: 9010}
		}, ""},
		{"same host same dir", func(c *Cluster) {
			c.Nodes[2].SSHHost = "192.0.2.1"
		}, "nodes[2] (pg3).deploy.dir: /opt/pgnode is also the bundle directory of pg1"},
		{"bad consul role", func(c *Cluster) { c.Nodes[0].Consul = "leader" }, `nodes[0] (pg1).consul: "leader" is not server or client`},
		{"missing lan_host", func(c *Cluster) { c.Nodes[0].LANHost = "" }, "nodes[0] (pg1).lan_host"},
		{"bad name", func(c *Cluster) { c.Nodes[0].Name = "pg 1" }, `nodes[0].name: "pg 1"`},
		{"no db node", func(c *Cluster) {
			for i := range c.Nodes {
				c.Nodes[i].Patroni = false
			}
		}, "nodes: no node has patroni: true"},
		{"missing superuser password", func(c *Cluster) { c.Secrets.SuperuserPassword = "" }, "secrets.superuser_password: missing"},
		{"missing rewind password", func(c *Cluster) { c.Secrets.RewindPassword = "" }, "secrets.rewind_password: missing"},
		{"bad gossip key", func(c *Cluster) { c.Secrets.ConsulEncrypt = "c2hvcnQ=" }, "secrets.consul_encrypt: not the base64"},
		{"s3 incomplete", func(c *Cluster) {
			c.Backup = &Backup{S3BackupPath: "s3://b/p/", S3AccessKeyRW: "a", Schedule: "20 5 * * *", KeepFull: 7}
		}, "backup.s3_secret_key_rw: missing"},
		{"s3 path no scheme", func(c *Cluster) {
			c.Backup = &Backup{S3BackupPath: "backups/p", S3AccessKeyRW: "a", S3SecretKeyRW: "b", Schedule: "20 5 * * *", KeepFull: 7}
		}, "backup.s3_backup_path:"},
		{"s3 one ro key", func(c *Cluster) {
			c.Backup = &Backup{S3BackupPath: "s3://b/p/", S3AccessKeyRW: "a", S3SecretKeyRW: "b", S3AccessKeyRO: "x", Schedule: "20 5 * * *", KeepFull: 7}
		}, "backup.s3_secret_key_ro"},
		{"bad schedule", func(c *Cluster) {
			c.Backup = &Backup{S3BackupPath: "s3://b/p/", S3AccessKeyRW: "a", S3SecretKeyRW: "b", Schedule: "20 5 *", KeepFull: 7}
		}, "backup.schedule:"},
		{"walg without backup", func(c *Cluster) { c.Postgres.BootstrapMethod = "walg" }, "postgres.bootstrap_method: walg needs"},
		{"registry with scheme", func(c *Cluster) { c.Image.Registry = "https://registry.example.com" }, "image.registry:"},
		{"token without user", func(c *Cluster) { c.Image.Registry = "registry.example.com/x"; c.Image.Token = "t" }, "image.token:"},
		{"credentials without registry", func(c *Cluster) { c.Image.Username = "u"; c.Image.Token = "t" }, "image.registry: registry credentials"},
		{"pull always without registry", func(c *Cluster) { c.Image.Pull = "always" }, "image.pull:"},
		{"bad port", func(c *Cluster) { c.Nodes[0].Ports.Postgres = 70000 }, "nodes[0] (pg1).ports.postgres: 70000"},
		{"bad env name", func(c *Cluster) { c.Env = map[string]string{"lower": "x"} }, `env: "lower"`},
		{"bad version", func(c *Cluster) { c.Version = 2 }, "version: 2 is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testCluster()
			tt.mutate(c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseClusterErrors(t *testing.T) {
	good, err := testCluster().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCluster(good); err != nil {
		t.Fatalf("round trip: %v", err)
	}
	tests := []struct{ name, in, want string }{
		{"syntax", "version: 1\nnodes: [\n", "invalid cluster file: yaml: line"},
		{"unknown field", strings.Replace(string(good), "scope:", "scopee: x\nscope:", 1), "field scopee not found"},
		{"wrong type", strings.Replace(string(good), "patroni: true", "patroni: maybe", 1), "line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCluster([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestInit(t *testing.T) {
	for _, tt := range []struct {
		nodes, servers int
		wantErr        string
	}{{1, 1, ""}, {3, 3, ""}, {4, 3, ""}, {5, 5, ""}, {7, 5, ""}, {2, 0, "--nodes: 2 nodes"}, {0, 0, "--nodes: 0"}} {
		c, err := NewCluster(InitOptions{Nodes: tt.nodes, Prefix: "pg", Subnet: "10.0.0.11", SSHUser: "root", Scope: "patroni-cluster"})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("nodes=%d: error %v, want %q", tt.nodes, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("nodes=%d: %v", tt.nodes, err)
		}
		if got := len(c.ConsulServers()); got != tt.servers {
			t.Errorf("nodes=%d: %d servers, want %d", tt.nodes, got, tt.servers)
		}
		key, err := base64.StdEncoding.DecodeString(c.Secrets.ConsulEncrypt)
		if err != nil || len(key) != 32 {
			t.Errorf("gossip key %d bytes, %v", len(key), err)
		}
		for _, pw := range []string{c.Secrets.SuperuserPassword, c.Secrets.ReplicatorPassword, c.Secrets.RewindPassword, c.Secrets.RestAPIPassword} {
			if len(pw) != 32 {
				t.Errorf("password length %d", len(pw))
			}
		}
		if c.Secrets.SuperuserPassword == c.Secrets.ReplicatorPassword {
			t.Error("two passwords are equal")
		}
	}
	// The file is 0600 and never overwritten without force.
	path := filepath.Join(t.TempDir(), "cluster.yml")
	c, _ := NewCluster(InitOptions{Nodes: 3, Prefix: "pg", Subnet: "10.0.0.11", SSHUser: "root", Scope: "s"})
	if err := WriteClusterFile(path, c, false); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %o", st.Mode().Perm())
	}
	before, _ := os.ReadFile(path)
	c2, _ := NewCluster(InitOptions{Nodes: 3, Prefix: "pg", Subnet: "10.0.0.11", SSHUser: "root", Scope: "s"})
	if err := WriteClusterFile(path, c2, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("overwrite without force: %v", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("file changed without --force")
	}
	if err := WriteClusterFile(path, c2, true); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCluster(path)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Secrets != c2.Secrets {
		t.Fatal("secrets did not round-trip")
	}
}

func TestRenderDeterministicAndModes(t *testing.T) {
	c := testCluster()
	for i := range c.Nodes {
		a, err := c.RenderNode(i)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := c.RenderNode(i)
		if a.Hash() != b.Hash() {
			t.Fatalf("%s: two renders differ", c.Nodes[i].Name)
		}
		for p, f := range a.Files {
			secret := p == EnvFileName || p == ConsulFileName
			if secret && f.Mode != 0o600 {
				t.Errorf("%s/%s mode %o", c.Nodes[i].Name, p, f.Mode)
			}
			if p == ComposeFileName && bytes.Contains(f.Data, []byte(testGossipKey)) {
				t.Errorf("gossip key in the compose file")
			}
		}
		if _, ok := a.Files[EnvFileName]; ok != c.Nodes[i].Patroni {
			t.Errorf("%s: env file present=%v", c.Nodes[i].Name, ok)
		}
	}
}

func TestEnvLine(t *testing.T) {
	for _, tt := range []struct{ val, want, err string }{
		{"abc-DEF_1.2", "K=abc-DEF_1.2\n", ""},
		{"with space!", "K='with space!'\n", ""},
		{`a"b$c`, "K='a\"b$c'\n", ""},
		{"it's", "", "single quote"},
		{"two\nlines", "", "line break"},
	} {
		got, err := envLine("f", "K", tt.val)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err %v", tt.val, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %q, %v", tt.val, got, err)
		}
	}
}

func TestHostsBlock(t *testing.T) {
	c := testCluster()
	orig := "127.0.0.1\tlocalhost\n# keep me\n10.9.9.9 other\n"
	once, err := c.UpdateHosts([]byte(orig))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(once), orig) || !strings.Contains(string(once), "10.0.0.2\tpg2\n") {
		t.Fatalf("first update:\n%s", once)
	}
	twice, _ := c.UpdateHosts(once)
	if !bytes.Equal(once, twice) {
		t.Fatalf("not idempotent:\n%s\n---\n%s", once, twice)
	}
	c.Nodes[1].LANHost = "10.0.0.22"
	third, _ := c.UpdateHosts(append(twice, []byte("10.8.8.8 after\n")...))
	if strings.Contains(string(third), "10.0.0.2\t") || !strings.Contains(string(third), "10.0.0.22\tpg2") || !strings.HasSuffix(string(third), "10.8.8.8 after\n") || !strings.HasPrefix(string(third), orig) {
		t.Fatalf("update in place:\n%s", third)
	}
	if _, err := c.UpdateHosts([]byte("# BEGIN pgdeploy cluster patroni-cluster (managed by pgdeploy hosts; do not edit)\n1.2.3.4 x\n")); err == nil {
		t.Fatal("unterminated block accepted")
	}
	path := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	if ch, err := c.UpdateHostsFile(path); err != nil || !ch {
		t.Fatalf("first: %v %v", ch, err)
	}
	if ch, err := c.UpdateHostsFile(path); err != nil || ch {
		t.Fatalf("second: %v %v", ch, err)
	}
}

func TestBundleDiffRedacts(t *testing.T) {
	c := testCluster()
	old, _ := c.RenderNode(0)
	c.Secrets.SuperuserPassword = "new-su-pw"
	c.Postgres.Parameters = map[string]string{"max_connections": "200"}
	nb, _ := c.RenderNode(0)
	cur := map[string][]byte{}
	for p, f := range old.Files {
		cur[p] = f.Data
	}
	d := BundleDiff("pg1", cur, nb)
	for _, s := range []string{"su-pw", "new-su-pw", testGossipKey, "api-pw"} {
		if strings.Contains(d, s) {
			t.Fatalf("diff shows secret %q:\n%s", s, d)
		}
	}
	if !strings.Contains(d, "+ POSTGRES_SUPERUSER_PASSWORD=[REDACTED: changed]") || !strings.Contains(d, "+ POSTGRES_PARAMETERS=max_connections=200") {
		t.Fatalf("diff:\n%s", d)
	}
	if strings.Contains(d, "REPLICATOR") {
		t.Fatalf("unchanged secret in the diff:\n%s", d)
	}
}
