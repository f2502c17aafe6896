package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"

	"pgnode/internal/envspec"
	"pgnode/internal/fileutil"
)

// rewindGrants are the functions pg_rewind needs (PostgreSQL docs, pg_rewind "Notes").
var rewindGrants = []string{
	"pg_catalog.pg_ls_dir(text, boolean, boolean)",
	"pg_catalog.pg_stat_file(text, boolean)",
	"pg_catalog.pg_read_binary_file(text)",
	"pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
}

// ensureRoles makes the roles Patroni needs on a running private server. Roles that exist
// keep their attributes and passwords unless the environment gives a password (then the
// password and the attribute Patroni relies on are set). It returns what it changed.
func (n *Node) ensureRoles(ctx context.Context, s *server) ([]string, error) {
	c, as, err := s.superConnect(ctx, "postgres")
	if err != nil {
		return nil, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	// Nothing of what follows belongs in the server log (verifiers are not passwords,
	// but they are not for logs either).
	if _, err := c.Exec(ctx, "SET log_statement = 'none'; SET log_min_duration_statement = -1"); err != nil {
		return nil, fmt.Errorf("while preparing the session: %w", err)
	}
	var changed []string
	type role struct {
		name  string
		pass  envspec.Secret
		attrs string
	}
	roles := []role{
		{n.superUser(), n.SuperPassword, "LOGIN SUPERUSER"},
		{n.ReplicationUser, n.ReplicationPassword, "LOGIN REPLICATION"},
		{n.RewindUser, n.RewindPassword, "LOGIN"},
	}
	for _, r := range roles {
		if r.name == "" {
			continue
		}
		var existsRole bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", r.name).Scan(&existsRole); err != nil {
			return changed, fmt.Errorf("while looking up role %q: %w", r.name, err)
		}
		if existsRole && !r.pass.IsSet() {
			continue
		}
		verb := "ALTER"
		if !existsRole {
			verb = "CREATE"
		}
		stmt := fmt.Sprintf("%s ROLE %s WITH %s", verb, pgx.Identifier{r.name}.Sanitize(), r.attrs)
		if r.pass.IsSet() {
			v, err := scramVerifier(r.pass.Value())
			if err != nil {
				return changed, err
			}
			stmt += " PASSWORD " + quoteLiteral(v)
		}
		if _, err := c.Exec(ctx, stmt); err != nil {
			return changed, fmt.Errorf("while %s role %q: %w", map[string]string{"ALTER": "altering", "CREATE": "creating"}[verb], r.name, err)
		}
		changed = append(changed, fmt.Sprintf("%s role %s", map[string]string{"ALTER": "altered", "CREATE": "created"}[verb], r.name))
	}
	if n.RewindUser != "" && n.RewindUser != as {
		for _, f := range rewindGrants {
			if _, err := c.Exec(ctx, fmt.Sprintf("GRANT EXECUTE ON FUNCTION %s TO %s", f, pgx.Identifier{n.RewindUser}.Sanitize())); err != nil {
				return changed, fmt.Errorf("while granting %s to %q: %w", f, n.RewindUser, err)
			}
		}
	}
	return changed, nil
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

// adopt prepares a plain single server of the image's major for Patroni: it starts it
// privately (crash recovery included), creates or updates the roles and keeps the
// operator's configuration reachable. Patroni then takes the leader lock with the data.
func (n *Node) adopt(ctx context.Context, v Volume) error {
	if v.Standby {
		return fmt.Errorf("data directory %s holds a standby (cluster state %q or a standby.signal/recovery.conf file) that Patroni never managed: "+
			"pgnode adopts only a primary; promote it with its own server first (pg_ctl promote), or start this node with an empty volume to clone from the leader; nothing was changed",
			n.DataDir, v.Control.State)
	}
	// Debian-style clusters keep postgresql.conf in /etc; Patroni needs one in PGDATA.
	conf := filepath.Join(n.DataDir, "postgresql.conf")
	if !exists(conf) {
		if err := fileutil.WriteAtomic(conf, []byte("# created by pgnode: the cluster had no postgresql.conf in its data directory\n"), 0o600, n.UID, n.GID); err != nil {
			return err
		}
	} else {
		// Patroni moves postgresql.conf to postgresql.base.conf and includes it; keep an
		// untouched copy as well so the operator's settings stay readable whatever happens.
		orig := filepath.Join(n.DataDir, "postgresql.conf.pgnode-adopted")
		if !exists(orig) {
			b, err := os.ReadFile(conf)
			if err != nil {
				return fmt.Errorf("while reading %s: %w", conf, err)
			}
			if err := fileutil.WriteAtomic(orig, b, 0o600, n.UID, n.GID); err != nil {
				return err
			}
		}
	}
	s, err := n.startPrivate(ctx, v.Major, n.DataDir)
	if err != nil {
		return err
	}
	changed, rerr := n.ensureRoles(ctx, s)
	if err := s.stop(ctx); err != nil {
		return err
	}
	if rerr != nil {
		return fmt.Errorf("while creating the roles Patroni needs: %w", rerr)
	}
	slog.Info("adopted a single PostgreSQL server for Patroni", "data_dir", n.DataDir, "major", v.Major, "system_id", v.Control.SystemID, "changes", changed)
	return nil
}
