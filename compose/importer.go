package compose

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ImportResult is a cluster converted from the playbook's files plus what the operator must
// know: keys that have no equivalent (reported, never dropped silently) and secrets that
// were generated because the playbook had none.
type ImportResult struct {
	Cluster   *Cluster
	Unknown   []string // "file:line: key ..." lines
	Generated []string // cluster-file fields that were generated
	Notes     []string
}

type invHost struct {
	name   string
	line   int
	vars   map[string]string
	groups map[string]bool
}

// ParseInventory reads an Ansible INI inventory with the playbook's groups (all, consul,
// consul_client, patroni) and host variables (ansible_host, lan_host, ansible_user,
// ansible_port). Errors name the file and line.
func ParseInventory(name string, data []byte, res *ImportResult) ([]*invHost, error) {
	hosts := map[string]*invHost{}
	var order []*invHost
	group := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	lineNo := 0
	seenInGroup := map[string]int{}
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") || len(line) < 3 {
				return nil, fmt.Errorf("%s:%d: malformed group header %q (expected [name])", name, lineNo, line)
			}
			group = strings.TrimSpace(line[1 : len(line)-1])
			switch {
			case group == "all" || group == "consul" || group == "consul_client" || group == "patroni":
			case strings.Contains(group, ":"):
				res.Unknown = append(res.Unknown, fmt.Sprintf("%s:%d: section [%s] is not supported (its lines are ignored; put host variables on the host lines)", name, lineNo, group))
			default:
				res.Unknown = append(res.Unknown, fmt.Sprintf("%s:%d: group [%s] has no meaning for pgdeploy (its hosts are ignored unless in another group)", name, lineNo, group))
			}
			continue
		}
		if group == "" {
			return nil, fmt.Errorf("%s:%d: host line before any [group] header", name, lineNo)
		}
		if strings.Contains(group, ":") {
			continue
		}
		fields := strings.Fields(line)
		hn := fields[0]
		if strings.Contains(hn, "=") {
			return nil, fmt.Errorf("%s:%d: expected a host name first, got %q", name, lineNo, hn)
		}
		key := group + "/" + hn
		if prev, dup := seenInGroup[key]; dup {
			return nil, fmt.Errorf("%s:%d: duplicate host %s in [%s] (first on line %d)", name, lineNo, hn, group, prev)
		}
		seenInGroup[key] = lineNo
		h := hosts[hn]
		if h == nil {
			h = &invHost{name: hn, line: lineNo, vars: map[string]string{}, groups: map[string]bool{}}
			hosts[hn] = h
			order = append(order, h)
		}
		h.groups[group] = true
		for _, kv := range fields[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("%s:%d: %q is not key=value", name, lineNo, kv)
			}
			v = strings.Trim(v, `"'`)
			switch k {
			case "ansible_host", "lan_host", "ansible_user", "ansible_port":
			default:
				res.Unknown = append(res.Unknown, fmt.Sprintf("%s:%d: host variable %s of %s has no equivalent (ignored)", name, lineNo, k, hn))
				continue
			}
			if old, set := h.vars[k]; set && old != v {
				return nil, fmt.Errorf("%s:%d: %s of %s is %q here but %q on line %d", name, lineNo, k, hn, v, old, h.line)
			}
			h.vars[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("while reading %s: %w", name, err)
	}
	return order, nil
}

// gvKey says where a group_vars key goes.
type gvKey func(c *Cluster, v string, line int) error

func setStr(p func(c *Cluster) *string) gvKey {
	return func(c *Cluster, v string, _ int) error { *p(c) = v; return nil }
}

func backupOf(c *Cluster) *Backup {
	if c.Backup == nil {
		c.Backup = &Backup{}
	}
	return c.Backup
}

func parseBool(field string) func(v string, line int) (bool, error) {
	return func(v string, line int) (bool, error) {
		b, err := strconv.ParseBool(strings.ToLower(v))
		if err != nil {
			return false, fmt.Errorf("%d: %s: %q is not true or false", line, field, v)
		}
		return b, nil
	}
}

