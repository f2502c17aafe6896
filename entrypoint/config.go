package entrypoint

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
	"gopkg.in/yaml.v3"

	"pgnode/backup"
	"pgnode/internal/envspec"
	"pgnode/upgrade"
)

// Config is the node's whole configuration, loaded once from the environment by Load,
// validated, and then never changed. The backup and upgrade packages own their parts.
type Config struct {
	Scope       string `envconfig:"PATRONI_SCOPE" default:"patroni-cluster" desc:"cluster name (Patroni scope); also the Consul service name: master.<scope>.service.consul"`
	Name        string `envconfig:"PATRONI_NAME" desc:"this member's name, unique in the cluster (default: the host name)"`
	LANHost     string `envconfig:"LAN_HOST" desc:"address (IP or DNS name) other nodes and clients reach this node at; required"`
	ListenHost  string `envconfig:"PGNODE_LISTEN_HOST" default:"0.0.0.0" desc:"address PostgreSQL and Patroni's REST API listen on"`
	PGPort      int    `envconfig:"POSTGRES_PORT" default:"5432" desc:"PostgreSQL port"`
	RestAPIPort int    `envconfig:"PATRONI_RESTAPI_PORT" default:"8008" desc:"Patroni REST API port"`

	RestAPIUser     string         `envconfig:"PATRONI_RESTAPI_USERNAME" default:"patroni" desc:"user for the REST API's unsafe endpoints (switchover, restart, reinit, config)"`
	RestAPIPassword envspec.Secret `envconfig:"PATRONI_RESTAPI_PASSWORD" desc:"password for the REST API's unsafe endpoints; required"`

	ConsulHost   string         `envconfig:"PATRONI_CONSUL_HOST" default:"127.0.0.1:8500" desc:"host:port of the node's Consul agent (Patroni's DCS)"`
	ConsulScheme string         `envconfig:"PATRONI_CONSUL_SCHEME" default:"http" desc:"http or https"`
	ConsulToken  envspec.Secret `envconfig:"PATRONI_CONSUL_TOKEN" desc:"Consul ACL token (optional)"`

	SuperPassword      envspec.Secret `envconfig:"POSTGRES_SUPERUSER_PASSWORD" desc:"password of the superuser postgres; required"`
	ReplicatorPassword envspec.Secret `envconfig:"POSTGRES_REPLICATOR_PASSWORD" desc:"password of the replication user replicator; required"`
	RewindPassword     envspec.Secret `envconfig:"POSTGRES_REWIND_PASSWORD" desc:"password of the pg_rewind user rewind_user; required"`

	Parameters     string `envconfig:"POSTGRES_PARAMETERS" desc:"PostgreSQL parameters, key=value separated by ';' or newlines (e.g. \"max_connections=200;shared_buffers=1GB\"); applied cluster-wide through Patroni's DCS config on every start"`
	ParametersFile string `envconfig:"POSTGRES_PARAMETERS_FILE" desc:"YAML file with a map of PostgreSQL parameters; POSTGRES_PARAMETERS wins on conflicts"`
	HBA            string `envconfig:"POSTGRES_HBA" desc:"extra pg_hba.conf lines (newline or ';' separated), inserted before the default rules; 'trust' is refused for network lines"`

	BootstrapMethod  string        `envconfig:"PATRONI_BOOTSTRAP_METHOD" default:"initdb" desc:"how a new cluster starts: initdb (empty) or walg (restore from the S3 backup; see PATRONI_RECOVERY_TARGET_*)"`
	SynchronousMode  bool          `envconfig:"PATRONI_SYNCHRONOUS_MODE" default:"false" desc:"true: commits wait for one synchronous replica, so failover never loses an acknowledged commit"`
	TTL              int           `envconfig:"PATRONI_TTL" default:"20" desc:"leader key TTL in seconds (Patroni ttl); must be >= 20 and >= loop_wait + 2*retry_timeout"`
	LoopWait         int           `envconfig:"PATRONI_LOOP_WAIT" default:"5" desc:"seconds between Patroni's HA loops"`
	RetryTimeout     int           `envconfig:"PATRONI_RETRY_TIMEOUT" default:"5" desc:"seconds Patroni retries DCS and PostgreSQL operations before demoting"`
	MaxLagOnFailover int64         `envconfig:"PATRONI_MAXIMUM_LAG_ON_FAILOVER" default:"1048576" desc:"bytes a replica may lag and still be promoted"`
	FastFailover     bool          `envconfig:"PGNODE_FAST_FAILOVER" default:"true" desc:"bind the leader's Consul session to a check pgnode fails (after fencing PostgreSQL) the moment Patroni dies: failover in ~1 s instead of waiting for the TTL; false falls back to TTL-only failover"`
	AlivePort        int           `envconfig:"PGNODE_ALIVE_PORT" default:"8010" desc:"TCP port pgnode holds open while it supervises a live Patroni; the node's Consul agent checks it every second (fast failover). Closed only after PostgreSQL is fenced"`
	IsolationFence   time.Duration `envconfig:"PGNODE_ISOLATION_FENCE" default:"1s" desc:"while this node leads, stop PostgreSQL when neither Consul's servers nor any other member has answered for this long (a partitioned leader must stop before the others can promote); 0 disables"`
	Watchdog         string        `envconfig:"PGNODE_WATCHDOG" default:"automatic" desc:"Patroni watchdog mode: off, automatic (use /dev/watchdog if present) or required"`

	RemoveStaleDCS bool          `envconfig:"PGNODE_REMOVE_STALE_DCS" default:"false" desc:"true lets pgnode remove the Consul state of a cluster none of whose members is alive when this node's data directory is empty (the playbook's 'waiting for leader to bootstrap' problem)"`
	StaleDCSGrace  time.Duration `envconfig:"PGNODE_STALE_DCS_GRACE" default:"60s" desc:"how long no member may be alive before cluster state counts as stale"`

	DataDir     string        `envconfig:"PGDATA" default:"/var/lib/postgresql/data" desc:"PostgreSQL data directory (inside the data volume)"`
	ConfigDir   string        `envconfig:"PGNODE_CONFIG_DIR" default:"/etc/pgnode" desc:"where patroni.yml and the WAL-G configs are rendered (mode 0600)"`
	SocketDir   string        `envconfig:"PGNODE_SOCKET_DIR" default:"/var/run/postgresql" desc:"PostgreSQL unix socket directory"`
	StatusFile  string        `envconfig:"PGNODE_STATUS_FILE" default:"/run/pgnode/status.json" desc:"agent status (e.g. upgrading) read by pgnode health"`
	PGMajor     int           `envconfig:"PG_MAJOR" default:"17" desc:"the image's PostgreSQL major (set by the image)"`
	BinDir      string        `envconfig:"POSTGRES_BIN_DIR" desc:"PostgreSQL binaries (default /usr/lib/postgresql/$PG_MAJOR/bin)"`
	RunAs       string        `envconfig:"PGNODE_RUN_AS" default:"postgres" desc:"system user Patroni and PostgreSQL run as"`
	PatroniBin  string        `envconfig:"PATRONI_BINARY" default:"patroni" desc:"Patroni program"`
	StopTimeout time.Duration `envconfig:"PGNODE_STOP_TIMEOUT" default:"90s" desc:"how long a stop waits for Patroni to shut PostgreSQL down cleanly before killing it"`
	MetricsPort int           `envconfig:"PGNODE_METRICS_PORT" default:"9187" desc:"port of pgnode's Prometheus metrics endpoint (/metrics); 0 disables it"`
	LogFormat   string        `envconfig:"LOG_FORMAT" default:"text" desc:"text or json"`
	LogLevel    string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`

	UpgradeConfig
	BackupConfig

	// Derived, filled by Load.
	parsedParams map[string]string `ignored:"true"`
	hbaLines     []string          `ignored:"true"`
}

// UpgradeConfig and BackupConfig name the embedded configs of the upgrade and backup
// packages (their variables carry no prefix).
type (
	UpgradeConfig = upgrade.Config
	BackupConfig  = backup.Config
)

// Superuser, replication and rewind role names Patroni creates and uses.
const (
	SuperUser       = "postgres"
	ReplicationUser = "replicator"
	RewindUser      = "rewind_user"
)

// Families of variable names that are ours; an unknown variable with one of these
// prefixes gets a "did you mean" warning.
var varFamilies = []string{"PATRONI_", "POSTGRES_", "PGNODE_", "S3_", "WALG_", "LAN_", "PG_"}

// alsoKnown are variables of the image or of tools we start, not config of ours.
var alsoKnown = []string{"PATRONICTL_CONFIG_FILE", "PG_MAJOR", "POSTGRES_BIN_DIR"}

// Load reads the environment into a Config, fills NAME_FILE secrets, validates, and
// returns the config with warnings for unknown look-alike variables. It touches nothing
// on disk except reading _FILE secrets and the parameters file.
func Load(environ []string) (*Config, []string, error) {
	cfg := &Config{}
	if err := envconfig.Process("", cfg); err != nil {
		return nil, nil, convertEnvconfigErr(err)
	}
	if err := envspec.LoadSecretFiles(cfg, lookupIn(environ)); err != nil {
		return nil, nil, err
	}
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, nil, envspec.Errorf("PATRONI_NAME", "a member name", "not set and the host name is unknown: %v", err)
		}
		cfg.Name = h
	}
	if cfg.BinDir == "" {
		cfg.BinDir = fmt.Sprintf("/usr/lib/postgresql/%d/bin", cfg.PGMajor)
	}
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	var warnings []string
	sugg := envspec.Suggest(environ, envspec.Vars(cfg), varFamilies, alsoKnown...)
	names := make([]string, 0, len(sugg))
	for n := range sugg {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		warnings = append(warnings, fmt.Sprintf("unknown variable %s ignored; did you mean %s?", n, sugg[n]))
	}
	if ip := net.ParseIP(cfg.LANHost); ip != nil && ip.IsLoopback() {
		warnings = append(warnings, fmt.Sprintf("LAN_HOST %s is a loopback address: only members on this host can reach this node", cfg.LANHost))
	}
	return cfg, warnings, nil
}

func lookupIn(environ []string) func(string) (string, bool) {
	m := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func convertEnvconfigErr(err error) error {
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		expected := map[string]string{
			"int": "an integer", "int64": "an integer", "bool": "true or false",
			"Duration": "a duration such as 30s or 2m",
		}[pe.TypeName]
		if expected == "" {
			expected = "a " + pe.TypeName
		}
		return envspec.Errorf(pe.KeyName, expected, "%q is not valid", pe.Value)
	}
	return fmt.Errorf("while reading the environment: %w", err)
}

var (
	nameRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
	paramKeyRe = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)
)

// managedParams are PostgreSQL parameters pgnode or Patroni set; users set the variable
// named instead.
var managedParams = map[string]string{
	"port": "POSTGRES_PORT", "listen_addresses": "PGNODE_LISTEN_HOST", "data_directory": "PGDATA",
	"hba_file": "POSTGRES_HBA", "ident_file": "", "config_file": "", "unix_socket_directories": "PGNODE_SOCKET_DIR",
	"archive_command": "S3_BACKUP_PATH", "restore_command": "S3_BACKUP_PATH", "primary_conninfo": "",
	"primary_slot_name": "", "recovery_target_time": "PATRONI_RECOVERY_TARGET_TIME",
	"synchronous_standby_names": "PATRONI_SYNCHRONOUS_MODE", "cluster_name": "PATRONI_SCOPE",
}

func (c *Config) validate() error {
	if !nameRe.MatchString(c.Scope) {
		return envspec.Errorf("PATRONI_SCOPE", "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", "%q is not a valid cluster name", c.Scope)
	}
	if !nameRe.MatchString(c.Name) {
		return envspec.Errorf("PATRONI_NAME", "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", "%q is not a valid member name", c.Name)
	}
	if c.LANHost == "" {
		return envspec.Errorf("LAN_HOST", "the IP address or DNS name other nodes reach this node at", "is required")
	}
	if err := checkHost("LAN_HOST", c.LANHost, false); err != nil {
		return err
	}
	if err := checkHost("PGNODE_LISTEN_HOST", c.ListenHost, true); err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"POSTGRES_PORT", c.PGPort}, {"PATRONI_RESTAPI_PORT", c.RestAPIPort}} {
		if p.v < 1 || p.v > 65535 {
			return envspec.Errorf(p.name, "a TCP port from 1 to 65535", "%d is out of range", p.v)
		}
	}
	if c.PGPort == c.RestAPIPort {
		return envspec.Errorf("PATRONI_RESTAPI_PORT", "a port different from POSTGRES_PORT", "%d is also POSTGRES_PORT", c.RestAPIPort)
	}
	if c.MetricsPort < 0 || c.MetricsPort > 65535 {
		return envspec.Errorf("PGNODE_METRICS_PORT", "a TCP port from 1 to 65535, or 0 to disable", "%d is out of range", c.MetricsPort)
	}
	if c.MetricsPort != 0 && (c.MetricsPort == c.PGPort || c.MetricsPort == c.RestAPIPort) {
		return envspec.Errorf("PGNODE_METRICS_PORT", "a port different from POSTGRES_PORT and PATRONI_RESTAPI_PORT", "%d is already used", c.MetricsPort)
	}
	if !nameRe.MatchString(c.RestAPIUser) {
		return envspec.Errorf("PATRONI_RESTAPI_USERNAME", "1-63 letters, digits, '.', '_' or '-'", "%q is not a valid user name", c.RestAPIUser)
	}
	for _, s := range []struct {
		name string
		v    envspec.Secret
	}{{"PATRONI_RESTAPI_PASSWORD", c.RestAPIPassword}, {"POSTGRES_SUPERUSER_PASSWORD", c.SuperPassword},
		{"POSTGRES_REPLICATOR_PASSWORD", c.ReplicatorPassword}, {"POSTGRES_REWIND_PASSWORD", c.RewindPassword}} {
		if !s.v.IsSet() {
			return envspec.Errorf(s.name, "a password, or "+s.name+"_FILE naming a file that holds it", "is required")
		}
		if len(s.v.Value()) < 8 {
			return envspec.Errorf(s.name, "at least 8 characters", "the password is too short")
		}
		if strings.ContainsAny(s.v.Value(), "\n\r\x00") {
			return envspec.Errorf(s.name, "a single line", "the password contains a line break or NUL")
		}
	}
	host, port, err := net.SplitHostPort(c.ConsulHost)
	if err != nil || host == "" {
		return envspec.Errorf("PATRONI_CONSUL_HOST", "host:port of the Consul agent, e.g. 127.0.0.1:8500", "%q is not host:port", c.ConsulHost)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return envspec.Errorf("PATRONI_CONSUL_HOST", "host:port of the Consul agent, e.g. 127.0.0.1:8500", "port %q is not a TCP port", port)
	}
	if c.ConsulScheme != "http" && c.ConsulScheme != "https" {
		return envspec.Errorf("PATRONI_CONSUL_SCHEME", "http or https", "%q is not supported", c.ConsulScheme)
	}
	switch c.BootstrapMethod {
	case "initdb":
	case "walg":
		if !c.BackupConfig.Enabled() {
			return envspec.Errorf("PATRONI_BOOTSTRAP_METHOD", "initdb, or walg together with S3_BACKUP_PATH and S3 keys", "walg needs S3: S3_BACKUP_PATH is empty")
		}
	default:
		return envspec.Errorf("PATRONI_BOOTSTRAP_METHOD", "initdb or walg", "%q is not a bootstrap method", c.BootstrapMethod)
	}
	if c.TTL < 20 {
		return envspec.Errorf("PATRONI_TTL", "an integer >= 20 (Consul's minimum session TTL is 10 s and Patroni sends ttl/2)", "%d is too small", c.TTL)
	}
	if c.LoopWait < 1 {
		return envspec.Errorf("PATRONI_LOOP_WAIT", "an integer >= 1", "%d is too small", c.LoopWait)
	}
	if c.RetryTimeout < 1 {
		return envspec.Errorf("PATRONI_RETRY_TIMEOUT", "an integer >= 1", "%d is too small", c.RetryTimeout)
	}
	if c.LoopWait+2*c.RetryTimeout > c.TTL {
		return envspec.Errorf("PATRONI_TTL", "ttl >= loop_wait + 2*retry_timeout", "ttl %d < loop_wait %d + 2*retry_timeout %d: the leader could lose its key before noticing", c.TTL, c.LoopWait, c.RetryTimeout)
	}
	if c.MaxLagOnFailover < 0 {
		return envspec.Errorf("PATRONI_MAXIMUM_LAG_ON_FAILOVER", "a number of bytes >= 0", "%d is negative", c.MaxLagOnFailover)
	}
	if c.AlivePort < 1 || c.AlivePort > 65535 {
		return envspec.Errorf("PGNODE_ALIVE_PORT", "a TCP port from 1 to 65535", "%d is out of range", c.AlivePort)
	}
	if c.AlivePort == c.PGPort || c.AlivePort == c.RestAPIPort || c.AlivePort == c.MetricsPort {
		return envspec.Errorf("PGNODE_ALIVE_PORT", "a port different from POSTGRES_PORT, PATRONI_RESTAPI_PORT and PGNODE_METRICS_PORT", "%d is already used", c.AlivePort)
	}
	if c.IsolationFence != 0 && (c.IsolationFence < 500*time.Millisecond || c.IsolationFence > 10*time.Second) {
		return envspec.Errorf("PGNODE_ISOLATION_FENCE", "0 (off) or a duration from 500ms to 10s", "%s is out of range", c.IsolationFence)
	}
	switch c.Watchdog {
	case "off", "automatic", "required":
	default:
		return envspec.Errorf("PGNODE_WATCHDOG", "off, automatic or required", "%q is not a watchdog mode", c.Watchdog)
	}
	if c.StaleDCSGrace < 0 {
		return envspec.Errorf("PGNODE_STALE_DCS_GRACE", "a duration >= 0 such as 60s", "%s is negative", c.StaleDCSGrace)
	}
	for _, d := range []struct{ name, v string }{{"PGDATA", c.DataDir}, {"PGNODE_CONFIG_DIR", c.ConfigDir},
		{"PGNODE_SOCKET_DIR", c.SocketDir}, {"PGNODE_STATUS_FILE", c.StatusFile}, {"POSTGRES_BIN_DIR", c.BinDir}} {
		if !filepath.IsAbs(d.v) || filepath.Clean(d.v) == "/" {
			return envspec.Errorf(d.name, "an absolute path below /", "%q is not usable", d.v)
		}
	}
	if filepath.Clean(c.ConfigDir) == filepath.Clean(c.DataDir) || strings.HasPrefix(filepath.Clean(c.ConfigDir)+"/", filepath.Clean(c.DataDir)+"/") {
		return envspec.Errorf("PGNODE_CONFIG_DIR", "a directory outside PGDATA", "%q is inside PGDATA", c.ConfigDir)
	}
	if c.PGMajor < 10 || c.PGMajor > 99 {
		return envspec.Errorf("PG_MAJOR", "a PostgreSQL major version such as 17", "%d is not one", c.PGMajor)
	}
	if st, err := os.Stat(filepath.Join(c.BinDir, "postgres")); err != nil || st.IsDir() {
		return envspec.Errorf("POSTGRES_BIN_DIR", "a directory holding the PostgreSQL binaries", "%q has no postgres program", c.BinDir)
	}
	if c.StopTimeout < 5*time.Second || c.StopTimeout > time.Hour {
		return envspec.Errorf("PGNODE_STOP_TIMEOUT", "a duration from 5s to 1h", "%s is out of range", c.StopTimeout)
	}
	switch strings.ToLower(c.LogFormat) {
	case "text", "json":
	default:
		return envspec.Errorf("LOG_FORMAT", "text or json", "%q is not a log format", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		return envspec.Errorf("LOG_LEVEL", "debug, info, warn or error", "%q is not a log level", c.LogLevel)
	}
	params, err := c.loadParameters()
	if err != nil {
		return err
	}
	c.parsedParams = params
	lines, err := parseHBA(c.HBA)
	if err != nil {
		return err
	}
	c.hbaLines = lines
	if err := c.UpgradeConfig.Validate(); err != nil {
		return err
	}
	if err := c.BackupConfig.Validate(); err != nil {
		return err
	}
	return nil
}

func checkHost(variable, v string, allowAny bool) error {
	if ip := net.ParseIP(v); ip != nil {
		if ip.IsUnspecified() && !allowAny {
			return envspec.Errorf(variable, "a routable IP address or DNS name", "%q is the unspecified address", v)
		}
		return nil
	}
	if !hostnameRe.MatchString(v) {
		return envspec.Errorf(variable, "an IP address or DNS name without port or scheme, e.g. 10.1.0.13 or pg1.example.com", "%q is not one", v)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == '\n' }) {
		if p := strings.TrimSpace(part); p != "" && !strings.HasPrefix(p, "#") {
			out = append(out, p)
		}
	}
	return out
}

// loadParameters merges POSTGRES_PARAMETERS_FILE and POSTGRES_PARAMETERS.
func (c *Config) loadParameters() (map[string]string, error) {
	params := map[string]string{}
	if c.ParametersFile != "" {
		b, err := os.ReadFile(c.ParametersFile)
		if err != nil {
			return nil, envspec.Errorf("POSTGRES_PARAMETERS_FILE", "a readable YAML file with a map of parameters", "cannot read %q: %v", c.ParametersFile, errors.Unwrap(err))
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, envspec.Errorf("POSTGRES_PARAMETERS_FILE", "a YAML map such as 'max_connections: 200'", "%q is not a YAML map: %v", c.ParametersFile, firstLine(err.Error()))
		}
		for k, v := range m {
			if v == nil || reflect.TypeOf(v).Kind() == reflect.Map || reflect.TypeOf(v).Kind() == reflect.Slice {
				return nil, envspec.Errorf("POSTGRES_PARAMETERS_FILE", "scalar values (numbers, strings, booleans)", "parameter %q has no scalar value", k)
			}
			params[k] = fmt.Sprint(v)
		}
	}
	for _, item := range splitList(c.Parameters) {
		k, v, ok := strings.Cut(item, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, envspec.Errorf("POSTGRES_PARAMETERS", "key=value pairs separated by ';' or newlines", "%q has no '='", item)
		}
		params[k] = strings.Trim(v, `'"`)
	}
	for k := range params {
		if !paramKeyRe.MatchString(k) {
			return nil, envspec.Errorf("POSTGRES_PARAMETERS", "lower-case PostgreSQL parameter names", "%q is not a parameter name", k)
		}
		if instead, ok := managedParams[k]; ok {
			if instead == "" {
				return nil, envspec.Errorf("POSTGRES_PARAMETERS", "parameters pgnode does not manage", "%q is managed by Patroni and cannot be set", k)
			}
			return nil, envspec.Errorf("POSTGRES_PARAMETERS", "parameters pgnode does not manage", "%q is managed by pgnode; set %s instead", k, instead)
		}
	}
	return params, nil
}

