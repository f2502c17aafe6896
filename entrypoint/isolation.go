package entrypoint

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// isolationMonitor protects against the split brain of a partitioned leader. Consul can
// end a leader's session from outside within seconds (its alive check or serfHealth),
// while Patroni on the cut-off leader only demotes itself after loop_wait + retry
// timeouts (13–16 s measured), accepting writes from any client on its side meanwhile.
// So while this node leads a cluster with other members, pgnode checks several times a
// second that it can still reach Consul's servers (a consistent read) or at least one
// other member's REST API. When neither has answered for PGNODE_ISOLATION_FENCE, the node
// is cut off: pgnode stops Patroni and fences PostgreSQL before the others can promote.
// Losing only Consul (every server down) is not isolation: the members still answer, and
// Patroni's failsafe mode keeps the leader serving.
type isolationMonitor struct {
	cfg      *Config
	client   *consul.Client
	api      *patroniAPI
	limit    time.Duration
	leader   atomic.Bool
	mu       sync.Mutex
	members  []string // other members' REST API base URLs
	lastSeen time.Time
}

func newIsolationMonitor(cfg *Config, client *consul.Client) *isolationMonitor {
	return &isolationMonitor{cfg: cfg, client: client, api: cfg.patroniAPI(2 * time.Second), limit: cfg.IsolationFence, lastSeen: time.Now()}
}

// SetLeader tells the monitor this node's current role (from Patroni's REST API).
func (m *isolationMonitor) SetLeader(leader bool) {
	if leader && !m.leader.Load() {
		m.mu.Lock()
		m.lastSeen = time.Now()
		m.mu.Unlock()
	}
	m.leader.Store(leader)
}

// Run probes until ctx ends and calls isolated once when the leader is cut off.
func (m *isolationMonitor) Run(ctx context.Context, isolated func(since time.Time)) {
	if m.limit <= 0 {
		return
	}
	refresh := time.NewTicker(3 * time.Second)
	defer refresh.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var inflight atomic.Bool
	m.refreshMembers(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			go m.refreshMembers(ctx)
		case <-tick.C:
			if !m.leader.Load() {
				m.touch()
				continue
			}
			m.mu.Lock()
			members := append([]string(nil), m.members...)
			since := m.lastSeen
			m.mu.Unlock()
			if len(members) == 0 {
				// Alone: nobody else can be promoted.
				m.touch()
				continue
			}
			if time.Since(since) > m.limit {
				isolated(since)
				return
			}
			if inflight.CompareAndSwap(false, true) {
				go func() {
					defer inflight.Store(false)
					if m.reachable(ctx, members) {
						m.touch()
					}
				}()
			}
		}
	}
}

func (m *isolationMonitor) touch() {
	m.mu.Lock()
	m.lastSeen = time.Now()
	m.mu.Unlock()
}

// reachable probes Consul (consistent read, answered only through the servers' Raft
// leader) and every other member's REST API at once; any answer counts.
func (m *isolationMonitor) reachable(ctx context.Context, members []string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ok := make(chan bool, len(members)+1)
	go func() {
		_, _, err := m.client.KV().Get(m.cfg.dcsPrefix()+"leader", (&consul.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		ok <- err == nil
	}()
	hc := &http.Client{}
	for _, u := range members {
		u := u
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/liveness", nil)
			if err != nil {
				ok <- false
				return
			}
			resp, err := hc.Do(req)
			if err != nil {
				ok <- false
				return
			}
			resp.Body.Close()
			ok <- true
		}()
	}
	for i := 0; i < len(members)+1; i++ {
		select {
		case r := <-ok:
			if r {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
	return false
}

// refreshMembers learns the other members' REST API URLs from the local Patroni.
func (m *isolationMonitor) refreshMembers(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var cl struct {
		Members []struct {
			Name   string `json:"name"`
			APIURL string `json:"api_url"`
		} `json:"members"`
	}
	if _, err := m.api.do(ctx, http.MethodGet, "/cluster", nil, &cl); err != nil {
		return
	}
	var urls []string
	for _, mem := range cl.Members {
		if mem.Name == m.cfg.Name || mem.APIURL == "" {
			continue
		}
		u, err := url.Parse(mem.APIURL)
		if err != nil || u.Host == "" {
			continue
		}
		urls = append(urls, u.Scheme+"://"+u.Host)
	}
	m.mu.Lock()
	m.members = urls
	m.mu.Unlock()
}
