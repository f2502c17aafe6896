#!/usr/bin/env bash
# The whole test suite: installs what it needs (ci/setup-*.sh, each idempotent), then runs
# every Go test with the real components. Usage: bash ci/test.sh [go test flags/packages]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
export GOFLAGS=${GOFLAGS:--mod=mod}

echo "== setup"
bash ci/setup-host.sh
for s in ci/setup-*.sh; do
  [ "$s" = ci/setup-host.sh ] && continue
  echo "== $s"
  bash "$s"
done

echo "== go vet"
go vet ./...

echo "== go test"
pkgs=("$@")
[ ${#pkgs[@]} -eq 0 ] && pkgs=(./...)
# Packages run one at a time (-p 1): the integration suites start real clusters whose
# failover timings would suffer from sharing two cores with each other.
go test -p 1 -count=1 -timeout 85m "${pkgs[@]}" 2>&1 | tee "${PGNODE_TEST_LOG:-/tmp/pgnode-go-test.log}"
