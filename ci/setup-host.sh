#!/usr/bin/env bash
# Installs, from Debian's archive only, every real component the test suite uses on the
# host: PostgreSQL 15 + PostGIS (bookworm), PostgreSQL 13 + PostGIS (bullseye, low pin, for
# pg_upgrade tests), Patroni + python3-consul, Consul (bullseye's static binary), compose v2
# (trixie's static docker-compose binary, unpacked without installing trixie's libc),
# debootstrap for the registry-less base image. Idempotent: a second run does nothing new.
set -euo pipefail

need_update=0
add_suite() { # name suite
  local f=/etc/apt/sources.list.d/pgnode-$1.sources
  if [ ! -f "$f" ]; then
    cat >"$f" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $2
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    need_update=1
  fi
}
add_suite bullseye bullseye
add_suite trixie trixie
pin=/etc/apt/preferences.d/pgnode-low-pin
if [ ! -f "$pin" ]; then
  cat >"$pin" <<'PIN'
Package: *
Pin: release n=bullseye
Pin-Priority: 100

Package: *
Pin: release n=trixie
Pin-Priority: 50
PIN
  need_update=1
fi

stamp=/var/lib/apt/pgnode-updated
if [ "$need_update" = 1 ] || [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
  apt-get update -qq
  touch "$stamp"
fi

pkgs=(postgresql-15 postgresql-15-postgis-3 postgresql-contrib patroni python3-consul
      python3-psycopg2 debootstrap iproute2 dnsutils procps)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a "main" cluster on install; the tests use their own data directories.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q .; then
  pg_lsclusters -h | while read -r ver name _; do
    pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
  done
fi

# Older major for pg_upgrade tests (bullseye, pinned low).
if [ ! -x /usr/lib/postgresql/13/bin/postgres ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql-13 postgresql-13-postgis-3 >/dev/null
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
  done
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Consul: bullseye's package is a static binary; unpack it instead of installing its deps.
if ! command -v consul >/dev/null; then
  (cd "$tmp" && apt-get download -qq consul/bullseye && dpkg -x consul_*.deb x)
  install -m 0755 "$tmp"/x/usr/bin/consul /usr/local/bin/consul
fi
# Compose v2: trixie's docker-compose is a static Go binary (a CLI plugin).
if ! docker compose version >/dev/null 2>&1; then
  (cd "$tmp" && apt-get download -qq docker-compose/trixie && dpkg -x docker-compose_*.deb y)
  bin="$tmp"/y/usr/libexec/docker/cli-plugins/docker-compose
  install -d /usr/local/lib/docker/cli-plugins
  install -m 0755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
fi
echo "setup-host: postgres $(/usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}'), patroni $(patroni --version 2>&1 | awk '{print $2}'), consul $(consul version | head -1 | awk '{print $2}'), $(docker compose version 2>&1 | head -1)"
