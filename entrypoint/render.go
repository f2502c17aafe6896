package entrypoint

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"

	"gopkg.in/yaml.v3"

	"pgnode/backup"
	"pgnode/internal/envspec"
)

// Rendered files, by base name in the config directory.
const (
	PatroniFile  = "patroni.yml"
	WalgFile     = "walg.json"
	WalgROFile   = "walg-ro.json"
	PgpassFile   = "pgpass"
	aliveCheckNS = "pgnode-alive-"
)

// PatroniConfig is patroni.yml.
type PatroniConfig struct {
	Scope     string            `yaml:"scope"`
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Log       map[string]any    `yaml:"log,omitempty"`
	RestAPI   RestAPIConfig     `yaml:"restapi"`
	Consul    ConsulConfig      `yaml:"consul"`
	Bootstrap BootstrapConfig   `yaml:"bootstrap"`
	Postgres  PostgresConfig    `yaml:"postgresql"`
	Watchdog  map[string]any    `yaml:"watchdog"`
	Tags      map[string]bool   `yaml:"tags"`
	Ctl       map[string]string `yaml:"ctl,omitempty"`
}

// RestAPIConfig is patroni.yml's restapi section.
type RestAPIConfig struct {
	Listen         string     `yaml:"listen"`
	ConnectAddress string     `yaml:"connect_address"`
	Auth           Credential `yaml:"authentication"`
}

// Credential is a username/password pair; the password is a plain string so that the
// real file carries it, and render's redacted output replaces it.
type Credential struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// ConsulConfig is patroni.yml's consul section.
type ConsulConfig struct {
	Host                 string   `yaml:"host"`
	Scheme               string   `yaml:"scheme"`
	Token                string   `yaml:"token,omitempty"`
	RegisterService      bool     `yaml:"register_service"`
	ServiceCheckInterval string   `yaml:"service_check_interval"`
	Checks               []string `yaml:"checks,omitempty"`
}

// BootstrapConfig is patroni.yml's bootstrap section.
type BootstrapConfig struct {
	DCS     DCSConfig                 `yaml:"dcs"`
	Method  string                    `yaml:"method,omitempty"`
	Methods map[string]map[string]any `yaml:",inline"`
	Initdb  []any                     `yaml:"initdb"`
	PgHBA   []string                  `yaml:"pg_hba"`
}

// DCSConfig is the dynamic configuration: bootstrap.dcs at bootstrap, and what pgnode
// PATCHes into the DCS on every start so a re-deploy applies changed settings.
type DCSConfig struct {
	TTL                  int         `yaml:"ttl" json:"ttl"`
	LoopWait             int         `yaml:"loop_wait" json:"loop_wait"`
	RetryTimeout         int         `yaml:"retry_timeout" json:"retry_timeout"`
	MaximumLagOnFailover int64       `yaml:"maximum_lag_on_failover" json:"maximum_lag_on_failover"`
	FailsafeMode         bool        `yaml:"failsafe_mode" json:"failsafe_mode"`
	SynchronousMode      bool        `yaml:"synchronous_mode" json:"synchronous_mode"`
	Postgres             DCSPostgres `yaml:"postgresql" json:"postgresql"`
}

// DCSPostgres is the postgresql part of the dynamic configuration.
type DCSPostgres struct {
	UsePgRewind                      bool           `yaml:"use_pg_rewind" json:"use_pg_rewind"`
	UseSlots                         bool           `yaml:"use_slots" json:"use_slots"`
	RemoveDataDirOnRewindFailure     bool           `yaml:"remove_data_directory_on_rewind_failure" json:"remove_data_directory_on_rewind_failure"`
	RemoveDataDirOnDivergedTimelines bool           `yaml:"remove_data_directory_on_diverged_timelines" json:"remove_data_directory_on_diverged_timelines"`
	Parameters                       map[string]any `yaml:"parameters" json:"parameters"`
}

// PostgresConfig is patroni.yml's postgresql section.
type PostgresConfig struct {
	Listen               string                    `yaml:"listen"`
	ConnectAddress       string                    `yaml:"connect_address"`
	DataDir              string                    `yaml:"data_dir"`
	BinDir               string                    `yaml:"bin_dir"`
	Pgpass               string                    `yaml:"pgpass"`
	UseUnixSocket        bool                      `yaml:"use_unix_socket"`
	Authentication       map[string]Credential     `yaml:"authentication"`
	Parameters           map[string]any            `yaml:"parameters"`
	RecoveryConf         map[string]any            `yaml:"recovery_conf,omitempty"`
	PgHBA                []string                  `yaml:"pg_hba"`
	CreateReplicaMethods []string                  `yaml:"create_replica_methods"`
	Methods              map[string]map[string]any `yaml:",inline"`
	Basebackup           []any                     `yaml:"basebackup"`
}

