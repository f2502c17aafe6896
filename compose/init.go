package compose

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"

	"pgnode/internal/fileutil"
)

const passwordAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NewPassword returns a 32-character password from crypto/rand (about 190 bits), drawn
// from letters and digits so it is safe in env files, URLs and shells.
func NewPassword() (string, error) {
	b := make([]byte, 32)
	max := big.NewInt(int64(len(passwordAlphabet)))
	for i := range b {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", fmt.Errorf("while generating a password: %w", err)
		}
		b[i] = passwordAlphabet[n.Int64()]
	}
	return string(b), nil
}

// NewGossipKey returns a Consul gossip encryption key: 32 random bytes, base64.
func NewGossipKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("while generating the Consul gossip key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// FillSecrets generates every empty secret.
func (c *Cluster) FillSecrets() error {
	for _, p := range []*string{&c.Secrets.SuperuserPassword, &c.Secrets.ReplicatorPassword,
		&c.Secrets.RewindPassword, &c.Secrets.RestAPIPassword} {
		if *p != "" {
			continue
		}
		pw, err := NewPassword()
		if err != nil {
			return err
		}
		*p = pw
	}
	if c.Secrets.ConsulEncrypt == "" {
		k, err := NewGossipKey()
		if err != nil {
			return err
		}
		c.Secrets.ConsulEncrypt = k
	}
	return nil
}

// InitOptions are pgdeploy init's parameters.
type InitOptions struct {
	Nodes   int    // number of DB nodes (each a Consul server when 3 or 5 of them, else the first 3)
	Prefix  string // node names: prefix1..prefixN
	Subnet  string // first LAN address; nodes get consecutive addresses
	SSHUser string
	Scope   string
}

// NewCluster returns a cluster with defaults and fresh secrets for opts.Nodes DB nodes.
func NewCluster(opts InitOptions) (*Cluster, error) {
	if opts.Nodes < 1 || opts.Nodes > 99 {
		return nil, fieldErr("--nodes", "%d is out of range (expected 1-99)", opts.Nodes)
	}
	if opts.Nodes == 2 {
		return nil, fieldErr("--nodes", "2 nodes cannot hold a Consul quorum (expected 1 for a dev cluster, or 3 or more)")
	}
	ip := net.ParseIP(opts.Subnet).To4()
	if ip == nil {
		return nil, fieldErr("--first-ip", "%q is not an IPv4 address", opts.Subnet)
	}
	c := &Cluster{Scope: opts.Scope}
	servers := 3
	if opts.Nodes == 1 {
		servers = 1
	} else if opts.Nodes >= 5 {
		servers = 5
	}
	for i := 0; i < opts.Nodes; i++ {
		addr := make(net.IP, 4)
		copy(addr, ip)
		addr[3] += byte(i)
		if int(ip[3])+i > 254 {
			return nil, fieldErr("--first-ip", "%d nodes do not fit after %s", opts.Nodes, opts.Subnet)
		}
		role := "client"
		if i < servers {
			role = "server"
		}
		c.Nodes = append(c.Nodes, Node{Name: fmt.Sprintf("%s%d", opts.Prefix, i+1),
			SSHHost: addr.String(), SSHUser: opts.SSHUser, LANHost: addr.String(),
			Patroni: true, Consul: role})
	}
	c.ApplyDefaults()
	if err := c.FillSecrets(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// WriteClusterFile writes c to path with mode 0600; an existing file is an error unless
// force is set.
func WriteClusterFile(path string, c *Cluster, force bool) error {
	if _, err := os.Stat(path); err == nil && !force {
		return fmt.Errorf("%s already exists; refusing to overwrite it (its secrets may be in use) without --force", path)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("while checking %s: %w", path, err)
	}
	b, err := c.Marshal()
	if err != nil {
		return err
	}
	return fileutil.WriteAtomic(path, b, 0o600, -1, -1)
}

func isIP(s string) bool { return net.ParseIP(s) != nil }
