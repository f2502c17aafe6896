package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"pgnode/internal/command"
)

// patroniRole asks Patroni's REST API (GET /patroni) for this node's role.
func patroniRole(ctx context.Context, node Node) (string, error) {
	if node.PatroniURL == "" {
		return "", fmt.Errorf("no Patroni REST API address")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(node.PatroniURL, "/")+"/patroni", nil)
	if err != nil {
		return "", fmt.Errorf("while asking Patroni for the role: %w", err)
	}
	if node.PatroniPassword.IsSet() {
		req.SetBasicAuth(node.PatroniUser, node.PatroniPassword.Value())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("while asking Patroni for the role: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Role  string `json:"role"`
		State string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("while reading Patroni's /patroni answer (HTTP %d): %w", resp.StatusCode, err)
	}
	if body.State != "" && body.State != "running" {
		return body.Role + " (" + body.State + ")", nil
	}
	return body.Role, nil
}

// connectPG opens a connection to the node's PostgreSQL.
func connectPG(ctx context.Context, host string, port int, user string, password string, db string) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s connect_timeout=5 sslmode=disable", host, port, db))
	if err != nil {
		return nil, fmt.Errorf("while building the PostgreSQL connection: %w", err)
	}
	cc.User = user
	cc.Password = password
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("while connecting to PostgreSQL at %s:%d: %w", host, port, err)
	}
	return conn, nil
}

func (n Node) superUser() string {
	if n.SuperUser == "" {
		return "postgres"
	}
	return n.SuperUser
}

// queryOne runs a one-value query on the node's PostgreSQL through pgx on the unix socket.
// When that is refused (the socket authenticates the superuser by peer and the agent runs
// as root) and the node has a Credential, it runs psql as that user instead.
func queryOne(ctx context.Context, node Node, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// As root (the agent, or `docker exec`), the local socket only admits postgres by peer
	// authentication: ask psql as the postgres user directly instead of logging a failed
	// password login first.
	var err error
	if node.Credential != nil {
		err = fmt.Errorf("connecting as %s over the socket needs peer authentication", node.superUser())
	} else {
		var conn *pgx.Conn
		conn, err = connectPG(ctx, node.PGHost, node.PGPort, node.superUser(), node.SuperPassword.Value(), "postgres")
		if err == nil {
			defer conn.Close(context.Background())
			var v any
			if qerr := conn.QueryRow(ctx, sql).Scan(&v); qerr != nil {
				return "", fmt.Errorf("while running %s: %w", sql, qerr)
			}
			return fmt.Sprint(v), nil
		}
	}
	if node.Credential == nil || ctx.Err() != nil {
		return "", err
	}
	out, perr := command.Output(ctx, command.Spec{Path: filepath.Join(node.binDir(), "psql"), Name: "psql",
		Args:       []string{"-h", node.PGHost, "-p", strconv.Itoa(node.PGPort), "-U", node.superUser(), "-d", "postgres", "-XAtq", "-c", sql},
		Credential: node.Credential})
	if perr != nil {
		return "", fmt.Errorf("while running %s as the postgres user: %w", sql, perr)
	}
	return strings.TrimSpace(out), nil
}

// inRecovery asks PostgreSQL itself whether it is a standby.
func inRecovery(ctx context.Context, node Node) (bool, error) {
	v, err := queryOne(ctx, node, "SELECT pg_is_in_recovery()")
	if err != nil {
		return false, err
	}
	switch v {
	case "true", "t":
		return true, nil
	case "false", "f":
		return false, nil
	}
	return false, fmt.Errorf("unexpected pg_is_in_recovery() answer %q", v)
}

// checkLeader reports whether this node is the writable leader: Patroni says so (role
// master/primary, state running) and PostgreSQL confirms it is not in recovery. reason
// says why not.
func checkLeader(ctx context.Context, node Node) (leader bool, reason string, err error) {
	role, err := patroniRole(ctx, node)
	if err != nil {
		return false, "", err
	}
	if role != "master" && role != "primary" {
		return false, "Patroni reports role " + role, nil
	}
	rec, err := inRecovery(ctx, node)
	if err != nil {
		return false, "", err
	}
	if rec {
		return false, "Patroni reports " + role + " but PostgreSQL is still in recovery", nil
	}
	return true, "", nil
}