// RenderOptions choose real or redacted output.
type RenderOptions struct {
	Redacted bool
	// WalgMissing renders as if S3 were not configured (no archiving, restore command or
	// WAL-G replica method): an archive_command that cannot run would fill pg_wal.
	WalgMissing bool
}

// WalgMissing reports whether S3 is configured but the WAL-G program is not installed.
func (c *Config) WalgMissing() bool {
	if !c.BackupConfig.Enabled() {
		return false
	}
	_, err := exec.LookPath(c.WalgBinary)
	return err != nil
}

// Rendered holds every file the agent writes into the config directory.
type Rendered struct {
	Patroni     *PatroniConfig
	PatroniYAML []byte
	WalgRW      []byte // nil when backups are off
	WalgRO      []byte // nil when backups are off or read-only keys are absent
}

func (c *Config) secret(s envspec.Secret, o RenderOptions) string {
	if o.Redacted && s.IsSet() {
		return envspec.Redacted
	}
	return s.Value()
}

// AliveCheckID is the Consul check pgnode keeps passing while it supervises a live
// Patroni (fast failover).
func (c *Config) AliveCheckID() string { return aliveCheckNS + c.Scope + "-" + c.Name }

// BackupNode describes this node to the backup package.
func (c *Config) BackupNode() backup.Node {
	return backup.Node{
		Scope: c.Scope, Name: c.Name, Major: c.PGMajor, DataDir: c.DataDir, PGBinDir: c.BinDir,
		PGHost: c.SocketDir, PGPort: c.PGPort, SuperUser: SuperUser, SuperPassword: c.SuperPassword,
		PatroniURL:  "http://" + net.JoinHostPort(localHost(c.ListenHost), strconv.Itoa(c.RestAPIPort)),
		PatroniUser: c.RestAPIUser, PatroniPassword: c.RestAPIPassword,
		ConsulAddr: c.ConsulHost, ConsulScheme: c.ConsulScheme, ConsulToken: c.ConsulToken,
		WalgConfigRW: filepath.Join(c.ConfigDir, WalgFile), WalgConfigRO: filepath.Join(c.ConfigDir, WalgROFile),
	}
}

// localHost turns a listen address into one a local client can connect to.
func localHost(listen string) string {
	if ip := net.ParseIP(listen); ip != nil && ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return listen
}

// DesiredDCS is the dynamic configuration pgnode wants in the DCS.
func (c *Config) DesiredDCS() DCSConfig {
	params := map[string]any{
		"wal_level":                 "replica",
		"hot_standby":               "on",
		"wal_log_hints":             "on",
		"max_wal_senders":           10,
		"max_replication_slots":     10,
		"wal_keep_size":             "256MB",
		"max_connections":           100,
		"password_encryption":       "scram-sha-256",
		"hot_standby_feedback":      "on",
		"max_locks_per_transaction": 128,
	}
	if lib := c.sharedPreloadLibraries(); lib != "" {
		params["shared_preload_libraries"] = lib
	}
	for k, v := range c.parsedParams {
		params[k] = v
	}
	return DCSConfig{
		TTL: c.TTL, LoopWait: c.LoopWait, RetryTimeout: c.RetryTimeout,
		MaximumLagOnFailover: c.MaxLagOnFailover, FailsafeMode: true, SynchronousMode: c.SynchronousMode,
		Postgres: DCSPostgres{
			UsePgRewind: true, UseSlots: true,
			RemoveDataDirOnRewindFailure: true, RemoveDataDirOnDivergedTimelines: true,
			Parameters: params,
		},
	}
}

// sharedPreloadLibraries preloads TimescaleDB when the image ships it.
func (c *Config) sharedPreloadLibraries() string {
	lib := filepath.Join(filepath.Dir(c.BinDir), "lib", "timescaledb.so")
	if _, err := os.Stat(lib); err == nil {
		return "timescaledb"
	}
	return ""
}

// hba returns pg_hba.conf: local superuser by peer, user lines, then password rules.
func (c *Config) hba() []string {
	lines := []string{
		"local   all             " + SuperUser + "          peer",
		"local   all             all               scram-sha-256",
		"local   replication     all               scram-sha-256",
	}
	lines = append(lines, c.hbaLines...)
	lines = append(lines,
		"host    replication     "+ReplicationUser+"  0.0.0.0/0   scram-sha-256",
		"host    replication     "+ReplicationUser+"  ::/0        scram-sha-256",
		"host    all             all          0.0.0.0/0   scram-sha-256",
		"host    all             all          ::/0        scram-sha-256",
	)
	return lines
}

