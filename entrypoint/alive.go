package entrypoint

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// consulClient returns a client for the node's Consul agent.
func (c *Config) consulClient() (*consul.Client, error) {
	cc := consul.DefaultConfig()
	cc.Address = c.ConsulHost
	cc.Scheme = c.ConsulScheme
	cc.Token = c.ConsulToken.Value()
	cc.HttpClient = nil
	cl, err := consul.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("while creating the Consul client for %s: %w", c.ConsulHost, err)
	}
	return cl, nil
}

// AliveCheck is fast failover's fence-aware liveness signal. pgnode listens on the alive
// port while it supervises a live Patroni, and registers a Consul TCP check on it that
// Patroni binds its session to. A TCP handshake is answered by the kernel, so a starved
// or slow agent never fails it; the port closes when the process dies (container loss)
// or when pgnode closes it after fencing PostgreSQL. Deregistering the check ends the
// session at once.
type AliveCheck struct {
	cfg    *Config
	client *consul.Client
	mu     sync.Mutex
	ln     net.Listener
}

// NewAliveCheck prepares the check; nothing is opened yet.
func NewAliveCheck(cfg *Config, client *consul.Client) *AliveCheck {
	return &AliveCheck{cfg: cfg, client: client}
}

// Open starts listening and registers the check as passing. It waits until the Consul
// agent reports it passing, since Patroni cannot create a session while a bound check is
// missing or critical.
func (a *AliveCheck) Open(ctx context.Context) error {
	addr := net.JoinHostPort(a.cfg.ListenHost, strconv.Itoa(a.cfg.AlivePort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("while opening the alive port %s (PGNODE_ALIVE_PORT): %w", addr, err)
	}
	a.mu.Lock()
	a.ln = ln
	a.mu.Unlock()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
	reg := &consul.AgentCheckRegistration{
		ID:    a.cfg.AliveCheckID(),
		Name:  "pgnode alive: " + a.cfg.Name,
		Notes: "open while pgnode supervises a live Patroni on " + a.cfg.Name + "; Patroni's session is bound to it",
		AgentServiceCheck: consul.AgentServiceCheck{
			TCP:      net.JoinHostPort(a.cfg.LANHost, strconv.Itoa(a.cfg.AlivePort)),
			Interval: "1s",
			Timeout:  "500ms",
			Status:   consul.HealthPassing,
			// Two failed probes: a dead process (connection refused) is still seen within
			// ~2 s, while a partitioned leader gets the time to fence itself first
			// (PGNODE_ISOLATION_FENCE) before its session ends.
			FailuresBeforeCritical: 2,
		},
	}
	var lastErr error
	for attempt := 0; ; attempt++ {
		lastErr = a.client.Agent().CheckRegister(reg)
		if lastErr == nil {
			break
		}
		if attempt%10 == 0 {
			slog.Warn("cannot register the alive check with Consul yet; retrying", "consul", a.cfg.ConsulHost, "err", lastErr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("while registering the alive check: %w", lastErr)
		case <-time.After(time.Second):
		}
	}
	for i := 0; i < 100; i++ {
		checks, err := a.client.Agent().Checks()
		if err == nil {
			if ch, ok := checks[a.cfg.AliveCheckID()]; ok && ch.Status == consul.HealthPassing {
				slog.Info("fast failover: alive check registered", "check", a.cfg.AliveCheckID(), "port", a.cfg.AlivePort)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("the alive check %s did not turn passing: can Consul at %s reach %s:%d?", a.cfg.AliveCheckID(), a.cfg.ConsulHost, a.cfg.LANHost, a.cfg.AlivePort)
}

// Release closes the port and deregisters the check, which ends every session bound to
// it (and so releases the leader key at once). Call it only when PostgreSQL is fenced or
// cleanly stopped.
func (a *AliveCheck) Release() {
	a.mu.Lock()
	if a.ln != nil {
		_ = a.ln.Close()
		a.ln = nil
	}
	a.mu.Unlock()
	if err := a.client.Agent().CheckDeregister(a.cfg.AliveCheckID()); err != nil {
		slog.Warn("cannot deregister the alive check; it turns critical within a second anyway", "err", err)
	}
}
