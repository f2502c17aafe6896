#!/usr/bin/env bash
# Failover benchmark: 3 pgnode nodes on loopback (real Consul, Patroni, PostgreSQL 15),
# node crash and Patroni-only crash, pgnode's settings next to Patroni's defaults, median of
# PGNODE_BENCH_TRIALS (default 5). Prints a table; asserts nothing. Also prints the agent's
# overhead (start to Patroni exec, RSS).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
bash ci/setup-host.sh >/dev/null
PGNODE_BENCH=1 go test -count=1 -timeout 60m -run 'TestFailoverBench|TestHostLossBench|TestAgentOverheadBench' -v ./entrypoint 2>&1 \
  | grep -E '^\||^--- |^(ok|FAIL)'
