package compose

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"pgnode/internal/fileutil"
)

//go:embed templates/*.yml
var templates embed.FS

// File names inside a bundle.
const (
	ComposeFileName = "docker-compose.yml"
	EnvFileName     = "pgnode.env"
	ConsulFileName  = "consul/consul.json"
)

// ComposeFile is the part of the compose specification pgdeploy writes.
type ComposeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]*Service       `yaml:"services"`
	Volumes  map[string]*ComposeVolume `yaml:"volumes,omitempty"`
}

// Service is one compose service.
type Service struct {
	Image           string               `yaml:"image"`
	NetworkMode     string               `yaml:"network_mode,omitempty"`
	Restart         string               `yaml:"restart,omitempty"`
	Entrypoint      []string             `yaml:"entrypoint,omitempty"`
	Command         []string             `yaml:"command,omitempty"`
	EnvFile         []string             `yaml:"env_file,omitempty"`
	Volumes         []string             `yaml:"volumes,omitempty"`
	Healthcheck     *Healthcheck         `yaml:"healthcheck,omitempty"`
	StopGracePeriod string               `yaml:"stop_grace_period,omitempty"`
	ShmSize         string               `yaml:"shm_size,omitempty"`
	Labels          map[string]string    `yaml:"labels,omitempty"`
	DependsOn       map[string]DependsOn `yaml:"depends_on,omitempty"`
}

// DependsOn is the long form of a depends_on entry.
type DependsOn struct {
	Condition string `yaml:"condition"`
}

// Healthcheck is a compose healthcheck.
type Healthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval,omitempty"`
	Timeout     string   `yaml:"timeout,omitempty"`
	Retries     int      `yaml:"retries,omitempty"`
	StartPeriod string   `yaml:"start_period,omitempty"`
}

// ComposeVolume is a top-level volume.
type ComposeVolume struct {
	Name string `yaml:"name,omitempty"`
}

// Bundle is the rendered content of one node's bundle directory: relative path → bytes and
// mode. Rendering is deterministic.
type Bundle struct {
	Node  string
	Files map[string]BundleFile
}

// BundleFile is one file of a bundle.
type BundleFile struct {
	Data []byte
	Mode os.FileMode
}

