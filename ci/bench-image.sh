#!/usr/bin/env bash
# Measures the image and the demo and prints a table (nothing is asserted):
#   image size uncompressed and `docker save | zstd` compressed, next to published sizes;
#   build times (base from scratch, image without layer cache) when PGNODE_BENCH_BUILD=1;
#   median/min/max over PGNODE_BENCH_TRIALS (default 5) of: demo cold start to 3 healthy
#   nodes, write-unavailability after `docker kill` of the leader, planned switchover window.
# Usage: bash ci/bench-image.sh      (takes ~10 minutes with 5 trials)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH GOFLAGS=${GOFLAGS:--mod=mod}
image=${PGNODE_IMAGE:-pgnode:pg17}

base_s="-" image_s="-"
if [ "${PGNODE_BENCH_BUILD:-0}" = 1 ]; then
  t0=$(date +%s); bash ci/build-base.sh --force >/dev/null; base_s=$(( $(date +%s) - t0 ))
  t0=$(date +%s); bash ci/build-image.sh --force --no-cache >/dev/null; image_s=$(( $(date +%s) - t0 ))
fi
bash ci/setup-images.sh >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$image")
zsize=$(docker save "$image" | zstd -q -T0 -3 -c | wc -c)
out=$(mktemp)
go test -count=1 -run '^$' -bench BenchmarkDemo -benchtime 1x -timeout 60m ./ci/e2e/ | tee "$out" >&2

row() { awk -v n="$1" '$1=="BENCH" && $2==n {printf "%s s (min %s, max %s, %s)", $3, $4, $5, $6}' "$out"; }
cat <<TABLE

| measure | value |
|---|---|
| image $image uncompressed | $(( size / 1000000 )) MB |
| image $image, docker save \| zstd -3 | $(( zsize / 1000000 )) MB |
| timescaledb-docker-ha pg16.4-ts2.16.1-all-oss (published) | 4050 MB uncompressed, 2830 MB compressed |
| Spilo (published) | no published size found |
| base image build from scratch (debootstrap + import + Go builder) | ${base_s} s |
| pgnode image build without layer cache | ${image_s} s |
| demo cold start to 3 healthy nodes | $(row cold-start-s) |
| leader docker kill -> writes on the new leader | $(row failover-kill-s) |
| planned switchover write gap | $(row switchover-s) |
TABLE
rm -f "$out"
