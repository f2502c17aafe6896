package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
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

// inRecovery asks PostgreSQL itself whether it is a standby.
func inRecovery(ctx context.Context, node Node) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := connectPG(ctx, node.PGHost, node.PGPort, node.superUser(), node.SuperPassword.Value(), "postgres")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false, fmt.Errorf("while asking PostgreSQL pg_is_in_recovery(): %w", err)
	}
	return rec, nil
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
