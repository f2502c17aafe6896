#!/usr/bin/env bash
# Measures major-upgrade downtime (PostgreSQL 13 -> 15, real binaries, real Patroni and
# Consul for the cluster-wide part) against pgbench size and prints two tables:
#  1. single node: downtime of `pgnode run`'s volume preparation, link vs copy mode;
#  2. cluster-wide (2 Patroni members, link mode): write downtime from stopping the leader
#     until the upgraded leader takes writes, and the replica's re-clone time.
# Not part of the test suite; nothing is asserted.
# Usage: bash ci/bench-upgrade.sh [scales...]   (default: 10 100)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
scales=${*:-10 100}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
PGNODE_BENCH_SCALES="$scales" go test -run '^$' -bench 'BenchmarkUpgradeDowntime|BenchmarkRollingUpgrade' \
  -benchtime 1x -timeout 180m ./upgrade/ >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
echo "single node (pg_upgrade + extension updates + analyze-in-stages + DCS reset):"
printf '%-6s %-5s %10s %12s  %s\n' scale mode data_MiB downtime_s "step durations (time since the previous step)"
grep '^RESULT' "$log" | sed 's/RESULT //' | while read -r s m d t st; do
  printf '%-6s %-5s %10s %12s  %s\n' "${s#scale=}" "${m#mode=}" "${d#data_mib=}" "${t#downtime_s=}" "${st#steps=}"
done
echo
echo "cluster-wide, 2 Patroni members, link mode:"
printf '%-6s %16s %18s %18s\n' scale leader_upgrade_s write_downtime_s replica_resync_s
grep '^ROLLING' "$log" | sed 's/ROLLING //' | while read -r s l w r; do
  printf '%-6s %16s %18s %18s\n' "${s#scale=}" "${l#leader_upgrade_s=}" "${w#write_downtime_s=}" "${r#replica_resync_s=}"
done
