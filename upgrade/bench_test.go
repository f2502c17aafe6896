package upgrade

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
)

// BenchmarkUpgradeDowntime measures the single-node downtime of a 13→15 upgrade (Prepare,
// from the stopped old server to a new cluster ready for Patroni) against pgbench data
// sizes, per mode. Scales come from PGNODE_BENCH_SCALES (default "10"); run it through
// ci/bench-upgrade.sh, which prints the table. Nothing is asserted.
func BenchmarkUpgradeDowntime(b *testing.B) {
	scales := strings.Fields(os.Getenv("PGNODE_BENCH_SCALES"))
	if len(scales) == 0 {
		scales = []string{"10"}
	}
	modes := strings.Fields(os.Getenv("PGNODE_BENCH_MODES"))
	if len(modes) == 0 {
		modes = []string{"link", "copy"}
	}
	for _, sc := range scales {
		scale, err := strconv.Atoi(sc)
		if err != nil {
			b.Fatal(err)
		}
		for _, mode := range modes {
			b.Run(fmt.Sprintf("scale=%d/mode=%s", scale, mode), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					root := testenv.PostgresTempDir(b)
					data := filepath.Join(root, "data")
					testenv.InitDB(b, oldMajor, data, "--data-checksums", "--encoding=UTF8", "--locale=C.UTF-8")
					p := testenv.StartPG(b, oldMajor, data, 0, "-c max_wal_size=4GB")
					testenv.MustAsPostgres(b, filepath.Join(testenv.PGBinDir(b, oldMajor), "pgbench"), "-i", "-q", "-s", sc, "-h", p.Sock, "-p", "5432", "-U", "postgres", "postgres")
					p.Stop(b)
					size := dirSize(data)
					n := testNodeB(b, root)
					var steps []string
					last := time.Now()
					testHook = func(step string) {
						steps = append(steps, fmt.Sprintf("%s=%.1fs", step, time.Since(last).Seconds()))
						last = time.Now()
					}
					b.StartTimer()
					start := time.Now()
					if _, err := Prepare(context.Background(), Config{AutoUpgrade: true, Mode: mode, Jobs: 2}, n); err != nil {
						b.Fatal(err)
					}
					d := time.Since(start)
					b.StopTimer()
					testHook = nil
					b.ReportMetric(d.Seconds(), "downtime-s")
					b.ReportMetric(float64(size)/(1<<20), "data-MiB")
					fmt.Printf("RESULT scale=%d mode=%s data_mib=%d downtime_s=%.1f steps=%s\n", scale, mode, size>>20, d.Seconds(), strings.Join(steps, ","))
					_ = os.RemoveAll(root)
				}
			})
		}
	}
}

func testNodeB(b *testing.B, root string) Node {
	uid, gid := testenv.PostgresUser(b)
	return Node{DataDir: filepath.Join(root, "data"), Major: newMajor, UID: uid, GID: gid, Name: "bench",
		SuperUser: "postgres", ReplicationUser: "replicator", RewindUser: "rewind_user",
		StatusFile: filepath.Join(b.TempDir(), "status.json")}
}