// Render builds every config file. It reads nothing but the config.
func (c *Config) Render(o RenderOptions) (*Rendered, error) {
	node := c.BackupNode()
	bcfg := c.BackupConfig
	if o.WalgMissing {
		bcfg.S3BackupPath = ""
	}
	bs := bcfg.Patroni(node, c.BootstrapMethod == "walg" && !o.WalgMissing)
	dcs := c.DesiredDCS()
	for k, v := range bs.Parameters {
		if _, userSet := c.parsedParams[k]; !userSet || k == "archive_mode" && !bcfg.Enabled() {
			dcs.Postgres.Parameters[k] = v
		}
	}
	localParams := map[string]any{
		"unix_socket_directories": c.SocketDir,
		"logging_collector":       "off",
		"log_destination":         "stderr",
		"log_line_prefix":         "%m [%p] %q%u@%d ",
	}
	p := &PatroniConfig{
		Scope: c.Scope, Name: c.Name, Namespace: "/service/",
		Log: map[string]any{"level": "INFO", "format": "%(levelname)s: %(message)s"},
		RestAPI: RestAPIConfig{
			Listen:         net.JoinHostPort(c.ListenHost, strconv.Itoa(c.RestAPIPort)),
			ConnectAddress: net.JoinHostPort(c.LANHost, strconv.Itoa(c.RestAPIPort)),
			Auth:           Credential{Username: c.RestAPIUser, Password: c.secret(c.RestAPIPassword, o)},
		},
		Consul: ConsulConfig{
			Host: c.ConsulHost, Scheme: c.ConsulScheme, Token: c.secret(c.ConsulToken, o),
			RegisterService: true, ServiceCheckInterval: "5s",
		},
		Bootstrap: BootstrapConfig{
			DCS: dcs,
			Initdb: []any{map[string]string{"encoding": "UTF8"}, map[string]string{"locale": "C.UTF-8"}, "data-checksums",
				map[string]string{"auth-local": "peer"}, map[string]string{"auth-host": "scram-sha-256"}},
			PgHBA: c.hba(),
		},
		Postgres: PostgresConfig{
			Listen:         net.JoinHostPort(c.ListenHost, strconv.Itoa(c.PGPort)),
			ConnectAddress: net.JoinHostPort(c.LANHost, strconv.Itoa(c.PGPort)),
			DataDir:        c.DataDir, BinDir: c.BinDir,
			Pgpass:        filepath.Join(c.ConfigDir, PgpassFile),
			UseUnixSocket: true,
			Authentication: map[string]Credential{
				"superuser":   {Username: SuperUser, Password: c.secret(c.SuperPassword, o)},
				"replication": {Username: ReplicationUser, Password: c.secret(c.ReplicatorPassword, o)},
				"rewind":      {Username: RewindUser, Password: c.secret(c.RewindPassword, o)},
			},
			Parameters:           localParams,
			PgHBA:                c.hba(),
			CreateReplicaMethods: append(append([]string{}, bs.ReplicaMethods...), "basebackup"),
			Basebackup:           []any{map[string]string{"checkpoint": "fast"}},
		},
		Watchdog: map[string]any{"mode": c.Watchdog, "safety_margin": 5},
		Tags:     map[string]bool{"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": false},
	}
	if c.FastFailover {
		p.Consul.Checks = []string{"serfHealth", c.AliveCheckID()}
	}
	if bs.RestoreCommand != "" {
		p.Postgres.RecoveryConf = map[string]any{"restore_command": bs.RestoreCommand}
	}
	if len(bs.ReplicaMethodConfs) > 0 {
		p.Postgres.Methods = bs.ReplicaMethodConfs
	}
	if bs.BootstrapMethod != "" {
		p.Bootstrap.Method = bs.BootstrapMethod
		p.Bootstrap.Methods = map[string]map[string]any{bs.BootstrapMethod: bs.BootstrapConf}
	}
	y, err := marshalYAML(p)
	if err != nil {
		return nil, fmt.Errorf("while rendering patroni.yml: %w", err)
	}
	r := &Rendered{Patroni: p, PatroniYAML: y}
	if c.BackupConfig.Enabled() {
		wp := backup.WalgParams{Prefix: c.BackupConfig.Prefix(c.Scope, c.PGMajor), PGHost: c.SocketDir, PGPort: c.PGPort, PGUser: SuperUser, Redacted: o.Redacted}
		if r.WalgRW, err = c.BackupConfig.WalgConfig(backup.ReadWrite, wp); err != nil {
			return nil, err
		}
		if c.BackupConfig.S3AccessKeyRO.IsSet() {
			if r.WalgRO, err = c.BackupConfig.WalgConfig(backup.ReadOnly, wp); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

func marshalYAML(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Files returns the rendered files by base name (only those that exist), sorted.
func (r *Rendered) Files() []NamedFile {
	files := []NamedFile{{PatroniFile, r.PatroniYAML}}
	if r.WalgRW != nil {
		files = append(files, NamedFile{WalgFile, r.WalgRW})
	}
	if r.WalgRO != nil {
		files = append(files, NamedFile{WalgROFile, r.WalgRO})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	return files
}

// NamedFile is a rendered file's base name and content.
type NamedFile struct {
	Name string
	Data []byte
}
