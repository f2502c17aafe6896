package compose

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"
)

// ClusterVersion is the schema version of the cluster file this pgdeploy writes and reads.
const ClusterVersion = 1

// Cluster is the cluster file: everything pgdeploy needs to render and ship the bundles of
// one pgnode cluster. docs/pgdeploy.md documents every field. It holds secrets: the file is
// written with mode 0600 and never printed.
type Cluster struct {
	Version    int    `yaml:"version"`
	Scope      string `yaml:"scope"`                // PATRONI_SCOPE
	Datacenter string `yaml:"datacenter,omitempty"` // Consul datacenter, default dc1

	Image    Image    `yaml:"image"`
	Consul   Consul   `yaml:"consul"`
	Deploy   Deploy   `yaml:"deploy"`
	Ports    Ports    `yaml:"ports"`
	Secrets  Secrets  `yaml:"secrets"`
	Postgres Postgres `yaml:"postgres"`
	Backup   *Backup  `yaml:"backup,omitempty"`
	// Env holds extra variables for every DB node's pgnode.env (e.g. PATRONI_TTL).
	Env   map[string]string `yaml:"env,omitempty"`
	Nodes []Node            `yaml:"nodes"`
}

// Image is the pgnode image and, optionally, the registry it is pulled from.
type Image struct {
	Registry string `yaml:"registry,omitempty"` // host[:port][/path], e.g. registry.gitlab.com/acme/pgnode
	Name     string `yaml:"name"`               // default pgnode
	Tag      string `yaml:"tag"`                // default pg17
	Username string `yaml:"username,omitempty"` // registry deploy-token user
	Token    string `yaml:"token,omitempty"`    // registry deploy token (secret, passed to docker login on stdin)
	// Pull: "always" runs docker compose pull, "never" skips it, "auto" (default) pulls
	// when a registry is set.
	Pull string `yaml:"pull,omitempty"`
}

// Ref returns the image reference the bundles use.
func (i Image) Ref() string {
	ref := i.Name + ":" + i.Tag
	if i.Registry != "" {
		ref = strings.TrimRight(i.Registry, "/") + "/" + ref
	}
	return ref
}

// RegistryHost returns the registry's host[:port] (what docker login wants).
func (i Image) RegistryHost() string {
	h, _, _ := strings.Cut(i.Registry, "/")
	return h
}

// Consul holds the Consul agents' settings.
type Consul struct {
	Image      string `yaml:"image"`                 // default hashicorp/consul:1.20
	ClientAddr string `yaml:"client_addr,omitempty"` // HTTP/DNS listen address, default 127.0.0.1
	// Config is merged into every agent's consul.json (e.g. session_ttl_min, recursors).
	Config map[string]any `yaml:"config,omitempty"`
}

// Deploy says where bundles live on the nodes and how their compose projects are named.
// Every field can be overridden per node.
type Deploy struct {
	Dir     string `yaml:"dir,omitempty"`     // bundle directory on the node, default /opt/pgnode
	Project string `yaml:"project,omitempty"` // compose project name, default pgnode
	Volume  string `yaml:"volume,omitempty"`  // data volume name (the playbook's postgres_volume_name), default pgnode-data
	Sudo    *bool  `yaml:"sudo,omitempty"`    // run remote commands with sudo -n; default: when ssh_user is not root
}

// Ports are the ports a node listens on (host networking). Zero fields take the cluster's
// value, then the default.
type Ports struct {
	Postgres      int `yaml:"postgres,omitempty"`        // 5432
	PatroniAPI    int `yaml:"patroni_api,omitempty"`     // 8008
	ConsulHTTP    int `yaml:"consul_http,omitempty"`     // 8500
	ConsulDNS     int `yaml:"consul_dns,omitempty"`      // 8600
	ConsulSerfLAN int `yaml:"consul_serf_lan,omitempty"` // 8301
	ConsulSerfWAN int `yaml:"consul_serf_wan,omitempty"` // 8302
	ConsulServer  int `yaml:"consul_server,omitempty"`   // 8300
	Metrics       int `yaml:"metrics,omitempty"`         // 9187, the agent's metrics incl. backups (PGNODE_METRICS_PORT)
	Alive         int `yaml:"alive,omitempty"`           // 8010, the agent's fast-failover alive port (PGNODE_ALIVE_PORT)
}

// DefaultPorts are the well-known ports.
var DefaultPorts = Ports{Postgres: 5432, PatroniAPI: 8008, ConsulHTTP: 8500, ConsulDNS: 8600,
	ConsulSerfLAN: 8301, ConsulSerfWAN: 8302, ConsulServer: 8300, Metrics: 9187, Alive: 8010}

