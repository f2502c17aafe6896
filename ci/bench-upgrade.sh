#!/usr/bin/env bash
# Measures single-node major-upgrade downtime (PostgreSQL 13 -> 15, real binaries) against
# pgbench size for link and copy mode and prints a table. Not part of the test suite.
# Usage: bash ci/bench-upgrade.sh [scales...]   (default: 10 100)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
scales=${*:-10 100}
log=$(mktemp)
PGNODE_BENCH_SCALES="$scales" go test -run '^$' -bench BenchmarkUpgradeDowntime -benchtime 1x -timeout 120m ./upgrade/ >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
printf '%-6s %-5s %10s %12s  %s\n' scale mode data_MiB downtime_s "step durations (time since the previous step)"
grep '^RESULT' "$log" | sed 's/RESULT //' | while read -r s m d t st; do
  printf '%-6s %-5s %10s %12s  %s\n' "${s#scale=}" "${m#mode=}" "${d#data_mib=}" "${t#downtime_s=}" "${st#steps=}"
done
rm -f "$log"
