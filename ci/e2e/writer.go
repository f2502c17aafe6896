// Package e2e holds pgnode's end-to-end suite on the Docker engine: the single-host demo
// (compose/demo) with real PostgreSQL, Patroni, Consul and pgnode containers, faults made
// with docker kill / network disconnect, and a Go writer that records every acknowledged
// commit per node. The tests live in *_test.go; this file is the writer, also used by the
// benchmarks that ci/bench-image.sh runs.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Ack is one commit the server acknowledged: the row (Node, Seq) is durable as far as the
// client can tell. At is the client's clock right after the acknowledgement arrived.
type Ack struct {
	Node string
	Seq  int64
	At   time.Time
}

// Writer inserts one row every Interval into the table e2e_writes of every node it is given
// (node name -> DSN) and records which commits each node acknowledged. Replicas reject the
// writes (read-only), so the acks show which node accepted writes when.
type Writer struct {
	Targets  map[string]string
	Interval time.Duration

	mu     sync.Mutex
	acks   []Ack
	errors map[string]int
	errLog []string
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// CreateTableSQL creates the writer's table (run it on the leader before Start).
const CreateTableSQL = `CREATE TABLE IF NOT EXISTS e2e_writes (
	node text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (node, seq))`

// Start begins writing to every target until Stop.
func (w *Writer) Start(ctx context.Context) {
	if w.Interval <= 0 {
		w.Interval = 50 * time.Millisecond
	}
	w.errors = map[string]int{}
	ctx, w.cancel = context.WithCancel(ctx)
	for node, dsn := range w.Targets {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.loop(ctx, node, dsn)
		}()
	}
}

// Stop ends the writers and waits for them.
func (w *Writer) Stop() {
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
}

func (w *Writer) loop(ctx context.Context, node, dsn string) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	// Sequence numbers start at the writer's start time in microseconds, so writers that
	// run one after the other on the same table never collide.
	seq := time.Now().UnixMicro()
	tick := time.NewTicker(w.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := pgx.Connect(cctx, dsn)
			cancel()
			if err != nil {
				w.fail(node, err)
				continue
			}
			conn = c
		}
		seq++
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := conn.Exec(ictx, `INSERT INTO e2e_writes (node, seq) VALUES ($1, $2)`, node, seq)
		cancel()
		if err == nil {
			w.mu.Lock()
			w.acks = append(w.acks, Ack{Node: node, Seq: seq, At: time.Now()})
			w.mu.Unlock()
			continue
		}
		w.fail(node, err)
		// A server-side error (read-only replica, shutting down) keeps the session when it is
		// still usable; anything else (timeout, reset) reconnects.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || conn.IsClosed() {
			_ = conn.Close(context.Background())
			conn = nil
		}
	}
}

func (w *Writer) fail(node string, err error) {
	w.mu.Lock()
	w.errors[node]++
	if len(w.errLog) < 2000 {
		w.errLog = append(w.errLog, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), node, err))
	}
	w.mu.Unlock()
}

// Errors returns the failed attempts (time, node, error; the first 2000), for diagnosing a
// write gap.
func (w *Writer) Errors(node string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, e := range w.errLog {
		if node == "" || strings.HasPrefix(e[13:], node+":") {
			out = append(out, e)
		}
	}
	return out
}

// Acks returns a copy of the acknowledged commits in time order.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]Ack(nil), w.acks...)
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// AddAcks merges acknowledgements recorded elsewhere (e.g. by a loop inside a partitioned
// container the host cannot reach).
func (w *Writer) AddAcks(acks []Ack) {
	w.mu.Lock()
	w.acks = append(w.acks, acks...)
	w.mu.Unlock()
}

// Unavailability returns the longest time after since during which no node acknowledged a
// write, and the first ack after that gap (zero if none): the write-unavailability window
// around a fault injected at since.
func Unavailability(acks []Ack, since time.Time) (time.Duration, Ack) {
	last := since
	var worst time.Duration
	var after Ack
	for _, a := range acks {
		if a.At.Before(since) {
			last = a.At
			continue
		}
		if gap := a.At.Sub(last); gap > worst {
			worst, after = gap, a
		}
		last = a.At
	}
	return worst, after
}

// FirstAckAfter returns the first ack at or after t on a node other than except.
func FirstAckAfter(acks []Ack, t time.Time, except string) (Ack, bool) {
	for _, a := range acks {
		if !a.At.Before(t) && a.Node != except {
			return a, true
		}
	}
	return Ack{}, false
}

// Overlaps returns a description of every instant two nodes accepted writes "at the same
// time": an ack on node A later than the first ack on node B where B took over from A
// (writes moved from A to B and then A acknowledged again). With one writable node at a
// time the acks, in time order, switch node only forward: once a node has been replaced it
// never acknowledges again.
func Overlaps(acks []Ack) []string {
	var out []string
	retired := map[string]Ack{} // node -> the ack of its successor that retired it
	cur := ""
	for _, a := range acks {
		if by, ok := retired[a.Node]; ok {
			out = append(out, fmt.Sprintf("%s acknowledged seq %d at %s, after %s took over (seq %d at %s)",
				a.Node, a.Seq, a.At.Format("15:04:05.000"), by.Node, by.Seq, by.At.Format("15:04:05.000")))
			continue
		}
		if cur != "" && a.Node != cur {
			retired[cur] = a
		}
		cur = a.Node
	}
	return out
}

// Missing returns the acknowledged commits absent from present (node -> set of seqs read
// back from the surviving leader): acknowledged-but-lost writes.
func Missing(acks []Ack, present map[string]map[int64]bool) []Ack {
	var out []Ack
	for _, a := range acks {
		if !present[a.Node][a.Seq] {
			out = append(out, a)
		}
	}
	return out
}

// ReadBack returns every (node, seq) in e2e_writes on the server at dsn.
func ReadBack(ctx context.Context, dsn string) (map[string]map[int64]bool, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("while connecting to read back writes: %w", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT node, seq FROM e2e_writes`)
	if err != nil {
		return nil, fmt.Errorf("while reading back writes: %w", err)
	}
	defer rows.Close()
	out := map[string]map[int64]bool{}
	for rows.Next() {
		var node string
		var seq int64
		if err := rows.Scan(&node, &seq); err != nil {
			return nil, err
		}
		if out[node] == nil {
			out[node] = map[int64]bool{}
		}
		out[node][seq] = true
	}
	return out, rows.Err()
}