func (p Ports) over(base Ports) Ports {
	pick := func(a, b int) int {
		if a != 0 {
			return a
		}
		return b
	}
	return Ports{pick(p.Postgres, base.Postgres), pick(p.PatroniAPI, base.PatroniAPI),
		pick(p.ConsulHTTP, base.ConsulHTTP), pick(p.ConsulDNS, base.ConsulDNS),
		pick(p.ConsulSerfLAN, base.ConsulSerfLAN), pick(p.ConsulSerfWAN, base.ConsulSerfWAN),
		pick(p.ConsulServer, base.ConsulServer), pick(p.Metrics, base.Metrics), pick(p.Alive, base.Alive)}
}

func (p Ports) list() []struct {
	field string
	port  int
} {
	return []struct {
		field string
		port  int
	}{{"postgres", p.Postgres}, {"patroni_api", p.PatroniAPI}, {"consul_http", p.ConsulHTTP},
		{"consul_dns", p.ConsulDNS}, {"consul_serf_lan", p.ConsulSerfLAN},
		{"consul_serf_wan", p.ConsulSerfWAN}, {"consul_server", p.ConsulServer},
		{"metrics", p.Metrics}, {"alive", p.Alive}}
}

// Secrets are the cluster's shared secrets.
type Secrets struct {
	SuperuserPassword  string `yaml:"superuser_password"`
	ReplicatorPassword string `yaml:"replicator_password"`
	RewindPassword     string `yaml:"rewind_password"`
	RestAPIPassword    string `yaml:"restapi_password"`
	ConsulEncrypt      string `yaml:"consul_encrypt"` // base64 of 32 random bytes
}

// Postgres holds the PostgreSQL/Patroni settings shared by all DB nodes.
type Postgres struct {
	BootstrapMethod        string `yaml:"bootstrap_method,omitempty"` // initdb (default) | walg
	RecoveryTargetTime     string `yaml:"recovery_target_time,omitempty"`
	RecoveryTargetTimeline string `yaml:"recovery_target_timeline,omitempty"`
	AutoUpgrade            bool   `yaml:"autoupgrade,omitempty"` // POSTGRES_DB_AUTOUPGRADE
	SynchronousMode        bool   `yaml:"synchronous_mode,omitempty"`
	// Parameters become POSTGRES_PARAMETERS (bootstrap.dcs.postgresql.parameters).
	Parameters map[string]string `yaml:"parameters,omitempty"`
}

// Backup holds the WAL-G/S3 settings; absent means backups off.
type Backup struct {
	S3Endpoint    string `yaml:"s3_endpoint,omitempty"`
	S3Region      string `yaml:"s3_region,omitempty"`
	S3BackupPath  string `yaml:"s3_backup_path"`
	S3PathStyle   bool   `yaml:"s3_path_style,omitempty"`
	S3AccessKeyRW string `yaml:"s3_access_key_rw"`
	S3SecretKeyRW string `yaml:"s3_secret_key_rw"`
	S3AccessKeyRO string `yaml:"s3_access_key_ro,omitempty"`
	S3SecretKeyRO string `yaml:"s3_secret_key_ro,omitempty"`
	Schedule      string `yaml:"schedule,omitempty"`  // cron, default "20 5 * * *"
	KeepFull      int    `yaml:"keep_full,omitempty"` // default 7
}

// Node is one host of the cluster: a DB node (patroni: true) with a Consul server or
// client, or an application host with a Consul client only.
type Node struct {
	Name    string `yaml:"name"`
	SSHHost string `yaml:"ssh_host"`           // the playbook's ansible_host
	SSHUser string `yaml:"ssh_user,omitempty"` // ansible_user, default root
	SSHPort int    `yaml:"ssh_port,omitempty"` // ansible_port, default 22
	LANHost string `yaml:"lan_host"`           // address other nodes reach this one at
	Patroni bool   `yaml:"patroni"`            // runs PostgreSQL/Patroni
	Consul  string `yaml:"consul"`             // server | client
	// Deploy and Ports override the cluster's values for this node.
	Deploy Deploy            `yaml:"deploy,omitempty"`
	Ports  Ports             `yaml:"ports,omitempty"`
	Env    map[string]string `yaml:"env,omitempty"`
}

// Resolved is a node with every default applied.
type Resolved struct {
	Node
	Ports   Ports
	Dir     string
	Project string
	Volume  string
	Sudo    bool
}

