package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// BenchmarkDemo measures, over PGNODE_BENCH_TRIALS trials (default 5), the demo's cold start
// to 3 healthy nodes, the write-unavailability window of a leader `docker kill` (default
// settings: asynchronous, fast failover) and of a planned switchover. It prints one
// "BENCH <name> <median> <min> <max>" line per measure (ci/bench-image.sh makes the table)
// and reports the medians as benchmark metrics. Run with -benchtime 1x.
func BenchmarkDemo(b *testing.B) {
	trials := 5
	if v, err := strconv.Atoi(os.Getenv("PGNODE_BENCH_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	for i := 0; i < b.N; i++ {
		var cold, failover, switchover []float64
		for n := 0; n < trials; n++ {
			c := StartDemo(b, nil)
			cold = append(cold, c.ColdStart.Seconds())
			if n < trials-1 {
				c.P.Down()
				continue
			}
			leader := c.WaitTopology(2*time.Minute, 3)
			c.Exec(leader, CreateTableSQL)
			for k := 0; k < trials; k++ {
				failover = append(failover, benchKill(b, c, &leader))
			}
			for k := 0; k < trials; k++ {
				switchover = append(switchover, benchSwitchover(b, c, &leader))
			}
			c.P.Down()
		}
		report(b, "cold-start-s", cold)
		report(b, "failover-kill-s", failover)
		report(b, "switchover-s", switchover)
	}
}

func benchKill(b *testing.B, c *Cluster, leader *string) float64 {
	w := c.Writer()
	w.Start(context.Background())
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	c.P.Kill(*leader)
	testenv.WaitFor(b, 2*time.Minute, "writes after the kill", func() error {
		if _, ok := FirstAckAfter(w.Acks(), t0, *leader); !ok {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	w.Stop()
	first, _ := FirstAckAfter(w.Acks(), t0, *leader)
	if o := Overlaps(w.Acks()); len(o) > 0 {
		b.Errorf("two writable nodes: %v", o)
	}
	ensureRunning(c, *leader)
	*leader = c.WaitTopology(3*time.Minute, 3)
	return first.At.Sub(t0).Seconds()
}

func benchSwitchover(b *testing.B, c *Cluster, leader *string) float64 {
	candidate := other(*leader)
	w := c.Writer()
	w.Start(context.Background())
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	if out, err := c.Patronictl(*leader, "switchover", "--leader", *leader, "--candidate", candidate, "--force"); err != nil {
		w.Stop()
		b.Fatalf("switchover: %v\n%s", err, out)
	}
	*leader = c.WaitTopology(2*time.Minute, 3)
	time.Sleep(2 * time.Second)
	w.Stop()
	window, _ := Unavailability(w.Acks(), t0)
	return window.Seconds()
}

func report(b *testing.B, name string, v []float64) {
	if len(v) == 0 {
		return
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	b.ReportMetric(med, name)
	fmt.Printf("BENCH %s %.2f %.2f %.2f n=%d\n", name, med, s[0], s[len(s)-1], len(s))
}
