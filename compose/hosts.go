package compose

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"pgnode/internal/fileutil"
)

// Markers of the /etc/hosts block pgdeploy manages.
const (
	hostsBegin = "# BEGIN pgdeploy cluster %s (managed by pgdeploy hosts; do not edit)"
	hostsEnd   = "# END pgdeploy cluster %s"
)

// HostsBlock returns the managed block's lines: "lan_host name" for every node whose
// lan_host is an IP address.
func (c *Cluster) HostsBlock() []string {
	lines := []string{fmt.Sprintf(hostsBegin, c.Scope)}
	for _, n := range c.Nodes {
		if isIP(n.LANHost) {
			lines = append(lines, n.LANHost+"\t"+n.Name)
		}
	}
	return append(lines, fmt.Sprintf(hostsEnd, c.Scope))
}

// UpdateHosts returns content with the cluster's managed block replaced (or appended);
// every other line is kept byte for byte. Applying it twice gives the same result.
func (c *Cluster) UpdateHosts(content []byte) ([]byte, error) {
	begin, end := fmt.Sprintf(hostsBegin, c.Scope), fmt.Sprintf(hostsEnd, c.Scope)
	lines := splitLines(content)
	var out []string
	inBlock, found := false, false
	for i, l := range lines {
		switch {
		case l == begin:
			if inBlock || found {
				return nil, fmt.Errorf("line %d: a second pgdeploy block for cluster %s; remove one by hand", i+1, c.Scope)
			}
			inBlock, found = true, true
			out = append(out, c.HostsBlock()...)
		case l == end:
			if !inBlock {
				return nil, fmt.Errorf("line %d: end marker without a begin marker for cluster %s; fix it by hand", i+1, c.Scope)
			}
			inBlock = false
		case inBlock:
		default:
			out = append(out, l)
		}
	}
	if inBlock {
		return nil, fmt.Errorf("the pgdeploy block for cluster %s has no end marker; fix it by hand", c.Scope)
	}
	if !found {
		out = append(out, c.HostsBlock()...)
	}
	return []byte(strings.Join(out, "\n") + "\n"), nil
}

// UpdateHostsFile applies UpdateHosts to a local file (atomically, keeping its mode).
func (c *Cluster) UpdateHostsFile(path string) (changed bool, err error) {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("while reading %s: %w", path, err)
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	nb, err := c.UpdateHosts(old)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if string(nb) == string(old) {
		return false, nil
	}
	return true, fileutil.WriteAtomic(path, nb, mode, -1, -1)
}

// UpdateHostsRemote applies UpdateHosts to path on every node (or the --limit one) over SSH.
func (c *Cluster) UpdateHostsRemote(ctx context.Context, path, limit string, o SSHOptions, out io.Writer) error {
	for i, n := range c.Nodes {
		if limit != "" && n.Name != limit {
			continue
		}
		rm, err := Dial(ctx, c.Resolve(i), o)
		if err != nil {
			return err
		}
		err = func() error {
			defer rm.Close()
			old, err := rm.Run(ctx, "cat "+shQuote(path), nil)
			if err != nil {
				return err
			}
			nb, err := c.UpdateHosts(old)
			if err != nil {
				return fmt.Errorf("node %s: %s: %w", n.Name, path, err)
			}
			if string(nb) == string(old) {
				fmt.Fprintf(out, "[%s] %s unchanged\n", n.Name, path)
				return nil
			}
			q := shQuote(path)
			script := fmt.Sprintf("set -e; t=%s.pgdeploy-tmp; cat > \"$t\"; chmod --reference=%s \"$t\" 2>/dev/null || chmod 644 \"$t\"; mv -f \"$t\" %s", q, q, q)
			if _, err := rm.Run(ctx, script, strings.NewReader(string(nb))); err != nil {
				return err
			}
			fmt.Fprintf(out, "[%s] %s updated\n", n.Name, path)
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