// Resolve applies the cluster's and the built-in defaults to node i.
func (c *Cluster) Resolve(i int) Resolved {
	n := c.Nodes[i]
	r := Resolved{Node: n, Ports: n.Ports.over(c.Ports.over(DefaultPorts))}
	pick := func(a, b, def string) string {
		if a != "" {
			return a
		}
		if b != "" {
			return b
		}
		return def
	}
	r.Dir = pick(n.Deploy.Dir, c.Deploy.Dir, "/opt/pgnode")
	r.Project = pick(n.Deploy.Project, c.Deploy.Project, "pgnode")
	r.Volume = pick(n.Deploy.Volume, c.Deploy.Volume, "pgnode-data")
	if r.SSHUser == "" {
		r.SSHUser = "root"
	}
	if r.SSHPort == 0 {
		r.SSHPort = 22
	}
	switch {
	case n.Deploy.Sudo != nil:
		r.Sudo = *n.Deploy.Sudo
	case c.Deploy.Sudo != nil:
		r.Sudo = *c.Deploy.Sudo
	default:
		r.Sudo = r.SSHUser != "root"
	}
	return r
}

// ApplyDefaults fills empty cluster-level fields with their defaults.
func (c *Cluster) ApplyDefaults() {
	if c.Version == 0 {
		c.Version = ClusterVersion
	}
	if c.Scope == "" {
		c.Scope = "patroni-cluster"
	}
	if c.Datacenter == "" {
		c.Datacenter = "dc1"
	}
	if c.Image.Name == "" {
		c.Image.Name = "pgnode"
	}
	if c.Image.Tag == "" {
		c.Image.Tag = "pg17"
	}
	if c.Image.Pull == "" {
		c.Image.Pull = "auto"
	}
	if c.Consul.Image == "" {
		c.Consul.Image = "hashicorp/consul:1.20"
	}
	if c.Consul.ClientAddr == "" {
		c.Consul.ClientAddr = "127.0.0.1"
	}
	if c.Postgres.BootstrapMethod == "" {
		c.Postgres.BootstrapMethod = "initdb"
	}
	if c.Backup != nil {
		if c.Backup.Schedule == "" {
			c.Backup.Schedule = "20 5 * * *"
		}
		if c.Backup.KeepFull == 0 {
			c.Backup.KeepFull = 7
		}
		if c.Backup.S3Region == "" {
			c.Backup.S3Region = "us-east-1"
		}
	}
}

// LoadCluster reads, defaults and validates a cluster file. Errors name the line (YAML
// syntax, unknown fields) or the field (validation).
func LoadCluster(path string) (*Cluster, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("while reading the cluster file: %w", err)
	}
	c, err := ParseCluster(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseCluster parses (strictly: unknown fields are errors), defaults and validates.
func ParseCluster(b []byte) (*Cluster, error) {
	var c Cluster
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("invalid cluster file: %w", err)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Marshal renders the cluster file (with a header explaining it holds secrets).
func (c *Cluster) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# pgdeploy cluster file (schema: docs/pgdeploy.md). It holds secrets: keep it mode 0600.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("while encoding the cluster file: %w", err)
	}
	_ = enc.Close()
	return buf.Bytes(), nil
}

// FieldError is a validation error naming the cluster-file field.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// cronParser accepts what the agent accepts for POSTGRES_BACKUP_SCHEDULE (backup.ValidateSchedule).
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

