#!/usr/bin/env bash
# Builds the Debian base image without a registry: debootstrap (variant minbase) a Debian
# root filesystem from Debian's archive, trim it like Debian's "slim" images (no docs, man
# pages or locales; apt keeps no package lists or .debs), and `docker import` it under the
# tag images/Dockerfile's FROM expects. Where a registry exists nobody needs this script:
# the same Dockerfile pulls the official image of the same name.
#
# Usage: bash ci/build-base.sh [--force]
#   BASE_SUITE   Debian suite (default trixie)
#   BASE_TAG     image tag to create (default debian:$BASE_SUITE-slim)
#   DEBIAN_MIRROR  archive URL (default: the one in the host's apt sources, else Debian's CDN)
#   PGNODE_CACHE   cache dir for downloaded .debs (default /var/cache/pgnode; rebuildable:
#                  deleting it only costs a re-download)
#   GO_TAG       Go builder image to create (default golang:<host go major.minor>-$BASE_SUITE)
#   GOROOT_SRC   Go toolchain copied into it (default: the host's, /usr/local/go)
# The Go builder stands in for the official golang image of the same tag: the base plus the
# host's Go toolchain (the same release CI uses), GOPATH=/go like upstream. Modules are
# fetched from the Go module proxy during the build, as with the official image; the builder
# trusts the host's extra CA certificates (/usr/local/share/ca-certificates, e.g. a
# TLS-inspecting egress proxy) so that works behind such a proxy. Only the build stage
# uses this image: nothing of it reaches the pgnode image.
# Idempotent: skips each image whose label carries this script's input hash.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=${BASE_SUITE:-trixie}
tag=${BASE_TAG:-debian:$suite-slim}
cache=${PGNODE_CACHE:-/var/cache/pgnode}
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    awk '{print $2}' | head -1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

goroot=${GOROOT_SRC:-/usr/local/go}
gover=$("$goroot/bin/go" env GOVERSION) # go1.26.8
gominor=$(echo "${gover#go}" | cut -d. -f1,2)
gotag=${GO_TAG:-golang:$gominor-$suite}

hash=$( { cat "$0"; echo "$suite"; } | sha256sum | cut -c1-16)
label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

build_go() {
  local gohash
  gohash="$hash-$gover-$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-8)"
  if [ "${force:-}" != 1 ] && [ "$(label "$gotag" org.pgnode.go.hash)" = "$gohash" ]; then
    echo "build-base: $gotag is up to date ($gohash)"
    return
  fi
  local t0 ctx
  t0=$(date +%s)
  ctx=$(mktemp -d /var/tmp/pgnode-go.XXXXXX)
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<DF
FROM $tag
COPY go /usr/local/go
COPY ca/ /usr/local/share/ca-certificates/
ENV GOLANG_VERSION=${gover#go} GOPATH=/go GOTOOLCHAIN=local PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null && update-ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir -p /go/bin /go/src && go version
WORKDIR /go
LABEL org.pgnode.go.hash=$gohash
DF
  # Stream the context (Dockerfile + the toolchain) without copying the toolchain on disk.
  tar -C "$ctx" -c Dockerfile ca -C "$(dirname "$goroot")" --exclude=go/pkg/obj --exclude=go/test \
    --transform "s,^$(basename "$goroot"),go," "$(basename "$goroot")" |
    docker build -q -t "$gotag" - >/dev/null
  rm -rf "$ctx"
  echo "build-base: $gotag built in $(( $(date +%s) - t0 ))s"
}

force=0
[ "${1:-}" = --force ] && force=1
if [ "$force" != 1 ] && [ "$(label "$tag" org.pgnode.base.hash)" = "$hash" ]; then
  echo "build-base: $tag is up to date ($hash)"
  build_go
  exit 0
fi

start=$(date +%s)
work=$(mktemp -d /var/tmp/pgnode-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$cache/debootstrap-$suite"

echo "build-base: debootstrap $suite (minbase) from $mirror"
debootstrap --variant=minbase --cache-dir="$cache/debootstrap-$suite" \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2
  echo "build-base: debootstrap failed (full log above)" >&2
  exit 1
}

# Trim like Debian's slim images: dpkg excludes docs/man/locales for every later install.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
cat >"$root/etc/apt/apt.conf.d/docker-no-recommends" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
CFG
# deb822 sources like the official image (the Dockerfile adds other suites itself).
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/tmp/* \
  "$root"/var/cache/debconf/*-old
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$root/etc/machine-id"
echo "build-base: importing as $tag"
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --change "LABEL org.pgnode.base.hash=$hash" \
  --message "debootstrap --variant=minbase $suite (pgnode ci/build-base.sh)" - "$tag" >/dev/null
echo "build-base: $tag built in $(( $(date +%s) - start ))s, $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
build_go
