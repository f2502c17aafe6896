#!/usr/bin/env bash
# Builds the demo's helper images from the local Debian base, when missing or changed:
#   pgnode-consul:1.8.7  Consul from Debian's archive (images/consul/Dockerfile)
#   pgnode-minio:local   MinIO built by ci/setup-minio.sh (images/minio/Dockerfile); skipped
#                        with a note when that binary is not there (the demo then runs
#                        without its "s3" profile).
# Env: CONSUL_IMAGE, MINIO_IMAGE (tags), PGNODE_MINIO_DIR (where setup-minio.sh put minio).
set -euo pipefail
cd "$(dirname "$0")/.."
consul_tag=${CONSUL_IMAGE:-pgnode-consul:1.8.7}
minio_tag=${MINIO_IMAGE:-pgnode-minio:local}
minio_bin=${PGNODE_MINIO_DIR:-/var/cache/pgnode/minio}/bin/minio
base_id=$(docker image inspect -f '{{.Id}}' debian:trixie-slim)

label() { docker image inspect -f "{{index .Config.Labels \"org.pgnode.inputs\"}}" "$1" 2>/dev/null || true; }

hash=$( { cat images/consul/Dockerfile; echo "$base_id"; } | sha256sum | cut -c1-16)
if [ "$(label "$consul_tag")" = "$hash" ]; then
  echo "build-aux-images: $consul_tag is up to date"
else
  t0=$(date +%s)
  docker buildx build -q --load -t "$consul_tag" --label "org.pgnode.inputs=$hash" images/consul >/dev/null
  echo "build-aux-images: $consul_tag built in $(( $(date +%s) - t0 ))s"
fi

if [ ! -x "$minio_bin" ]; then
  echo "build-aux-images: no MinIO binary at $minio_bin (run ci/setup-minio.sh); the demo runs without S3"
  exit 0
fi
hash=$( { cat images/minio/Dockerfile; sha256sum <"$minio_bin"; echo "$base_id"; } | sha256sum | cut -c1-16)
if [ "$(label "$minio_tag")" = "$hash" ]; then
  echo "build-aux-images: $minio_tag is up to date"
  exit 0
fi
t0=$(date +%s)
ctx=$(mktemp -d /var/tmp/pgnode-minio-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp images/minio/Dockerfile "$ctx/"
ln "$minio_bin" "$ctx/minio" 2>/dev/null || cp "$minio_bin" "$ctx/minio"
docker buildx build -q --load -t "$minio_tag" --label "org.pgnode.inputs=$hash" "$ctx" >/dev/null
echo "build-aux-images: $minio_tag built in $(( $(date +%s) - t0 ))s"