// Paths returns the bundle's file names, sorted.
func (b *Bundle) Paths() []string {
	out := make([]string, 0, len(b.Files))
	for p := range b.Files {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Hash is a digest over the bundle's names, modes and contents.
func (b *Bundle) Hash() string {
	h := sha256.New()
	for _, p := range b.Paths() {
		f := b.Files[p]
		fmt.Fprintf(h, "%s %o %d\n", p, f.Mode, len(f.Data))
		h.Write(f.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func loadTemplate(name string) (*ComposeFile, error) {
	b, err := templates.ReadFile("templates/" + name)
	if err != nil {
		return nil, fmt.Errorf("while reading the embedded template %s: %w", name, err)
	}
	var cf ComposeFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil {
		return nil, fmt.Errorf("while parsing the embedded template %s: %w", name, err)
	}
	return &cf, nil
}

// consulCheckAddr is where the node's own processes reach its Consul agent.
func (c *Cluster) consulCheckAddr() string {
	if c.Consul.ClientAddr == "0.0.0.0" || c.Consul.ClientAddr == "::" {
		return "127.0.0.1"
	}
	return c.Consul.ClientAddr
}

// RenderNode renders node i's bundle. The cluster must be validated.
func (c *Cluster) RenderNode(i int) (*Bundle, error) {
	r := c.Resolve(i)
	tmpl := "consul-client.compose.yml"
	if r.Patroni {
		tmpl = "node.compose.yml"
	}
	cf, err := loadTemplate(tmpl)
	if err != nil {
		return nil, err
	}
	consulJSON, err := c.consulConfig(r)
	if err != nil {
		return nil, err
	}
	cf.Name = r.Project
	labels := map[string]string{"pgnode.cluster": c.Scope, "pgnode.node": r.Name}
	cs := cf.Services["consul"]
	cs.Image = c.Consul.Image
	cs.Healthcheck.Test = []string{"CMD", "consul", "members",
		fmt.Sprintf("-http-addr=http://%s:%d", c.consulCheckAddr(), r.Ports.ConsulHTTP)}
	sum := sha256.Sum256(consulJSON)
	cs.Labels = mergeLabels(labels, map[string]string{
		"pgnode.role": "consul-" + r.Consul,
		// The config file is bind-mounted: its digest in a label makes compose recreate
		// the agent when the file changes.
		"pgnode.config-sha256": hex.EncodeToString(sum[:]),
	})
	b := &Bundle{Node: r.Name, Files: map[string]BundleFile{
		ConsulFileName: {Data: consulJSON, Mode: 0o600},
	}}
	if r.Patroni {
		env, err := c.envFile(r)
		if err != nil {
			return nil, err
		}
		b.Files[EnvFileName] = BundleFile{Data: env, Mode: 0o600}
		ps := cf.Services["pgnode"]
		ps.Image = c.Image.Ref()
		ps.Labels = mergeLabels(labels, map[string]string{"pgnode.role": "postgres"})
		cf.Volumes["pgdata"].Name = r.Volume
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# Generated by pgdeploy for node %s of cluster %s. Do not edit: change the cluster file and run pgdeploy render/ship.\n", r.Name, c.Scope)
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(cf); err != nil {
		return nil, fmt.Errorf("while encoding the compose file of %s: %w", r.Name, err)
	}
	_ = enc.Close()
	b.Files[ComposeFileName] = BundleFile{Data: buf.Bytes(), Mode: 0o644}
	return b, nil
}

func mergeLabels(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// consulConfig renders consul.json (mode 0600: it holds the gossip key, which therefore
// never appears in argv).
func (c *Cluster) consulConfig(r Resolved) ([]byte, error) {
	var join []string
	servers := c.ConsulServers()
	for _, si := range servers {
		s := c.Resolve(si)
		join = append(join, joinAddr(s.LANHost, s.Ports.ConsulSerfLAN))
	}
	m := map[string]any{}
	for k, v := range c.Consul.Config {
		m[k] = v
	}
	ours := map[string]any{
		"datacenter":           c.Datacenter,
		"node_name":            r.Name,
		"data_dir":             "/consul/data",
		"server":               r.Consul == "server",
		"bind_addr":            bindAddr(r.LANHost),
		"advertise_addr":       r.LANHost,
		"client_addr":          c.Consul.ClientAddr,
		"encrypt":              c.Secrets.ConsulEncrypt,
		"retry_join":           join,
		"leave_on_terminate":   r.Consul == "client",
		"disable_update_check": true,
		"enable_script_checks": false,
		"ports": map[string]int{
			"http": r.Ports.ConsulHTTP, "dns": r.Ports.ConsulDNS, "serf_lan": r.Ports.ConsulSerfLAN,
			"serf_wan": r.Ports.ConsulSerfWAN, "server": r.Ports.ConsulServer, "grpc": -1,
		},
	}
	if r.Consul == "server" {
		ours["bootstrap_expect"] = len(servers)
	}
	for k, v := range ours {
		if _, clash := m[k]; clash {
			return nil, fieldErr("consul.config."+k, "is set by pgdeploy from the cluster file; remove it")
		}
		m[k] = v
	}
	// encoding/json sorts map keys: the output is deterministic.
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("while encoding consul.json for %s: %w", r.Name, err)
	}
	return append(b, '\n'), nil
}

// bindAddr is the address Consul binds to: the LAN IP, or all addresses when the LAN host
// is a DNS name (Consul's bind_addr must be an IP).
func bindAddr(lan string) string {
	if isIP(lan) {
		return lan
	}
	return "0.0.0.0"
}

func joinAddr(host string, port int) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}

var plainEnvValue = regexp.MustCompile(`^[A-Za-z0-9_./:@%+,=^*~-]*$`)

// envLine formats one KEY=VALUE line of a compose env file: plain values as is, others in
// single quotes (taken literally by compose: no interpolation, no escapes).
func envLine(field, key, val string) (string, error) {
	if plainEnvValue.MatchString(val) {
		return key + "=" + val + "\n", nil
	}
	if strings.ContainsAny(val, "'\n\r") {
		return "", fieldErr(field, "contains a single quote or a line break, which a compose env file cannot hold literally")
	}
	return key + "='" + val + "'\n", nil
}

type envVar struct{ field, key, val string }

// EnvVars returns node r's pgnode.env as (field, name, value), sorted by name.
func (c *Cluster) envVars(r Resolved) []envVar {
	vars := map[string]envVar{}
	set := func(field, key, val string) { vars[key] = envVar{field, key, val} }
	set("scope", "PATRONI_SCOPE", c.Scope)
	set("nodes.name", "PATRONI_NAME", r.Name)
	set("nodes.lan_host", "LAN_HOST", r.LANHost)
	set("ports.postgres", "POSTGRES_PORT", strconv.Itoa(r.Ports.Postgres))
	set("ports.patroni_api", "PATRONI_RESTAPI_PORT", strconv.Itoa(r.Ports.PatroniAPI))
	set("ports.metrics", "PGNODE_METRICS_PORT", strconv.Itoa(r.Ports.Metrics))
	set("ports.alive", "PGNODE_ALIVE_PORT", strconv.Itoa(r.Ports.Alive))
	set("secrets.restapi_password", "PATRONI_RESTAPI_PASSWORD", c.Secrets.RestAPIPassword)
	set("ports.consul_http", "PATRONI_CONSUL_HOST", fmt.Sprintf("%s:%d", c.consulCheckAddr(), r.Ports.ConsulHTTP))
	set("secrets.superuser_password", "POSTGRES_SUPERUSER_PASSWORD", c.Secrets.SuperuserPassword)
	set("secrets.replicator_password", "POSTGRES_REPLICATOR_PASSWORD", c.Secrets.ReplicatorPassword)
	set("secrets.rewind_password", "POSTGRES_REWIND_PASSWORD", c.Secrets.RewindPassword)
	set("postgres.bootstrap_method", "PATRONI_BOOTSTRAP_METHOD", c.Postgres.BootstrapMethod)
	if c.Postgres.RecoveryTargetTime != "" {
		set("postgres.recovery_target_time", "PATRONI_RECOVERY_TARGET_TIME", c.Postgres.RecoveryTargetTime)
	}
	if c.Postgres.RecoveryTargetTimeline != "" {
		set("postgres.recovery_target_timeline", "PATRONI_RECOVERY_TARGET_TIMELINE", c.Postgres.RecoveryTargetTimeline)
	}
	set("postgres.autoupgrade", "POSTGRES_DB_AUTOUPGRADE", strconv.FormatBool(c.Postgres.AutoUpgrade))
	set("postgres.synchronous_mode", "PATRONI_SYNCHRONOUS_MODE", strconv.FormatBool(c.Postgres.SynchronousMode))
	if len(c.Postgres.Parameters) > 0 {
		keys := make([]string, 0, len(c.Postgres.Parameters))
		for k := range c.Postgres.Parameters {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, k+"="+c.Postgres.Parameters[k])
		}
		set("postgres.parameters", "POSTGRES_PARAMETERS", strings.Join(parts, ";"))
	}
	if b := c.Backup; b != nil {
		set("backup.s3_backup_path", "S3_BACKUP_PATH", b.S3BackupPath)
		if b.S3Endpoint != "" {
			set("backup.s3_endpoint", "S3_ENDPOINT", b.S3Endpoint)
		}
		set("backup.s3_region", "S3_REGION", b.S3Region)
		set("backup.s3_path_style", "S3_PATH_STYLE", strconv.FormatBool(b.S3PathStyle))
		set("backup.s3_access_key_rw", "S3_ACCESS_KEY_RW", b.S3AccessKeyRW)
		set("backup.s3_secret_key_rw", "S3_SECRET_KEY_RW", b.S3SecretKeyRW)
		if b.S3AccessKeyRO != "" {
			set("backup.s3_access_key_ro", "S3_ACCESS_KEY_RO", b.S3AccessKeyRO)
			set("backup.s3_secret_key_ro", "S3_SECRET_KEY_RO", b.S3SecretKeyRO)
		}
		set("backup.schedule", "POSTGRES_BACKUP_SCHEDULE", b.Schedule)
		set("backup.keep_full", "POSTGRES_BACKUP_KEEP_FULL", strconv.Itoa(b.KeepFull))
	}
	for k, v := range c.Env {
		set("env."+k, k, v)
	}
	for k, v := range r.Env {
		set("nodes.env."+k, k, v)
	}
	out := make([]envVar, 0, len(vars))
	for _, v := range vars {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

func (c *Cluster) envFile(r Resolved) ([]byte, error) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# pgnode environment of node %s (generated by pgdeploy; holds secrets, mode 0600)\n", r.Name)
	for _, v := range c.envVars(r) {
		line, err := envLine(fmt.Sprintf("nodes[%s] %s (%s)", r.Name, v.field, v.key), v.key, v.val)
		if err != nil {
			return nil, err
		}
		buf.WriteString(line)
	}
	return buf.Bytes(), nil
}

// RenderAll renders every node's bundle (or only the named one).
func (c *Cluster) RenderAll(limit string) ([]*Bundle, error) {
	var out []*Bundle
	for i, n := range c.Nodes {
		if limit != "" && n.Name != limit {
			continue
		}
		b, err := c.RenderNode(i)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	if limit != "" && len(out) == 0 {
		_, err := c.NodeIndex(limit)
		return nil, err
	}
	return out, nil
}

// WriteBundle writes b into dir (created 0700), atomically per file; files not in the
// bundle are left alone.
func WriteBundle(dir string, b *Bundle) error {
	for _, p := range b.Paths() {
		f := b.Files[p]
		path := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("while creating %s: %w", filepath.Dir(path), err)
		}
		if err := fileutil.WriteAtomic(path, f.Data, f.Mode, -1, -1); err != nil {
			return err
		}
	}
	return nil
}

// secretEnvKeys are the env-file variables whose values are never shown.
var secretEnvKeys = map[string]bool{
	"PATRONI_RESTAPI_PASSWORD": true, "POSTGRES_SUPERUSER_PASSWORD": true,
	"POSTGRES_REPLICATOR_PASSWORD": true, "POSTGRES_REWIND_PASSWORD": true,
	"S3_ACCESS_KEY_RW": true, "S3_SECRET_KEY_RW": true, "S3_ACCESS_KEY_RO": true,
	"S3_SECRET_KEY_RO": true, "PATRONI_CONSUL_TOKEN": true,
}

func isSecretKey(k string) bool {
	return secretEnvKeys[k] || strings.Contains(k, "PASSWORD") || strings.Contains(k, "SECRET") || strings.Contains(k, "TOKEN")
}
