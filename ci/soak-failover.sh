#!/usr/bin/env bash
# Soak: 3 pgnode nodes on loopback under a writer, both cores saturated, the leader's
# Patroni paused 3 s every 30 s; counts false failovers. PGNODE_SOAK_MINUTES (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
bash ci/setup-host.sh >/dev/null
PGNODE_SOAK=1 go test -count=1 -timeout 60m -run 'TestFailoverSoak' -v ./entrypoint 2>&1 | grep -E '^\||^--- |^(ok|FAIL)'
