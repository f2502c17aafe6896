package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// The Consul keys of a cluster's backup coordination (Patroni keeps its own keys under
// service/<scope>/; ours never collide with them).
func lockKey(scope string) string     { return "pgnode/" + scope + "/backup/lock" }
func lastSlotKey(scope string) string { return "pgnode/" + scope + "/backup/last-slot" }
func verifyKey(scope string) string   { return "pgnode/" + scope + "/backup/last-verify" }

// lockSessionTTL bounds how long a lock outlives an agent that vanished; Consul's default
// lock-delay (15 s) keeps anyone else from taking an invalidated lock for a while longer,
// which is when the old holder notices the loss and kills its wal-g.
const lockSessionTTL = "15s"

func consulClient(node Node) (*api.Client, error) {
	cc := api.DefaultNonPooledConfig()
	if node.ConsulAddr != "" {
		cc.Address = node.ConsulAddr
	}
	if node.ConsulScheme != "" {
		cc.Scheme = node.ConsulScheme
	}
	cc.Token = node.ConsulToken.Value()
	c, err := api.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("while creating the Consul client for %s: %w", cc.Address, err)
	}
	return c, nil
}

// errLockHeld is returned when another node runs a backup.
type errLockHeld struct{ holder string }

func (e *errLockHeld) Error() string {
	if e.holder == "" {
		return "another node holds the cluster's backup lock"
	}
	return fmt.Sprintf("node %s is running a backup (it holds the cluster's backup lock)", e.holder)
}

// heldLock is an acquired cluster-wide backup lock. Lost is closed when Consul no longer
// guarantees it (session invalidated, Consul unreachable); the holder must stop at once.
type heldLock struct {
	lock *api.Lock
	Lost <-chan struct{}
}

// Release gives the lock up (and destroys its session).
func (h *heldLock) Release() {
	if err := h.lock.Unlock(); err != nil && !errors.Is(err, api.ErrLockNotHeld) {
		_ = err // the session expires after its TTL anyway
	}
}

// acquireLock tries once (waiting up to wait) to take the cluster-wide backup lock.
func acquireLock(ctx context.Context, client *api.Client, scope, holder string, wait time.Duration) (*heldLock, error) {
	l, err := client.LockOpts(&api.LockOptions{
		Key:              lockKey(scope),
		Value:            []byte(holder),
		SessionName:      "pgnode-backup-" + holder,
		SessionTTL:       lockSessionTTL,
		LockTryOnce:      true,
		LockWaitTime:     wait,
		MonitorRetries:   3,
		MonitorRetryTime: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("while preparing the Consul backup lock: %w", err)
	}
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			close(stop)
		case <-time.After(wait + 10*time.Second):
		}
	}()
	lost, err := l.Lock(stop)
	if err != nil {
		return nil, fmt.Errorf("while taking the Consul backup lock %s: %w", lockKey(scope), err)
	}
	if lost == nil {
		holderName := ""
		if kv, _, err := client.KV().Get(lockKey(scope), nil); err == nil && kv != nil && kv.Session != "" {
			holderName = string(kv.Value)
		}
		return nil, &errLockHeld{holder: holderName}
	}
	return &heldLock{lock: l, Lost: lost}, nil
}
