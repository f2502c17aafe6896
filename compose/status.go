package compose

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// PatroniCluster is Patroni's GET /cluster answer (the fields the table shows).
type PatroniCluster struct {
	Members []PatroniMember `json:"members"`
}

// PatroniMember is one member of GET /cluster.
type PatroniMember struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Timeline int    `json:"timeline"`
	Lag      any    `json:"lag"` // bytes, or "unknown"
}

type dialFunc func(addr string) (net.Conn, error)

func apiAddr(r Resolved) string {
	return net.JoinHostPort(r.LANHost, strconv.Itoa(r.Ports.PatroniAPI))
}

func fetchJSON(ctx context.Context, dial dialFunc, addr, path string, v any) error {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
		if dial == nil {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", a)
		}
		return dial(a)
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s%s: %d: %w", addr, path, resp.StatusCode, err)
	}
	return nil
}

// lastBackup reads pgnode_backup_last_success_timestamp_seconds from the agent's metrics
// endpoint (PGNODE_METRICS_PORT, package backup's metrics): "n/a" when not served.
func lastBackup(ctx context.Context, dial dialFunc, addr string) string {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
		if dial == nil {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", a)
		}
		return dial(a)
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "n/a"
	}
	resp, err := cl.Do(req)
	if err != nil {
		return "n/a"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "n/a"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "pgnode_backup_last_success_timestamp_seconds" {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return "n/a"
			}
			if v == 0 {
				return "none"
			}
			return time.Unix(int64(v), 0).UTC().Format("2006-01-02 15:04Z")
		}
	}
	return "n/a"
}

func fetchCluster(ctx context.Context, dial dialFunc, addr string) (*PatroniCluster, error) {
	var c PatroniCluster
	if err := fetchJSON(ctx, dial, addr, "/cluster", &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// StatusOptions are pgdeploy status's parameters.
type StatusOptions struct {
	SSH    SSHOptions
	Direct bool // reach the REST APIs directly instead of through SSH tunnels
}

// NodeStatus is one row of the status table.
type NodeStatus struct {
	Member     string
	Host       string
	Role       string
	State      string
	Timeline   string
	LagMB      string
	LastBackup string
}

// Status asks the DB nodes' Patroni REST APIs (GET /cluster, through SSH tunnels unless
// Direct) for the member table. Configured nodes missing from Patroni's answer are listed
// as "not a member".
func Status(ctx context.Context, c *Cluster, o StatusOptions) (scopeLine string, rows []NodeStatus, err error) {
	var cl *PatroniCluster
	var errs []string
	backups := map[string]string{}
	for i, n := range c.Nodes {
		if !n.Patroni {
			continue
		}
		r := c.Resolve(i)
		var dial dialFunc
		if !o.Direct {
			rm, err := Dial(ctx, r, o.SSH)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			defer rm.Close()
			dial = rm.DialTCP
		}
		backups[n.Name] = lastBackup(ctx, dial, net.JoinHostPort(r.LANHost, strconv.Itoa(r.Ports.Metrics)))
		if cl != nil {
			continue
		}
		got, err := fetchCluster(ctx, dial, apiAddr(r))
		if err != nil {
			errs = append(errs, fmt.Sprintf("node %s: Patroni REST API %s: %v", n.Name, apiAddr(r), err))
			continue
		}
		cl = got
	}
	if cl == nil {
		return "", nil, fmt.Errorf("no DB node answered: %s", strings.Join(errs, "; "))
	}
	seen := map[string]bool{}
	for _, m := range cl.Members {
		seen[m.Name] = true
		row := NodeStatus{Member: m.Name, Host: m.Host, Role: titleRole(m.Role), State: m.State, LastBackup: "n/a"}
		if b, ok := backups[m.Name]; ok {
			row.LastBackup = b
		}
		if m.Timeline > 0 {
			row.Timeline = strconv.Itoa(m.Timeline)
		}
		switch v := m.Lag.(type) {
		case float64:
			row.LagMB = strconv.Itoa(int(v) / (1 << 20))
		case string:
			row.LagMB = v
		}
		rows = append(rows, row)
	}
	for _, n := range c.Nodes {
		if n.Patroni && !seen[n.Name] {
			rows = append(rows, NodeStatus{Member: n.Name, Host: n.LANHost, Role: "-", State: "not a member", LastBackup: "n/a"})
		}
	}
	return "Cluster: " + c.Scope, rows, nil
}

func titleRole(r string) string {
	switch r {
	case "leader", "master":
		return "Leader"
	case "replica":
		return "Replica"
	case "sync_standby":
		return "Sync Standby"
	case "standby_leader":
		return "Standby Leader"
	}
	return r
}

// PrintStatus writes the patronictl-list-like table.
func PrintStatus(w io.Writer, scopeLine string, rows []NodeStatus) {
	fmt.Fprintln(w, scopeLine)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Member\tHost\tRole\tState\tTL\tLag in MB\tLast backup")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Member, r.Host, r.Role, r.State, r.Timeline, r.LagMB, r.LastBackup)
	}
	_ = tw.Flush()
}
