package upgrade

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"pgnode/internal/command"
)

// privatePort is the port of every private server start; it only names the unix socket
// file inside a private 0700 directory, nothing listens on TCP.
const privatePort = 50432

// server is a PostgreSQL started privately: unix socket in a 0700 directory, no TCP,
// trust authentication through a private hba file, archiving off.
type server struct {
	node  *Node
	major int
	dir   string
	sock  string
	log   string
}

func (n *Node) env(extra ...string) []string {
	return command.MinimalEnv(append([]string{"LC_MESSAGES=C", "HOME=" + os.TempDir(), "PGTZ=UTC"}, extra...)...)
}

// privateDir makes a 0700 directory owned by postgres for sockets, logs and the hba file.
func (n *Node) privateDir(prefix string) (string, error) {
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", fmt.Errorf("while creating a private directory: %w", err)
	}
	if err := os.Chown(d, n.UID, n.GID); err != nil {
		return "", fmt.Errorf("while handing %s to postgres: %w", d, err)
	}
	if err := os.Chmod(d, 0o700); err != nil {
		return "", err
	}
	hba := filepath.Join(d, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte("local all all trust\n"), 0o600); err != nil {
		return "", fmt.Errorf("while writing the private hba file: %w", err)
	}
	if err := os.Chown(hba, n.UID, n.GID); err != nil {
		return "", err
	}
	return d, nil
}

// privateOptions are the postgres options that keep a start private.
func privateOptions(sock string) string {
	return fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c port=%d -c hba_file='%s' -c archive_mode=off",
		sock, privatePort, filepath.Join(sock, "pg_hba.conf"))
}

func (n *Node) startPrivate(ctx context.Context, major int, dir string, extraOpts ...string) (*server, error) {
	sock, err := n.privateDir("pgnode-pg-")
	if err != nil {
		return nil, err
	}
	s := &server{node: n, major: major, dir: dir, sock: sock, log: filepath.Join(sock, "postgres.log")}
	opts := privateOptions(sock)
	if len(extraOpts) > 0 {
		opts += " " + strings.Join(extraOpts, " ")
	}
	err = command.Run(ctx, command.Spec{
		Path: n.bin(major, "pg_ctl"), Credential: n.cred(), Env: n.env(), Name: fmt.Sprintf("pg_ctl-%d", major),
		Args: []string{"start", "-w", "-t", "3600", "-D", dir, "-l", s.log, "-o", opts},
	})
	if err != nil {
		tail := readTail(s.log, 8)
		_ = os.RemoveAll(sock)
		return nil, fmt.Errorf("while starting PostgreSQL %d privately on %s: %w; server log: %s", major, dir, err, tail)
	}
	return s, nil
}

func (s *server) stop(ctx context.Context) error {
	// A fresh context: a stop must complete even when the caller's context is done.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Minute)
	defer cancel()
	err := command.Run(sctx, command.Spec{
		Path: s.node.bin(s.major, "pg_ctl"), Credential: s.node.cred(), Env: s.node.env(), Name: fmt.Sprintf("pg_ctl-%d", s.major),
		Args: []string{"stop", "-w", "-t", "3600", "-m", "fast", "-D", s.dir},
	})
	if err != nil {
		return fmt.Errorf("while stopping PostgreSQL %d on %s: %w; server log: %s", s.major, s.dir, err, readTail(s.log, 8))
	}
	_ = os.RemoveAll(s.sock)
	return nil
}

func (s *server) connect(ctx context.Context, user, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s sslmode=disable", s.sock, privatePort, quoteConnValue(db)))
	if err != nil {
		return nil, err
	}
	cfg.User = user
	cfg.RuntimeParams["application_name"] = "pgnode-upgrade"
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("while connecting to database %q as %q: %w", db, user, err)
	}
	return c, nil
}

func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// superConnect connects as the bootstrap superuser, trying the configured name first and
// "postgres" second; it returns the name that worked.
func (s *server) superConnect(ctx context.Context, db string) (*pgx.Conn, string, error) {
	var firstErr error
	for _, u := range []string{s.node.superUser(), "postgres"} {
		c, err := s.connect(ctx, u, db)
		if err == nil {
			return c, u, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, "", firstErr
}

func readTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// databases lists the databases that accept connections.
func databases(ctx context.Context, c *pgx.Conn) ([]string, error) {
	rows, err := c.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
	if err != nil {
		return nil, fmt.Errorf("while listing databases: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
