package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHOptions say how pgdeploy authenticates and checks hosts.
type SSHOptions struct {
	KnownHosts     string        // known_hosts file; default ~/.ssh/known_hosts
	IdentityFile   string        // private key file; empty: keys from ssh-agent (SSH_AUTH_SOCK)
	ConnectTimeout time.Duration // TCP connect + handshake; default 10 s
}

// Remote is an SSH connection to one node.
type Remote struct {
	Node   Resolved
	client *ssh.Client
}

// HostKeyError is a refused host key (unknown or changed) with its fingerprint.
type HostKeyError struct {
	Host        string
	Fingerprint string
	Known       []string // fingerprints known_hosts has for the host (changed key)
	File        string
}

func (e *HostKeyError) Error() string {
	if len(e.Known) == 0 {
		return fmt.Sprintf("host key of %s is unknown (%s): not in %s; check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and add the key to %s, e.g. with ssh-keyscan",
			e.Host, e.Fingerprint, e.File, e.File)
	}
	return fmt.Sprintf("REFUSED: host key of %s has CHANGED: it offers %s but %s has %s; if the host was reinstalled, verify the new key and replace its line in %s",
		e.Host, e.Fingerprint, e.File, strings.Join(e.Known, ", "), e.File)
}

func (o SSHOptions) withDefaults() (SSHOptions, error) {
	if o.KnownHosts == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return o, fmt.Errorf("while finding the home directory for known_hosts: %w", err)
		}
		o.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	return o, nil
}

func (o SSHOptions) authMethods() ([]ssh.AuthMethod, func(), error) {
	if o.IdentityFile != "" {
		b, err := os.ReadFile(o.IdentityFile)
		if err != nil {
			return nil, nil, fmt.Errorf("while reading the SSH key: %w", err)
		}
		signer, err := ssh.ParsePrivateKey(b)
		if err != nil {
			var pp *ssh.PassphraseMissingError
			if errors.As(err, &pp) {
				return nil, nil, fmt.Errorf("SSH key %s is passphrase-protected: load it into ssh-agent (ssh-add) and omit --identity", o.IdentityFile)
			}
			return nil, nil, fmt.Errorf("while parsing the SSH key %s: %w", o.IdentityFile, err)
		}
		return []ssh.AuthMethod{ssh.PublicKeys(signer)}, func() {}, nil
	}
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, nil, errors.New("no SSH key: give --identity FILE or run an ssh-agent (SSH_AUTH_SOCK is empty)")
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("while connecting to ssh-agent at %s: %w", sock, err)
	}
	ag := agent.NewClient(conn)
	return []ssh.AuthMethod{ssh.PublicKeysCallback(ag.Signers)}, func() { _ = conn.Close() }, nil
}

func hostKeyCallback(file string) (ssh.HostKeyCallback, error) {
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, fmt.Errorf("while creating %s: %w", filepath.Dir(file), err)
		}
		f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("while creating %s: %w", file, err)
		}
		_ = f.Close()
	}
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("while reading %s: %w", file, err)
	}
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			he := &HostKeyError{Host: hostname, Fingerprint: ssh.FingerprintSHA256(key), File: file}
			for _, k := range ke.Want {
				he.Known = append(he.Known, fmt.Sprintf("%s (line %d)", ssh.FingerprintSHA256(k.Key), k.Line))
			}
			return he
		}
		return err
	}, nil
}

// Dial connects to node r. Unknown or changed host keys are refused with the fingerprint;
// connect and handshake are bounded by the timeout.
func Dial(ctx context.Context, r Resolved, o SSHOptions) (*Remote, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	auth, closeAuth, err := o.authMethods()
	if err != nil {
		return nil, err
	}
	defer closeAuth()
	hk, err := hostKeyCallback(o.KnownHosts)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(r.SSHHost, strconv.Itoa(r.SSHPort))
	cfg := &ssh.ClientConfig{User: r.SSHUser, Auth: auth, HostKeyCallback: hk, Timeout: o.ConnectTimeout}
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("node %s: cannot reach %s within %s: %w", r.Name, addr, o.ConnectTimeout, err)
	}
	_ = conn.SetDeadline(time.Now().Add(o.ConnectTimeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		_ = conn.Close()
		var he *HostKeyError
		if errors.As(err, &he) {
			return nil, fmt.Errorf("node %s: %w", r.Name, he)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("node %s: %s accepted TCP but gave no SSH handshake within %s", r.Name, addr, o.ConnectTimeout)
		}
		return nil, fmt.Errorf("node %s: SSH to %s@%s failed: %w", r.Name, r.SSHUser, addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return &Remote{Node: r, client: ssh.NewClient(c, chans, reqs)}, nil
}

// Close closes the connection.
func (r *Remote) Close() error { return r.client.Close() }

// RemoteError is a failed remote command with its output.
type RemoteError struct {
	Cmd    string
	Output string
	Err    error
}

func (e *RemoteError) Error() string {
	out := strings.TrimSpace(e.Output)
	if len(out) > 2000 {
		out = "…" + out[len(out)-2000:]
	}
	return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, out)
}

func (e *RemoteError) Unwrap() error { return e.Err }

// Run runs a shell command on the node (wrapped in sudo -n when the node needs it) with
// stdin, returning stdout; stderr is included in the error. The command string must not
// hold secrets (pass them on stdin).
func (r *Remote) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	s, err := r.client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("node %s: while opening an SSH session: %w", r.Node.Name, err)
	}
	defer s.Close()
	full := cmd
	if r.Node.Sudo {
		full = "sudo -n sh -c " + shQuote(cmd)
	}
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != nil {
		s.Stdin = stdin
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(full) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGTERM)
		_ = s.Close()
		return nil, fmt.Errorf("node %s: %s: %w", r.Node.Name, cmd, ctx.Err())
	}
	if err != nil {
		return stdout.Bytes(), &RemoteError{Cmd: fmt.Sprintf("node %s: %s", r.Node.Name, cmd), Output: stderr.String() + stdout.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

// DialTCP opens a TCP connection from the node to addr (an SSH tunnel).
func (r *Remote) DialTCP(addr string) (net.Conn, error) { return r.client.Dial("tcp", addr) }

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