var (
	nameRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	projectRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	registryRe = regexp.MustCompile(`^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$`)
	imageRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]*$`)
	tagRe      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	hostRe     = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
	envNameRe  = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
)

func validHost(h string) bool {
	return net.ParseIP(h) != nil || hostRe.MatchString(h)
}

// Validate checks the whole cluster file. The first problem is returned, naming its field
// (nodes[i].field with the node's name).
func (c *Cluster) Validate() error {
	if c.Version != ClusterVersion {
		return fieldErr("version", "%d is not supported (expected %d)", c.Version, ClusterVersion)
	}
	if !nameRe.MatchString(c.Scope) {
		return fieldErr("scope", "%q is not a cluster name (letters, digits, '.', '_', '-')", c.Scope)
	}
	if err := c.validateImage(); err != nil {
		return err
	}
	if len(c.Nodes) == 0 {
		return fieldErr("nodes", "no nodes")
	}
	names := map[string]int{}
	targets := map[string]string{}
	hostPorts := map[string]string{}
	servers, dbNodes := 0, 0
	for i := range c.Nodes {
		n := c.Nodes[i]
		f := fmt.Sprintf("nodes[%d]", i)
		if !nameRe.MatchString(n.Name) {
			return fieldErr(f+".name", "%q is not a node name (letters, digits, '.', '_', '-'; at most 63)", n.Name)
		}
		f = fmt.Sprintf("nodes[%d] (%s)", i, n.Name)
		if j, dup := names[n.Name]; dup {
			return fieldErr(f+".name", "duplicate node name (also nodes[%d])", j)
		}
		names[n.Name] = i
		if n.SSHHost == "" || !validHost(n.SSHHost) {
			return fieldErr(f+".ssh_host", "%q is not an IP address or host name", n.SSHHost)
		}
		if n.LANHost == "" || !validHost(n.LANHost) {
			return fieldErr(f+".lan_host", "%q is not an IP address or host name", n.LANHost)
		}
		if n.SSHPort < 0 || n.SSHPort > 65535 {
			return fieldErr(f+".ssh_port", "%d is not a port", n.SSHPort)
		}
		switch n.Consul {
		case "server":
			servers++
		case "client":
		default:
			return fieldErr(f+".consul", "%q is not server or client", n.Consul)
		}
		if n.Patroni {
			dbNodes++
		}
		r := c.Resolve(i)
		if !projectRe.MatchString(r.Project) {
			return fieldErr(f+".deploy.project", "%q is not a compose project name (lower-case letters, digits, '_', '-')", r.Project)
		}
		if !strings.HasPrefix(r.Dir, "/") || strings.ContainsAny(r.Dir, "'\"\\\n $`") || r.Dir == "/" {
			return fieldErr(f+".deploy.dir", "%q is not an absolute directory without spaces or quotes", r.Dir)
		}
		if !nameRe.MatchString(r.Volume) {
			return fieldErr(f+".deploy.volume", "%q is not a volume name", r.Volume)
		}
		target := fmt.Sprintf("%s:%d %s", n.SSHHost, r.SSHPort, r.Dir)
		if j, dup := targets[target]; dup {
			return fieldErr(f+".deploy.dir", "%s is also the bundle directory of %s on the same host", r.Dir, j)
		}
		targets[target] = n.Name
		projTarget := fmt.Sprintf("%s:%d project %s", n.SSHHost, r.SSHPort, r.Project)
		if j, dup := targets[projTarget]; dup {
			return fieldErr(f+".deploy.project", "%s is also the compose project of %s on the same host", r.Project, j)
		}
		targets[projTarget] = n.Name
		for _, p := range r.Ports.list() {
			if p.port < 1 || p.port > 65535 {
				return fieldErr(f+".ports."+p.field, "%d is not a port (1-65535)", p.port)
			}
			if !n.Patroni && (p.field == "postgres" || p.field == "patroni_api" || p.field == "metrics" || p.field == "alive") {
				continue
			}
			key := fmt.Sprintf("%s:%d", n.LANHost, p.port)
			if other, dup := hostPorts[key]; dup {
				return fieldErr(f+".lan_host", "address %s is also used by %s (duplicate host, or give the nodes distinct ports)", key, other)
			}
			hostPorts[key] = n.Name + " " + p.field
		}
		for k := range n.Env {
			if !envNameRe.MatchString(k) {
				return fieldErr(f+".env", "%q is not an environment variable name", k)
			}
		}
	}
	if dbNodes == 0 {
		return fieldErr("nodes", "no node has patroni: true")
	}
	single := len(c.Nodes) == 1 && servers == 1
	if !single && (servers < 3 || servers%2 == 0) {
		return fieldErr("nodes[*].consul", "%d Consul servers: need an odd number >= 3 (or a single-node dev cluster with 1)", servers)
	}
	if err := c.validateSecrets(); err != nil {
		return err
	}
	for k := range c.Env {
		if !envNameRe.MatchString(k) {
			return fieldErr("env", "%q is not an environment variable name", k)
		}
	}
	switch c.Postgres.BootstrapMethod {
	case "initdb":
	case "walg":
		if c.Backup == nil {
			return fieldErr("postgres.bootstrap_method", "walg needs the backup section (S3 settings)")
		}
	default:
		return fieldErr("postgres.bootstrap_method", "%q is not initdb or walg", c.Postgres.BootstrapMethod)
	}
	if c.Consul.Image == "" {
		return fieldErr("consul.image", "empty")
	}
	if net.ParseIP(c.Consul.ClientAddr) == nil {
		return fieldErr("consul.client_addr", "%q is not an IP address", c.Consul.ClientAddr)
	}
	return c.validateBackup()
}

