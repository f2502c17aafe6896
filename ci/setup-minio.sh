#!/usr/bin/env bash
# Builds the MinIO server (real S3 for the backup tests) from the Go module proxy into a
# cache directory that survives between runs on the same machine. Idempotent: when the
# binary is already there and runs, nothing is done. The build takes ~6.5 min on 2 cores.
#   PGNODE_MINIO_DIR  cache directory (default /var/cache/pgnode/minio); the binary is
#                     $PGNODE_MINIO_DIR/bin/minio, which ci/testenv.MinioBinary finds.
set -euo pipefail
export PATH=/usr/local/go/bin:$PATH
version=v0.0.0-20260212201848-7aac2a2c5b7c
dir=${PGNODE_MINIO_DIR:-/var/cache/pgnode/minio}
bin=$dir/bin/minio
stamp=$dir/bin/.version

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ] && "$bin" --version >/dev/null 2>&1; then
  echo "minio: cached at $bin"
  exit 0
fi

mkdir -p "$dir/bin"
echo "minio: building github.com/minio/minio@$version into $dir/bin (takes several minutes)"
tmp=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Build into a temporary GOBIN, then move the binary in place so an interrupted build never
# leaves a half-written binary behind.
GOBIN=$tmp GOFLAGS=-mod=mod go install "github.com/minio/minio@$version"
mv -f "$tmp/minio" "$bin"
echo "$version" >"$stamp"
"$bin" --version | head -1
