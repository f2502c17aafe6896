package entrypoint

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// MemberStatus is the part of Patroni's GET /patroni answer pgnode uses.
type MemberStatus struct {
	State            string `json:"state"`
	Role             string `json:"role"`
	Timeline         int    `json:"timeline"`
	ReplicationState string `json:"replication_state"`
	Pending          bool   `json:"pending_restart"`
	Patroni          struct {
		Version string `json:"version"`
		Scope   string `json:"scope"`
	} `json:"patroni"`
	Replication []struct {
		Application string `json:"application_name"`
		State       string `json:"state"`
	} `json:"replication"`
}

// IsLeader reports a primary role (Patroni 3 says "master", 4 says "primary").
func (m *MemberStatus) IsLeader() bool { return m.Role == "master" || m.Role == "primary" }

type patroniAPI struct {
	base       string
	user, pass string
	http       *http.Client
}

func (c *Config) patroniAPI(timeout time.Duration) *patroniAPI {
	return &patroniAPI{
		base: "http://" + net.JoinHostPort(localHost(c.ListenHost), strconv.Itoa(c.RestAPIPort)),
		user: c.RestAPIUser, pass: c.RestAPIPassword.Value(),
		http: &http.Client{Timeout: timeout},
	}
}

func (p *patroniAPI) do(ctx context.Context, method, path string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.base+path, rd)
	if err != nil {
		return 0, err
	}
	if method != http.MethodGet {
		req.SetBasicAuth(p.user, p.pass)
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("while decoding %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Status returns GET /patroni (the body is returned with any status code: Patroni answers
// 503 with a body for a replica on /patroni? no — /patroni is always 200 when up).
func (p *patroniAPI) Status(ctx context.Context) (*MemberStatus, error) {
	var st MemberStatus
	if _, err := p.do(ctx, http.MethodGet, "/patroni", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Liveness returns nil when GET /liveness answers 200.
func (p *patroniAPI) Liveness(ctx context.Context) error {
	code, err := p.do(ctx, http.MethodGet, "/liveness", nil, nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("liveness answered %d", code)
	}
	return nil
}