func (c *Cluster) validateImage() error {
	im := c.Image
	if !imageRe.MatchString(im.Name) {
		return fieldErr("image.name", "%q is not an image name", im.Name)
	}
	if !tagRe.MatchString(im.Tag) {
		return fieldErr("image.tag", "%q is not an image tag", im.Tag)
	}
	if im.Registry != "" && !registryRe.MatchString(im.Registry) {
		return fieldErr("image.registry", "%q is not host[:port][/path] (no scheme)", im.Registry)
	}
	if (im.Username != "") != (im.Token != "") {
		return fieldErr("image.token", "username and token must both be set or both be empty")
	}
	if im.Username != "" && im.Registry == "" {
		return fieldErr("image.registry", "registry credentials are set but no registry")
	}
	switch im.Pull {
	case "auto", "always", "never":
	default:
		return fieldErr("image.pull", "%q is not auto, always or never", im.Pull)
	}
	if im.Pull == "always" && im.Registry == "" {
		return fieldErr("image.pull", "always needs image.registry")
	}
	return nil
}

func (c *Cluster) validateSecrets() error {
	s := c.Secrets
	for _, x := range []struct{ f, v string }{
		{"secrets.superuser_password", s.SuperuserPassword},
		{"secrets.replicator_password", s.ReplicatorPassword},
		{"secrets.rewind_password", s.RewindPassword},
		{"secrets.restapi_password", s.RestAPIPassword},
		{"secrets.consul_encrypt", s.ConsulEncrypt},
	} {
		if x.v == "" {
			return fieldErr(x.f, "missing (pgdeploy init generates one)")
		}
		if strings.ContainsAny(x.v, "\n\r") {
			return fieldErr(x.f, "contains a line break")
		}
	}
	key, err := base64.StdEncoding.DecodeString(s.ConsulEncrypt)
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return fieldErr("secrets.consul_encrypt", "not the base64 of 32 random bytes (head -c32 /dev/urandom | base64)")
	}
	if c.Image.Token != "" && strings.ContainsAny(c.Image.Token, "\n\r") {
		return fieldErr("image.token", "contains a line break")
	}
	return nil
}

func (c *Cluster) validateBackup() error {
	b := c.Backup
	if b == nil {
		return nil
	}
	if b.S3BackupPath == "" {
		return fieldErr("backup.s3_backup_path", "missing: S3 settings must be complete or the backup section absent")
	}
	if u, err := url.Parse(b.S3BackupPath); err != nil || u.Scheme != "s3" || u.Host == "" {
		return fieldErr("backup.s3_backup_path", "%q is not s3://bucket/prefix/", b.S3BackupPath)
	}
	if b.S3AccessKeyRW == "" {
		return fieldErr("backup.s3_access_key_rw", "missing: S3 settings must be complete or the backup section absent")
	}
	if b.S3SecretKeyRW == "" {
		return fieldErr("backup.s3_secret_key_rw", "missing: S3 settings must be complete or the backup section absent")
	}
	if (b.S3AccessKeyRO == "") != (b.S3SecretKeyRO == "") {
		return fieldErr("backup.s3_secret_key_ro", "set both read-only keys or neither")
	}
	if b.S3Endpoint != "" {
		if u, err := url.Parse(b.S3Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fieldErr("backup.s3_endpoint", "%q is not an http(s):// URL", b.S3Endpoint)
		}
	}
	if _, err := cronParser.Parse(b.Schedule); err != nil {
		return fieldErr("backup.schedule", "%q: %v (expected 5 cron fields such as \"20 5 * * *\")", b.Schedule, err)
	}
	if b.KeepFull < 1 {
		return fieldErr("backup.keep_full", "%d would delete every backup (expected >= 1)", b.KeepFull)
	}
	return nil
}

// ConsulServers returns the indexes of the Consul server nodes.
func (c *Cluster) ConsulServers() []int {
	var out []int
	for i, n := range c.Nodes {
		if n.Consul == "server" {
			out = append(out, i)
		}
	}
	return out
}

// NodeIndex returns the index of the named node.
func (c *Cluster) NodeIndex(name string) (int, error) {
	for i, n := range c.Nodes {
		if n.Name == name {
			return i, nil
		}
	}
	names := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	sort.Strings(names)
	return -1, fmt.Errorf("no node %q in the cluster file (nodes: %s)", name, strings.Join(names, ", "))
}
