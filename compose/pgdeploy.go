// Package compose holds the compose templates of a pgnode cluster (embedded) and the Go
// code that renders and ships them (pgdeploy).
package compose

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

const usage = `pgdeploy renders and ships the per-node compose bundles of a pgnode cluster.

Usage:
  pgdeploy init    [-f cluster.yml] [--nodes 3] [--name-prefix pg] [--first-ip 10.0.0.11] [--ssh-user root] [--scope patroni-cluster] [--force]
  pgdeploy import  --inventory inventory.ini --vars group_vars/all.yml [-f cluster.yml] [--force] [--strict]
  pgdeploy render  [-f cluster.yml] [-o bundles] [--limit NODE]
  pgdeploy ship    [-f cluster.yml] [--limit NODE] [--dry-run] [--no-pull] [SSH flags]
  pgdeploy hosts   [-f cluster.yml] (--file /etc/hosts | --remote [--path /etc/hosts] [--limit NODE] [SSH flags])
  pgdeploy status  [-f cluster.yml] [--direct] [SSH flags]

SSH flags: --known-hosts FILE (default ~/.ssh/known_hosts), --identity KEYFILE (default: ssh-agent),
           --connect-timeout 10s
See docs/pgdeploy.md for the cluster file schema.
`

// Main runs pgdeploy with its arguments and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, args, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "pgdeploy:", err)
		return 1
	}
	return 0
}

type sshFlags struct {
	o SSHOptions
}

func (s *sshFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.o.KnownHosts, "known-hosts", "", "known_hosts file (default ~/.ssh/known_hosts)")
	fs.StringVar(&s.o.IdentityFile, "identity", "", "SSH private key file (default: keys from ssh-agent)")
	fs.DurationVar(&s.o.ConnectTimeout, "connect-timeout", 10*time.Second, "SSH connect and handshake timeout")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return errors.New("no command")
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("pgdeploy "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "cluster.yml", "cluster file")
	var ssh sshFlags
	switch cmd {
	case "init":
		force := fs.Bool("force", false, "overwrite an existing cluster file")
		opts := InitOptions{}
		fs.IntVar(&opts.Nodes, "nodes", 3, "number of DB nodes")
		fs.StringVar(&opts.Prefix, "name-prefix", "pg", "node name prefix")
		fs.StringVar(&opts.Subnet, "first-ip", "10.0.0.11", "LAN address of the first node (the others follow)")
		fs.StringVar(&opts.SSHUser, "ssh-user", "root", "SSH user")
		fs.StringVar(&opts.Scope, "scope", "patroni-cluster", "cluster name (PATRONI_SCOPE)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		c, err := NewCluster(opts)
		if err != nil {
			return err
		}
		if err := WriteClusterFile(*file, c, *force); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (mode 0600, %d nodes, fresh secrets); edit ssh_host/lan_host, then: pgdeploy render / ship\n", *file, len(c.Nodes))
		return nil
	case "import":
		inv := fs.String("inventory", "inventory.ini", "the playbook's inventory.ini")
		vars := fs.String("vars", "group_vars/all.yml", "the playbook's group_vars/all.yml")
		force := fs.Bool("force", false, "overwrite an existing cluster file")
		strict := fs.Bool("strict", false, "fail on keys that have no equivalent")
		if err := fs.Parse(args); err != nil {
			return err
		}
		invB, err := os.ReadFile(*inv)
		if err != nil {
			return fmt.Errorf("while reading the inventory: %w", err)
		}
		varsB, err := os.ReadFile(*vars)
		if err != nil {
			return fmt.Errorf("while reading group vars: %w", err)
		}
		res, err := ImportPlaybook(*inv, invB, *vars, varsB)
		if err != nil {
			return err
		}
		for _, u := range res.Unknown {
			fmt.Fprintln(stderr, "not imported:", u)
		}
		for _, n := range res.Notes {
			fmt.Fprintln(stderr, "note:", n)
		}
		for _, g := range res.Generated {
			fmt.Fprintln(stderr, "generated:", g)
		}
		if *strict && len(res.Unknown) > 0 {
			return fmt.Errorf("%d settings have no equivalent (see above); nothing written", len(res.Unknown))
		}
		if err := WriteClusterFile(*file, res.Cluster, *force); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (mode 0600, %d nodes)\n", *file, len(res.Cluster.Nodes))
		return nil
	case "render":
		out := fs.String("o", "bundles", "output directory (one sub-directory per node)")
		limit := fs.String("limit", "", "only this node")
		if err := fs.Parse(args); err != nil {
			return err
		}
		c, err := LoadCluster(*file)
		if err != nil {
			return err
		}
		bundles, err := c.RenderAll(*limit)
		if err != nil {
			return err
		}
		for _, b := range bundles {
			dir := filepath.Join(*out, b.Node)
			if err := WriteBundle(dir, b); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: %s\n", b.Node, dir)
		}
		return nil
	case "ship":
		ssh.register(fs)
		o := ShipOptions{Out: stdout}
		fs.StringVar(&o.Limit, "limit", "", "only this node (add or update one node)")
		fs.BoolVar(&o.DryRun, "dry-run", false, "show what would change per node; change nothing")
		fs.BoolVar(&o.NoPull, "no-pull", false, "never docker compose pull (images already on the nodes)")
		fs.DurationVar(&o.WaitTimeout, "wait-timeout", 10*time.Minute, "timeout of each wait (Consul quorum, healthy)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		o.SSH = ssh.o
		c, err := LoadCluster(*file)
		if err != nil {
			return err
		}
		return Ship(ctx, c, o)
	case "hosts":
		ssh.register(fs)
		local := fs.String("file", "", "update this local hosts file")
		remote := fs.Bool("remote", false, "update the hosts file on every node over SSH")
		path := fs.String("path", "/etc/hosts", "hosts file path on the nodes (with --remote)")
		limit := fs.String("limit", "", "only this node (with --remote)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		c, err := LoadCluster(*file)
		if err != nil {
			return err
		}
		switch {
		case *local != "" && !*remote:
			changed, err := c.UpdateHostsFile(*local)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: changed=%v\n", *local, changed)
			return nil
		case *remote && *local == "":
			return c.UpdateHostsRemote(ctx, *path, *limit, ssh.o, stdout)
		}
		return errors.New("hosts: give exactly one of --file PATH or --remote")
	case "status":
		ssh.register(fs)
		direct := fs.Bool("direct", false, "reach the Patroni REST APIs directly, not through SSH")
		if err := fs.Parse(args); err != nil {
			return err
		}
		c, err := LoadCluster(*file)
		if err != nil {
			return err
		}
		scope, rows, err := Status(ctx, c, StatusOptions{SSH: ssh.o, Direct: *direct})
		if err != nil {
			return err
		}
		PrintStatus(stdout, scope, rows)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}
