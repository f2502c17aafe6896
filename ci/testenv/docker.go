package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RequireDocker skips the test with one "SKIP: ..." line when the Docker daemon is not
// reachable; otherwise the Docker-based test must run (a missing image is a failure, the
// suite's setup builds them).
func RequireDocker(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("SKIP: docker CLI not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "-f", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("SKIP: docker daemon unreachable: %s", firstLine(string(out)))
	}
}

// RepoRoot returns the repository root (the directory holding go.mod above this file).
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate ci/testenv")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Docker runs `docker args...` and returns its combined output; a failure fails the test.
func Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := DockerErr(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// DockerErr runs `docker args...` (2-minute limit) and returns its combined output.
func DockerErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var b bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return strings.TrimSpace(b.String()), err
}

// ComposeProject is one `docker compose` project (a unique name per test) started from a
// compose file with its own env file; Down removes its containers, networks and volumes.
type ComposeProject struct {
	Name    string
	File    string
	EnvFile string
	// Env is the environment the compose file is interpolated with (also written to EnvFile).
	Env map[string]string
	// Subnet is the /24 prefix ("172.29.17") of the project's network.
	Subnet   string
	profiles []string
	t        testing.TB
	down     bool
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// NewComposeProject prepares a project for file: a unique name derived from prefix and the
// test name, an unused 172.29.x.0/24 subnet, and an env file (mode 0600) with env plus
// DEMO_SUBNET. Call Up to start it; the project is taken down (with volumes) when the test
// ends unless PGNODE_E2E_KEEP=1.
func NewComposeProject(t testing.TB, prefix, file string, env map[string]string) *ComposeProject {
	t.Helper()
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := strings.Trim(nonName.ReplaceAllString(strings.ToLower(prefix+"-"+t.Name()), "-"), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	p := &ComposeProject{Name: name + "-" + hex.EncodeToString(suffix), File: file, t: t,
		Env: map[string]string{}}
	for k, v := range env {
		p.Env[k] = v
	}
	p.Subnet = freeSubnet(t)
	p.Env["DEMO_SUBNET"] = p.Subnet
	p.EnvFile = filepath.Join(t.TempDir(), "compose.env")
	p.writeEnv()
	t.Cleanup(func() {
		if os.Getenv("PGNODE_E2E_KEEP") == "1" {
			t.Logf("PGNODE_E2E_KEEP=1: leaving compose project %s running", p.Name)
			return
		}
		if t.Failed() && !p.down {
			p.DumpLogs(200)
		}
		p.Down()
	})
	return p
}

// Down removes the project's containers, networks and volumes (idempotent; also done when
// the test ends).
func (p *ComposeProject) Down() {
	if p.down {
		return
	}
	p.down = true
	if out, err := p.ComposeErr(append(p.profileArgs(), "down", "-v", "--timeout", "20")...); err != nil {
		p.t.Logf("compose down %s: %v\n%s", p.Name, err, out)
	}
}

func (p *ComposeProject) writeEnv() {
	var b strings.Builder
	for k, v := range p.Env {
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	if err := os.WriteFile(p.EnvFile, []byte(b.String()), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// SetEnv changes variables for the next compose command (e.g. before recreating nodes).
func (p *ComposeProject) SetEnv(kv map[string]string) {
	for k, v := range kv {
		p.Env[k] = v
	}
	p.writeEnv()
}

// Profiles enables compose profiles for every later command.
func (p *ComposeProject) Profiles(names ...string) { p.profiles = append(p.profiles, names...) }

func (p *ComposeProject) profileArgs() []string {
	var a []string
	for _, n := range p.profiles {
		a = append(a, "--profile", n)
	}
	return a
}

// ComposeErr runs `docker compose -p name -f file --env-file env args...`.
func (p *ComposeProject) ComposeErr(args ...string) (string, error) {
	base := []string{"compose", "-p", p.Name, "-f", p.File, "--env-file", p.EnvFile}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var b bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", append(base, args...)...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return strings.TrimSpace(b.String()), err
}

// Compose is ComposeErr failing the test on error.
func (p *ComposeProject) Compose(args ...string) string {
	p.t.Helper()
	out, err := p.ComposeErr(args...)
	if err != nil {
		p.t.Fatalf("docker compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Up starts services (all when none given) detached.
func (p *ComposeProject) Up(services ...string) {
	p.t.Helper()
	p.Compose(append(append(p.profileArgs(), "up", "-d", "--no-build"), services...)...)
}

// Container returns the container ID of a service ("" when it has none).
func (p *ComposeProject) Container(service string) string {
	p.t.Helper()
	out, err := p.ComposeErr(append(p.profileArgs(), "ps", "-a", "-q", service)...)
	if err != nil {
		p.t.Fatalf("compose ps %s: %v\n%s", service, err, out)
	}
	return firstLine(out)
}

// ContainerName returns the container name of a service.
func (p *ComposeProject) ContainerName(service string) string {
	p.t.Helper()
	return strings.TrimPrefix(Docker(p.t, "inspect", "-f", "{{.Name}}", p.Container(service)), "/")
}

// Exec runs a command in a service's container (no TTY) and returns its output and error.
func (p *ComposeProject) Exec(service string, args ...string) (string, error) {
	return p.ComposeErr(append([]string{"exec", "-T", service}, args...)...)
}

// Health returns the Docker health status of a service's container (or its state when it
// has no health check, or "missing").
func (p *ComposeProject) Health(service string) string {
	id := p.Container(service)
	if id == "" {
		return "missing"
	}
	out, err := DockerErr("inspect", "-f",
		"{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}", id)
	if err != nil {
		return "missing"
	}
	return out
}

// WaitHealthy waits until every service's container reports healthy.
func (p *ComposeProject) WaitHealthy(timeout time.Duration, services ...string) {
	p.t.Helper()
	WaitFor(p.t, timeout, "healthy "+strings.Join(services, ","), func() error {
		var bad []string
		for _, s := range services {
			if h := p.Health(s); h != "healthy" {
				bad = append(bad, s+"="+h)
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("not healthy: %s", strings.Join(bad, " "))
		}
		return nil
	})
}

// Kill sends SIGKILL to a service's container (docker kill).
func (p *ComposeProject) Kill(service string) {
	p.t.Helper()
	Docker(p.t, "kill", p.Container(service))
}

// Network returns the name of the project's network (compose: <project>_<network>).
func (p *ComposeProject) Network(network string) string { return p.Name + "_" + network }

// Disconnect removes a service's container from a project network (a partition: the
// container keeps running but reaches nobody).
func (p *ComposeProject) Disconnect(network, service string) {
	p.t.Helper()
	Docker(p.t, "network", "disconnect", "-f", p.Network(network), p.Container(service))
}

// Connect re-attaches a service's container to a network with its static address.
func (p *ComposeProject) Connect(network, service, ip string) {
	p.t.Helper()
	Docker(p.t, "network", "connect", "--ip", ip, p.Network(network), p.Container(service))
}

// DumpLogs logs the last n lines of every service's logs (for failed tests).
func (p *ComposeProject) DumpLogs(n int) {
	out, _ := p.ComposeErr(append(p.profileArgs(), "logs", "--no-color", "--tail", fmt.Sprint(n))...)
	p.t.Logf("logs of %s:\n%s", p.Name, out)
}

// freeSubnet returns a 172.29.N prefix no Docker network uses yet.
func freeSubnet(t testing.TB) string {
	t.Helper()
	used := map[string]bool{}
	ids := strings.Fields(Docker(t, "network", "ls", "-q"))
	if len(ids) > 0 {
		out := Docker(t, append([]string{"network", "inspect", "-f",
			"{{range .IPAM.Config}}{{.Subnet}} {{end}}"}, ids...)...)
		for _, s := range strings.Fields(out) {
			used[s] = true
		}
	}
	start := int(time.Now().UnixNano()/1000) % 200
	for i := 0; i < 240; i++ {
		n := 10 + (start+i)%240
		prefix := fmt.Sprintf("172.29.%d", n)
		if !used[prefix+".0/24"] {
			return prefix
		}
	}
	t.Fatal("no free 172.29.x.0/24 subnet")
	return ""
}

// RandomSecret returns n random bytes, base64 (URL-safe, no padding): a test password.
func RandomSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// GossipKey returns a Consul gossip encryption key (32 random bytes, std base64).
func GossipKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// ImageExists tells whether a local image tag exists.
func ImageExists(tag string) bool {
	_, err := DockerErr("image", "inspect", tag)
	return err == nil
}

// InspectJSON decodes `docker inspect` of one object into v.
func InspectJSON(t testing.TB, id string, v any) {
	t.Helper()
	out := Docker(t, "inspect", id)
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(out), &arr); err != nil || len(arr) == 0 {
		t.Fatalf("docker inspect %s: %v", id, err)
	}
	if err := json.Unmarshal(arr[0], v); err != nil {
		t.Fatalf("docker inspect %s: %v", id, err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
