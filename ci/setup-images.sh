#!/usr/bin/env bash
# Everything the demo and the e2e suite need on a machine with Docker but no registry:
# buildx (trixie's docker-buildx, a static plugin, unpacked without installing trixie's
# libc), the Debian base + Go builder (ci/build-base.sh), the pgnode image
# (ci/build-image.sh) and the Consul/MinIO helper images (ci/build-aux-images.sh). Each
# step is skipped when its inputs are unchanged, so a re-run takes seconds.
# Without a reachable Docker daemon it prints one line and does nothing (the e2e tests then
# skip with the same reason).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! docker info >/dev/null 2>&1; then
  echo "setup-images: docker daemon unreachable; images not built"
  exit 0
fi
if ! docker buildx version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq docker-buildx/trixie 2>/dev/null && dpkg -x docker-buildx_*.deb x)
  install -d /usr/local/lib/docker/cli-plugins
  install -m 0755 "$tmp"/x/usr/libexec/docker/cli-plugins/docker-buildx /usr/local/lib/docker/cli-plugins/docker-buildx
fi
t0=$(date +%s)
bash ci/build-base.sh
bash ci/build-image.sh
# The demo's MinIO image needs the binary ci/setup-minio.sh builds (idempotent, cached);
# ci/test.sh would run it after this script, so run it first here.
[ ! -f ci/setup-minio.sh ] || bash ci/setup-minio.sh
bash ci/build-aux-images.sh
echo "setup-images: done in $(( $(date +%s) - t0 ))s"