var hbaTypes = map[string]bool{"local": true, "host": true, "hostssl": true, "hostnossl": true, "hostgssenc": true, "hostnogssenc": true}

// parseHBA checks POSTGRES_HBA lines: a known connection type, enough fields, and no
// 'trust' on network lines.
func parseHBA(s string) ([]string, error) {
	var out []string
	for _, line := range splitList(s) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !hbaTypes[f[0]] {
			return nil, envspec.Errorf("POSTGRES_HBA", "pg_hba lines such as 'host all app 10.0.0.0/8 scram-sha-256'", "%q: unknown connection type %q", line, f[0])
		}
		min := 5
		if f[0] == "local" {
			min = 4
		}
		if len(f) < min {
			return nil, envspec.Errorf("POSTGRES_HBA", "pg_hba lines such as 'host all app 10.0.0.0/8 scram-sha-256'", "%q has too few fields", line)
		}
		method := f[min-1]
		if f[0] != "local" {
			if _, _, err := net.ParseCIDR(f[3]); err != nil && net.ParseIP(f[3]) == nil && !hostnameRe.MatchString(strings.TrimPrefix(f[3], ".")) && f[3] != "all" && f[3] != "samehost" && f[3] != "samenet" {
				return nil, envspec.Errorf("POSTGRES_HBA", "an address in CIDR form such as 10.0.0.0/8", "%q: %q is not an address", line, f[3])
			}
			if method == "trust" {
				return nil, envspec.Errorf("POSTGRES_HBA", "scram-sha-256, cert or another authenticating method on network lines", "%q allows 'trust' over the network", line)
			}
		}
		out = append(out, strings.Join(f, " "))
	}
	return out, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
