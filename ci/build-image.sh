#!/usr/bin/env bash
# Builds the pgnode image (images/Dockerfile) when it is missing or its inputs changed.
# Inputs = images/ + the Go sources pgnode is built from + the build arguments; their hash
# is the image label org.pgnode.inputs, so a re-run with nothing changed takes a second.
#
# Usage: bash ci/build-image.sh [--force] [extra docker build args...]
#   PGNODE_IMAGE    tag to build (default pgnode:pg$PG_MAJOR)
#   PG_MAJOR        default 17;  PG_OLD_MAJORS  default "15"
#   PACKAGE_SOURCE  debian (default) | upstream
#   WALG_SOURCE     auto (default) | release | local | none  (WALG_URL, WALG_SHA256 for release)
#   PGNODE_SRC      worktree (default): build the Go code as it is on disk; a git revision
#                   (e.g. HEAD): build the committed Go code of that revision, with images/
#                   from the work tree (useful while others' uncommitted code is mid-edit)
# Needs the FROM images: with no registry, run ci/build-base.sh first (ci/setup-images.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

force=0
if [ "${1:-}" = --force ]; then force=1; shift; fi
pg_major=${PG_MAJOR:-17}
old_majors=${PG_OLD_MAJORS-15}
src=${PACKAGE_SOURCE:-debian}
image=${PGNODE_IMAGE:-pgnode:pg$pg_major}

args=(--build-arg "PG_MAJOR=$pg_major" --build-arg "PG_OLD_MAJORS=$old_majors"
      --build-arg "PACKAGE_SOURCE=$src" --build-arg "WALG_SOURCE=${WALG_SOURCE:-auto}")
[ -z "${WALG_URL:-}" ] || args+=(--build-arg "WALG_URL=$WALG_URL")
[ -z "${WALG_SHA256:-}" ] || args+=(--build-arg "WALG_SHA256=$WALG_SHA256")
[ -z "${BASE_IMAGE:-}" ] || args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -z "${GO_IMAGE:-}" ] || args+=(--build-arg "GO_IMAGE=$GO_IMAGE")
args+=("$@")

ctx=.
if [ "${PGNODE_SRC:-worktree}" != worktree ]; then
  ctx=$(mktemp -d /var/tmp/pgnode-ctx.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  git archive "$PGNODE_SRC" | tar -x -C "$ctx"
  rm -rf "$ctx/images" && cp -a images "$ctx/images"
fi

# The inputs: every file of images/ (including a dropped-in WAL-G), the Go sources and module
# files outside ci/ (tests excluded), the build arguments and the FROM images' ids.
base_ids=$(docker image inspect -f '{{.Id}}' "${BASE_IMAGE:-debian:trixie-slim}" "${GO_IMAGE:-golang:1.26-trixie}" 2>/dev/null || true)
hash=$(cd "$ctx" && {
  find images go.mod go.sum -type f -print0 2>/dev/null
  find . -path ./ci -prune -o -path ./.git -prune -o -name '*.go' ! -name '*_test.go' -type f -print0
} | LC_ALL=C sort -z | xargs -0 sha256sum | { cat; printf '%s\n' "${args[@]}" "$base_ids"; } | sha256sum | cut -c1-16)

if [ "$force" != 1 ] &&
  [ "$(docker image inspect -f '{{index .Config.Labels "org.pgnode.inputs"}}' "$image" 2>/dev/null || true)" = "$hash" ]; then
  echo "build-image: $image is up to date ($hash)"
  exit 0
fi

start=$(date +%s)
echo "build-image: building $image ($hash)"
log=$(mktemp /tmp/pgnode-build-image.XXXXXX.log)
if ! docker buildx build --progress=plain --load -f "$ctx/images/Dockerfile" -t "$image" \
    --build-arg "INPUTS_HASH=$hash" "${args[@]}" "$ctx" >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "build-image: docker build failed; full log: $log" >&2
  exit 1
fi
grep -E 'install-packages:|PostgreSQL\) [0-9]' "$log" | sed 's/^#[0-9]* [0-9.]* /  /' || true
rm -f "$log"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "build-image: $image built in $(( $(date +%s) - start ))s, $(( size / 1000000 )) MB uncompressed"
