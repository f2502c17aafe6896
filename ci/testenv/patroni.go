package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Member is one row of Patroni's GET /cluster.
type Member struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Timeline int    `json:"timeline"`
	Host     string `json:"host"`
	Lag      any    `json:"lag"`
}

// ClusterMembers asks the Patroni REST APIs at apiURLs (http://host:port), in order, for
// GET /cluster and returns the first answer's members sorted by name.
func ClusterMembers(apiURLs []string) ([]Member, error) {
	cl := &http.Client{Timeout: 2 * time.Second}
	var last error
	for _, u := range apiURLs {
		resp, err := cl.Get(u + "/cluster")
		if err != nil {
			last = err
			continue
		}
		var body struct {
			Members []Member `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil {
			last = err
			continue
		}
		sort.Slice(body.Members, func(i, j int) bool { return body.Members[i].Name < body.Members[j].Name })
		return body.Members, nil
	}
	return nil, fmt.Errorf("no Patroni API answered: %v", last)
}

// DescribeMembers is a one-line view of members for failure messages.
func DescribeMembers(ms []Member) string {
	var b []string
	for _, m := range ms {
		b = append(b, fmt.Sprintf("%s=%s/%s/tl%d", m.Name, m.Role, m.State, m.Timeline))
	}
	return strings.Join(b, " ")
}

// Topology returns the leader when exactly one member leads and want-1 stream.
func Topology(ms []Member, want int) (string, error) {
	var leaders []string
	streaming := 0
	for _, m := range ms {
		switch {
		case m.Role == "leader" && m.State == "running":
			leaders = append(leaders, m.Name)
		case m.Role != "leader" && m.State == "streaming":
			streaming++
		}
	}
	if len(leaders) != 1 || streaming != want-1 {
		return "", fmt.Errorf("leaders %v, %d streaming: %s", leaders, streaming, DescribeMembers(ms))
	}
	return leaders[0], nil
}

// QueryRow runs sql on dsn and returns its first row as strings.
func QueryRow(ctx context.Context, dsn, sql string) ([]string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, fmt.Errorf("%s: no row (%v)", sql, rows.Err())
	}
	vals, err := rows.Values()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = fmt.Sprint(v)
	}
	return out, nil
}

// ExecSQL runs one statement on dsn.
func ExecSQL(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}