// groupVarKeys maps the playbook's group_vars/all.yml keys onto the cluster file.
var groupVarKeys = map[string]gvKey{
	"postgres_superuser_password":  setStr(func(c *Cluster) *string { return &c.Secrets.SuperuserPassword }),
	"postgres_replicator_password": setStr(func(c *Cluster) *string { return &c.Secrets.ReplicatorPassword }),
	"postgres_rewind_password":     setStr(func(c *Cluster) *string { return &c.Secrets.RewindPassword }),
	"patroni_restapi_password":     setStr(func(c *Cluster) *string { return &c.Secrets.RestAPIPassword }),
	"consul_encrypt":               setStr(func(c *Cluster) *string { return &c.Secrets.ConsulEncrypt }),
	"patroni_scope":                setStr(func(c *Cluster) *string { return &c.Scope }),
	"patroni_cluster_name":         setStr(func(c *Cluster) *string { return &c.Scope }),
	"consul_datacenter":            setStr(func(c *Cluster) *string { return &c.Datacenter }),
	"postgres_volume_name":         setStr(func(c *Cluster) *string { return &c.Deploy.Volume }),
	"patroni_bootstrap_method":     setStr(func(c *Cluster) *string { return &c.Postgres.BootstrapMethod }),
	"patroni_recovery_target_time": setStr(func(c *Cluster) *string { return &c.Postgres.RecoveryTargetTime }),
	"patroni_recovery_target_timeline": setStr(func(c *Cluster) *string {
		return &c.Postgres.RecoveryTargetTimeline
	}),
	"postgres_db_autoupgrade": func(c *Cluster, v string, line int) error {
		b, err := parseBool("postgres_db_autoupgrade")(v, line)
		c.Postgres.AutoUpgrade = b
		return err
	},
	"postgres_major": func(c *Cluster, v string, line int) error {
		if _, err := strconv.Atoi(v); err != nil {
			return fmt.Errorf("%d: postgres_major: %q is not a number", line, v)
		}
		c.Image.Tag = "pg" + v
		return nil
	},
	"s3_access_key_ro": setStr(func(c *Cluster) *string { return &backupOf(c).S3AccessKeyRO }),
	"s3_secret_key_ro": setStr(func(c *Cluster) *string { return &backupOf(c).S3SecretKeyRO }),
	"s3_access_key_rw": setStr(func(c *Cluster) *string { return &backupOf(c).S3AccessKeyRW }),
	"s3_secret_key_rw": setStr(func(c *Cluster) *string { return &backupOf(c).S3SecretKeyRW }),
	"s3_access_key":    setStr(func(c *Cluster) *string { return &backupOf(c).S3AccessKeyRW }),
	"s3_secret_key":    setStr(func(c *Cluster) *string { return &backupOf(c).S3SecretKeyRW }),
	"s3_region":        setStr(func(c *Cluster) *string { return &backupOf(c).S3Region }),
	"s3_endpoint":      setStr(func(c *Cluster) *string { return &backupOf(c).S3Endpoint }),
	"s3_backup_path":   setStr(func(c *Cluster) *string { return &backupOf(c).S3BackupPath }),
	"s3_path_style": func(c *Cluster, v string, line int) error {
		b, err := parseBool("s3_path_style")(v, line)
		backupOf(c).S3PathStyle = b
		return err
	},
	"postgres_backup_keep_full": func(c *Cluster, v string, line int) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%d: postgres_backup_keep_full: %q is not an integer >= 1", line, v)
		}
		backupOf(c).KeepFull = n
		return nil
	},
	// cron fields are combined after all keys are read.
	"postgres_backup_cron_day":    nil,
	"postgres_backup_cron_hour":   nil,
	"postgres_backup_cron_minute": nil,
	"docker_registry":             setStr(func(c *Cluster) *string { return &c.Image.Registry }),
	"docker_registry_url":         setStr(func(c *Cluster) *string { return &c.Image.Registry }),
	"docker_registry_username":    setStr(func(c *Cluster) *string { return &c.Image.Username }),
	"docker_registry_password":    setStr(func(c *Cluster) *string { return &c.Image.Token }),
	"docker_registry_token":       setStr(func(c *Cluster) *string { return &c.Image.Token }),
	"docker_image":                nil, // registry/name[:tag], split after reading
	"docker_image_name":           setStr(func(c *Cluster) *string { return &c.Image.Name }),
	"docker_image_tag":            setStr(func(c *Cluster) *string { return &c.Image.Tag }),
}

