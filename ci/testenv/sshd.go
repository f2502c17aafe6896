package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SSHD is a real OpenSSH server (Debian's openssh-server, installed by ci/setup-sshd.sh)
// on a loopback port with a generated host key, a generated user key and a test-only
// config. Logins go to the user running the test.
type SSHD struct {
	Port         int
	User         string
	Dir          string
	HostKeyPub   string // "ssh-ed25519 AAAA..."
	IdentityFile string // private key of the test user (no passphrase)
	KnownHosts   string // known_hosts with this server's key
	LogPath      string
	cmd          *exec.Cmd
	done         chan struct{}
}

// StartSSHD starts sshd on a port from p and stops it when the test ends.
func StartSSHD(t testing.TB, p *Ports) *SSHD {
	t.Helper()
	bin := RequireBinary(t, "sshd", "/usr/sbin/sshd")
	keygen := RequireBinary(t, "ssh-keygen")
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &SSHD{Port: p.Next(t), User: u.Username, Dir: dir}
	for _, k := range []string{"host_ed25519", "user_ed25519"} {
		if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "pgnode-test", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "host_ed25519.pub"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(pub))
	s.HostKeyPub = f[0] + " " + f[1]
	s.IdentityFile = filepath.Join(dir, "user_ed25519")
	userPub, err := os.ReadFile(s.IdentityFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), userPub, 0o600); err != nil {
		t.Fatal(err)
	}
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(s.KnownHosts, []byte(s.KnownHostsLine()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// sshd's privilege-separation directory.
	_ = os.MkdirAll("/run/sshd", 0o755)
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowTcpForwarding yes
PermitUserEnvironment no
MaxSessions 50
MaxStartups 50
LogLevel VERBOSE
`, s.Port, filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "authorized_keys"))
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.LogPath = filepath.Join(dir, "sshd.log")
	logf, err := os.Create(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, "-D", "-e", "-f", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting sshd: %v", err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); _ = logf.Close(); close(s.done) }()
	t.Cleanup(s.Stop)
	WaitFor(t, 15*time.Second, "sshd listening", func() error {
		select {
		case <-s.done:
			return fmt.Errorf("sshd exited: %s", TailFile(s.LogPath, 20))
		default:
		}
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.Port))
		if err != nil {
			return err
		}
		return c.Close()
	})
	return s
}

// KnownHostsLine is this server's known_hosts entry.
func (s *SSHD) KnownHostsLine() string {
	return fmt.Sprintf("[127.0.0.1]:%d %s", s.Port, s.HostKeyPub)
}

// Stop stops sshd (idempotent).
func (s *SSHD) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
}
