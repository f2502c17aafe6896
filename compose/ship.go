package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ShipOptions are pgdeploy ship's parameters.
type ShipOptions struct {
	SSH         SSHOptions
	Limit       string        // only this node
	DryRun      bool          // show per-node diffs, change nothing
	NoPull      bool          // never docker compose pull (images are local)
	WaitTimeout time.Duration // per wait step (quorum, healthy); default 10 min
	Out         io.Writer     // progress
}

type shipNode struct {
	idx     int
	r       Resolved
	bundle  *Bundle
	remote  *Remote
	changed bool
	current map[string][]byte
}

func (s *shipNode) logf(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "[%s] %s\n", s.r.Name, fmt.Sprintf(format, args...))
}

// Ship uploads each node's bundle and brings the cluster up in a safe order: Consul
// servers first (then waits for quorum), then the DB node that holds or should take the
// leader lock, then the other DB nodes one at a time (each waited for healthy), then the
// Consul-only hosts. When a leader is already running, replicas go first and the leader
// last, so an update causes at most one failover. Nothing is changed on any node unless
// every selected node is reachable with a trusted host key.
func Ship(ctx context.Context, c *Cluster, o ShipOptions) error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = 10 * time.Minute
	}
	var nodes []*shipNode
	for i, n := range c.Nodes {
		if o.Limit != "" && n.Name != o.Limit {
			continue
		}
		b, err := c.RenderNode(i)
		if err != nil {
			return err
		}
		nodes = append(nodes, &shipNode{idx: i, r: c.Resolve(i), bundle: b})
	}
	if len(nodes) == 0 {
		_, err := c.NodeIndex(o.Limit)
		return err
	}
	// Connect to every node first: one unreachable node leaves all of them untouched.
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.remote, errs[i] = Dial(ctx, n.r, o.SSH)
		}()
	}
	wg.Wait()
	defer func() {
		for _, n := range nodes {
			if n.remote != nil {
				_ = n.remote.Close()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("nothing was changed on any node: %w", err)
	}
	for _, n := range nodes {
		cur, err := readRemoteBundle(ctx, n.remote, n.r.Dir)
		if err != nil {
			return fmt.Errorf("nothing was changed on any node: %w", err)
		}
		n.current = cur
		n.changed = bundleDiffers(n.bundle, cur)
	}
	if o.DryRun {
		for _, n := range nodes {
			if !n.changed {
				n.logf(o.Out, "bundle %s: unchanged", n.r.Dir)
				continue
			}
			n.logf(o.Out, "bundle %s: would change", n.r.Dir)
			fmt.Fprint(o.Out, BundleDiff(n.r.Name, n.current, n.bundle))
		}
		fmt.Fprintln(o.Out, "dry run: nothing was changed")
		return nil
	}
	pull := !o.NoPull && (c.Image.Pull == "always" || (c.Image.Pull == "auto" && c.Image.Registry != ""))
	uploaded := map[string]bool{}
	prepare := func(n *shipNode) error {
		if uploaded[n.r.Name] {
			return nil
		}
		uploaded[n.r.Name] = true
		if n.changed {
			n.logf(o.Out, "upload %s", n.r.Dir)
			if err := uploadBundle(ctx, n.remote, n.r.Dir, n.bundle); err != nil {
				return err
			}
		} else {
			n.logf(o.Out, "bundle %s unchanged", n.r.Dir)
		}
		if pull {
			if c.Image.Username != "" {
				n.logf(o.Out, "docker login %s", c.Image.RegistryHost())
				cmd := fmt.Sprintf("docker login --username %s --password-stdin %s", shQuote(c.Image.Username), shQuote(c.Image.RegistryHost()))
				if _, err := n.remote.Run(ctx, cmd, strings.NewReader(c.Image.Token+"\n")); err != nil {
					return err
				}
			}
			n.logf(o.Out, "docker compose pull")
			if _, err := n.remote.Run(ctx, composeCmd(n.r, "pull -q"), nil); err != nil {
				return err
			}
		}
		return nil
	}
	up := func(n *shipNode, services ...string) error {
		want := services
		if len(want) == 0 {
			want = []string{"consul"}
			if n.r.Patroni {
				want = append(want, "pgnode")
			}
		}
		if !n.changed && !pull {
			if ok, _ := servicesRunning(ctx, n.remote, n.r, want); ok {
				n.logf(o.Out, "up to date (%s running)", strings.Join(want, ", "))
				return nil
			}
		}
		n.logf(o.Out, "docker compose up -d %s", strings.Join(services, " "))
		_, err := n.remote.Run(ctx, composeCmd(n.r, "up -d --remove-orphans "+strings.Join(services, " ")), nil)
		return err
	}

	// 1. Consul servers, then quorum.
	var servers, db, clients []*shipNode
	for _, n := range nodes {
		switch {
		case n.r.Consul == "server":
			servers = append(servers, n)
		}
		if n.r.Patroni {
			db = append(db, n)
		} else {
			clients = append(clients, n)
		}
	}
	for _, n := range servers {
		if err := prepare(n); err != nil {
			return err
		}
		if err := up(n, "consul"); err != nil {
			return err
		}
	}
	if len(servers) > 0 {
		expect := len(c.ConsulServers())
		if o.Limit != "" {
			expect = 0
		}
		n := servers[0]
		n.logf(o.Out, "waiting for Consul quorum (%d servers)", len(c.ConsulServers()))
		if err := waitQuorum(ctx, n.remote, n.r, expect, o.WaitTimeout); err != nil {
			return err
		}
		n.logf(o.Out, "Consul has a leader")
	}
	// 2. DB nodes in a safe order.
	leader := findLeader(ctx, db)
	db = orderDB(c, db, leader)
	if leader != "" {
		fmt.Fprintf(o.Out, "running leader: %s (replicas first, leader last)\n", leader)
	}
	for _, n := range db {
		if err := prepare(n); err != nil {
			return err
		}
		if err := up(n); err != nil {
			return err
		}
		n.logf(o.Out, "waiting for pgnode to be healthy")
		if err := waitHealthy(ctx, n.remote, n.r, "pgnode", o.WaitTimeout); err != nil {
			return err
		}
		n.logf(o.Out, "healthy")
	}
	// 3. Consul-only hosts.
	for _, n := range clients {
		if err := prepare(n); err != nil {
			return err
		}
		if err := up(n); err != nil {
			return err
		}
		if err := waitHealthy(ctx, n.remote, n.r, "consul", o.WaitTimeout); err != nil {
			return err
		}
		n.logf(o.Out, "healthy")
	}
	fmt.Fprintln(o.Out, "ship: done")
	return nil
}

// orderDB puts the running leader last (replicas first) or, on a fresh cluster, the first
// DB node of the cluster file first.
func orderDB(c *Cluster, db []*shipNode, leader string) []*shipNode {
	out := append([]*shipNode(nil), db...)
	sort.SliceStable(out, func(i, j int) bool {
		if leader != "" {
			return out[j].r.Name == leader && out[i].r.Name != leader
		}
		return out[i].idx < out[j].idx
	})
	return out
}

func findLeader(ctx context.Context, db []*shipNode) string {
	for _, n := range db {
		cl, err := fetchCluster(ctx, n.remote.DialTCP, apiAddr(n.r))
		if err != nil {
			continue
		}
		for _, m := range cl.Members {
			if m.Role == "leader" || m.Role == "master" || m.Role == "standby_leader" {
				return m.Name
			}
		}
	}
	return ""
}

func composeCmd(r Resolved, args string) string {
	return fmt.Sprintf("docker compose --project-directory %s -f %s/%s %s", shQuote(r.Dir), shQuote(r.Dir), ComposeFileName, args)
}

func readRemoteBundle(ctx context.Context, rm *Remote, dir string) (map[string][]byte, error) {
	out, err := rm.Run(ctx, fmt.Sprintf("if [ -d %s ]; then tar -c -f - -C %s .; fi", shQuote(dir), shQuote(dir)), nil)
	if err != nil {
		return nil, fmt.Errorf("while reading the current bundle: %w", err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if len(out) == 0 {
				break
			}
			return nil, fmt.Errorf("node %s: while reading the current bundle: %w", rm.Node.Name, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("node %s: while reading the current bundle: %w", rm.Node.Name, err)
		}
		files[strings.TrimPrefix(h.Name, "./")] = b
	}
	return files, nil
}

func bundleDiffers(b *Bundle, cur map[string][]byte) bool {
	if len(cur) != len(b.Files) {
		return true
	}
	for p, f := range b.Files {
		if old, ok := cur[p]; !ok || !bytes.Equal(old, f.Data) {
			return true
		}
	}
	return false
}

// uploadBundle writes the bundle into a temporary sibling directory, then renames it into
// place: compose never sees a half-written bundle.
func uploadBundle(ctx context.Context, rm *Remote, dir string, b *Bundle) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, p := range b.Paths() {
		if d, _, ok := strings.Cut(p, "/"); ok && !dirs[d] {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o700, Typeflag: tar.TypeDir}); err != nil {
				return err
			}
		}
		f := b.Files[p]
		if err := tw.WriteHeader(&tar.Header{Name: p, Mode: int64(f.Mode), Size: int64(len(f.Data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	var chmods []string
	for _, p := range b.Paths() {
		chmods = append(chmods, fmt.Sprintf("chmod %o \"$t\"/%s", b.Files[p].Mode, shQuote(p)))
	}
	q := shQuote(dir)
	script := strings.Join([]string{
		"set -e", "umask 077", "d=" + q, "t=\"$d.pgdeploy-new\"", "o=\"$d.pgdeploy-old\"",
		"mkdir -p \"$(dirname \"$d\")\"", "rm -rf \"$t\"", "mkdir -m 0700 \"$t\"",
		"tar -x -o -f - -C \"$t\"", strings.Join(chmods, "; "),
		"rm -rf \"$o\"", "if [ -e \"$d\" ]; then mv \"$d\" \"$o\"; fi", "mv \"$t\" \"$d\"", "rm -rf \"$o\"",
	}, "\n")
	if _, err := rm.Run(ctx, script, &buf); err != nil {
		return fmt.Errorf("while uploading the bundle: %w", err)
	}
	return nil
}

func containerState(ctx context.Context, rm *Remote, r Resolved, service string) (string, error) {
	st, _, err := containerStateRestarts(ctx, rm, r, service)
	return st, err
}

// containerStateRestarts returns "status health" (e.g. "running healthy", or "absent") and
// the container's restart count.
func containerStateRestarts(ctx context.Context, rm *Remote, r Resolved, service string) (string, int, error) {
	out, err := rm.Run(ctx, composeCmd(r, "ps -a -q "+service), nil)
	if err != nil {
		return "", 0, err
	}
	id := strings.TrimSpace(string(out))
	if id == "" {
		return "absent", 0, nil
	}
	out, err = rm.Run(ctx, "docker inspect -f '{{.RestartCount}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "+shQuote(id), nil)
	if err != nil {
		return "", 0, err
	}
	cnt, st, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	n, _ := strconv.Atoi(cnt)
	return strings.TrimSpace(st), n, nil
}

func servicesRunning(ctx context.Context, rm *Remote, r Resolved, services []string) (bool, error) {
	for _, s := range services {
		st, err := containerState(ctx, rm, r, s)
		if err != nil {
			return false, err
		}
		if st != "running healthy" && st != "running" {
			return false, nil
		}
	}
	return true, nil
}

func waitHealthy(ctx context.Context, rm *Remote, r Resolved, service string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := ""
	firstRestarts := -1
	for {
		st, restarts, err := containerStateRestarts(ctx, rm, r, service)
		if err == nil {
			last = st
			if st == "running healthy" || st == "running" {
				return nil
			}
			if firstRestarts < 0 {
				firstRestarts = restarts
			}
			// A container that keeps restarting will not get healthy by waiting longer.
			if restarts-firstRestarts >= 3 || st == "exited" || st == "dead" {
				logs, _ := rm.Run(ctx, composeCmd(r, "logs --no-color --tail 15 "+service), nil)
				return fmt.Errorf("node %s: %s is %s (restarted %d times); last log lines:\n%s", r.Name, service, st, restarts, strings.TrimSpace(string(logs)))
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: %s not healthy after %s (last state: %s); see: docker compose -f %s/%s logs %s", r.Name, service, timeout, last, r.Dir, ComposeFileName, service)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// waitQuorum waits until the Consul servers elected a leader and (expect > 0) that many
// voters are in the raft configuration.
func waitQuorum(ctx context.Context, rm *Remote, r Resolved, expect int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	httpAddr := fmt.Sprintf("http://127.0.0.1:%d", r.Ports.ConsulHTTP)
	for {
		out, err := rm.Run(ctx, composeCmd(r, "exec -T consul consul operator raft list-peers -http-addr="+httpAddr), nil)
		if err == nil {
			leader, voters := parseRaftPeers(string(out))
			last = fmt.Sprintf("leader=%v voters=%d", leader, voters)
			if leader && voters >= expect {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: no Consul quorum after %s (%s)", r.Name, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func parseRaftPeers(out string) (leader bool, voters int) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] == "Node" {
			continue
		}
		if f[3] == "leader" {
			leader = true
		}
		if f[4] == "true" {
			voters++
		}
	}
	return leader, voters
}