// ImportPlaybook converts the playbook's inventory.ini and group_vars/all.yml into a
// cluster file. Secrets the playbook does not have (rewind and REST API passwords) are
// generated; the others must be present.
func ImportPlaybook(invName string, inv []byte, varsName string, vars []byte) (*ImportResult, error) {
	res := &ImportResult{Cluster: &Cluster{}}
	c := res.Cluster
	hosts, err := ParseInventory(invName, inv, res)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(vars, &doc); err != nil {
		return nil, fmt.Errorf("%s: invalid YAML: %w", varsName, err)
	}
	raw := map[string]string{}
	rawLine := map[string]int{}
	if len(doc.Content) > 0 {
		m := doc.Content[0]
		if m.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s:%d: expected a mapping of key: value", varsName, m.Line)
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			if _, dup := rawLine[k.Value]; dup {
				return nil, fmt.Errorf("%s:%d: duplicate key %s (first on line %d)", varsName, k.Line, k.Value, rawLine[k.Value])
			}
			rawLine[k.Value] = k.Line
			fn, known := groupVarKeys[k.Value]
			if !known {
				res.Unknown = append(res.Unknown, fmt.Sprintf("%s:%d: key %s has no equivalent in the cluster file (ignored)", varsName, k.Line, k.Value))
				continue
			}
			if v.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("%s:%d: %s: expected a single value", varsName, v.Line, k.Value)
			}
			if strings.Contains(v.Value, "{{") {
				return nil, fmt.Errorf("%s:%d: %s: Jinja templates are not supported; put the value itself", varsName, v.Line, k.Value)
			}
			raw[k.Value] = v.Value
			if fn == nil || v.Value == "" {
				continue
			}
			if err := fn(c, v.Value, v.Line); err != nil {
				return nil, fmt.Errorf("%s:%w", varsName, err)
			}
		}
	}
	if img := raw["docker_image"]; img != "" {
		ref, tag := img, ""
		if i := strings.LastIndex(img, ":"); i > strings.LastIndex(img, "/") {
			ref, tag = img[:i], img[i+1:]
		}
		if i := strings.LastIndex(ref, "/"); i >= 0 && strings.ContainsAny(ref[:i], ".:") && c.Image.Registry == "" {
			c.Image.Registry, ref = ref[:i], ref[i+1:]
		} else if i >= 0 && c.Image.Registry != "" {
			ref = ref[i+1:]
		}
		c.Image.Name = ref
		if tag != "" {
			c.Image.Tag = tag
		}
	}
	day, hour, minute := raw["postgres_backup_cron_day"], raw["postgres_backup_cron_hour"], raw["postgres_backup_cron_minute"]
	if day != "" || hour != "" || minute != "" {
		def := func(v, d string) string {
			if v == "" {
				return d
			}
			return v
		}
		// Ansible's cron "day" is the day of the month.
		backupOf(c).Schedule = fmt.Sprintf("%s %s %s * *", def(minute, "20"), def(hour, "5"), def(day, "*"))
	}
	if b := c.Backup; b != nil && b.S3BackupPath == "" && b.S3AccessKeyRW == "" && b.S3SecretKeyRW == "" {
		// only defaults like the schedule: no S3, no backups
		res.Notes = append(res.Notes, "no S3 settings: backups are off")
		c.Backup = nil
	}
	for _, req := range []struct{ key, field string }{
		{"postgres_superuser_password", c.Secrets.SuperuserPassword},
		{"postgres_replicator_password", c.Secrets.ReplicatorPassword},
		{"consul_encrypt", c.Secrets.ConsulEncrypt},
	} {
		if req.field == "" {
			if l, ok := rawLine[req.key]; ok {
				return nil, fmt.Errorf("%s:%d: %s is empty (the running cluster's value is required)", varsName, l, req.key)
			}
			return nil, fmt.Errorf("%s: %s is missing (the running cluster's value is required)", varsName, req.key)
		}
	}
	if c.Secrets.RewindPassword == "" {
		res.Generated = append(res.Generated, "secrets.rewind_password")
	}
	if c.Secrets.RestAPIPassword == "" {
		res.Generated = append(res.Generated, "secrets.restapi_password")
	}
	if err := c.FillSecrets(); err != nil {
		return nil, err
	}
	for _, h := range hosts {
		n := Node{Name: h.name, SSHHost: h.vars["ansible_host"], LANHost: h.vars["lan_host"], SSHUser: h.vars["ansible_user"]}
		if n.SSHHost == "" {
			n.SSHHost = h.name
		}
		if n.LANHost == "" {
			n.LANHost = n.SSHHost
			res.Notes = append(res.Notes, fmt.Sprintf("%s:%d: %s has no lan_host; using %s", invName, h.line, h.name, n.SSHHost))
		}
		if p := h.vars["ansible_port"]; p != "" {
			port, err := strconv.Atoi(p)
			if err != nil || port < 1 || port > 65535 {
				return nil, fmt.Errorf("%s:%d: ansible_port of %s: %q is not a port", invName, h.line, h.name, p)
			}
			n.SSHPort = port
		}
		n.Patroni = h.groups["patroni"]
		switch {
		case h.groups["consul"] && h.groups["consul_client"]:
			return nil, fmt.Errorf("%s:%d: %s is in both [consul] and [consul_client]", invName, h.line, h.name)
		case h.groups["consul"]:
			n.Consul = "server"
		case h.groups["consul_client"]:
			n.Consul = "client"
		case n.Patroni:
			n.Consul = "client"
			res.Notes = append(res.Notes, fmt.Sprintf("%s:%d: %s is in [patroni] but in neither [consul] nor [consul_client]; it gets a Consul client", invName, h.line, h.name))
		default:
			res.Unknown = append(res.Unknown, fmt.Sprintf("%s:%d: host %s is in no group pgdeploy deploys to (consul, consul_client, patroni); skipped", invName, h.line, h.name))
			continue
		}
		c.Nodes = append(c.Nodes, n)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("the imported cluster is not valid: %w", err)
	}
	sort.Strings(res.Generated)
	return res, nil
}
