#!/usr/bin/env bash
# Runs inside images/Dockerfile's runtime stage (as root, during `docker build`): installs
# PostgreSQL $PG_MAJOR + PostGIS + TimescaleDB, the old majors in $PG_OLD_MAJORS (+ PostGIS),
# Patroni + python3-consul and WAL-G, then trims the image. Build args arrive as env vars.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
: "${PG_MAJOR:?}" "${PACKAGE_SOURCE:=debian}" "${PG_OLD_MAJORS:=}" "${OLD_MAJORS_JIT:=false}"
: "${WALG_SOURCE:=auto}" "${WALG_URL:=}" "${WALG_SHA256:=}" "${DEBIAN_MIRROR:=}"
here=$(cd "$(dirname "$0")" && pwd)
. /etc/os-release
base_suite=$VERSION_CODENAME # trixie

die() { echo "install-packages: $*" >&2; exit 1; }
case "$PACKAGE_SOURCE" in debian|upstream) ;; *) die "PACKAGE_SOURCE=$PACKAGE_SOURCE: expected debian or upstream" ;; esac
case "$WALG_SOURCE" in auto|release|local|none) ;; *) die "WALG_SOURCE=$WALG_SOURCE: expected auto, release, local or none" ;; esac
for m in $PG_MAJOR $PG_OLD_MAJORS; do
  [[ $m =~ ^[0-9]+$ ]] || die "PostgreSQL major '$m' (PG_MAJOR/PG_OLD_MAJORS): expected a number such as 17"
done

mirror=$DEBIAN_MIRROR
[ -n "$mirror" ] || mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

# Keep downloaded .debs in the (BuildKit cache) archives dir during this build only.
rm -f /etc/apt/apt.conf.d/docker-clean
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >/etc/apt/apt.conf.d/90pgnode-keep-debs
cat >/etc/apt/apt.conf.d/90pgnode-lean <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
CFG
# Debian's postgresql-common must not create a "main" cluster: pgnode/Patroni own PGDATA.
mkdir -p /etc/postgresql-common/createcluster.d
echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/pgnode.conf

# Debian suite that ships a PostgreSQL major installable on this base (debian source).
suite_for_major() {
  case "$1" in
    17) echo trixie ;;
    15) echo bookworm ;;
    *) return 1 ;;
  esac
}

pkgs=(patroni python3-consul python3-psycopg2 ca-certificates procps less)
old_pkgs=()
if [ "$PACKAGE_SOURCE" = debian ]; then
  s=$(suite_for_major "$PG_MAJOR") && [ "$s" = "$base_suite" ] ||
    die "PG_MAJOR=$PG_MAJOR is not in Debian $base_suite's archive; use PACKAGE_SOURCE=upstream (Debian mode: 17)"
  pkgs+=("postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-postgis-3" "postgresql-$PG_MAJOR-postgis-3-scripts"
         "postgresql-$PG_MAJOR-timescaledb")
  pins=""
  for m in $PG_OLD_MAJORS; do
    s=$(suite_for_major "$m") ||
      die "PG_OLD_MAJORS: PostgreSQL $m is not installable from Debian's archive on $base_suite; use PACKAGE_SOURCE=upstream (Debian mode: 15)"
    if [ "$s" != "$base_suite" ] && [ ! -f "/etc/apt/sources.list.d/$s.sources" ]; then
      # Older suite with a low pin: only packages asked for by name (and their missing
      # dependencies) come from it; everything else stays on $base_suite.
      printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" "$s" >"/etc/apt/sources.list.d/$s.sources"
      pins+=$(printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n\n' "$s")$'\n'
    fi
    old_pkgs+=("postgresql-$m/$s" "postgresql-$m-postgis-3/$s" "postgresql-$m-postgis-3-scripts/$s")
  done
  [ -z "$pins" ] || printf '%s' "$pins" >/etc/apt/preferences.d/pgnode-old-suites
  apt-get update -qq
else
  # Upstream: PostgreSQL's apt repository (every major, PostGIS) and TimescaleDB's community
  # edition (compression, retention policies). Keys are checked against pinned fingerprints.
  apt-get update -qq
  apt-get install -y -qq curl gnupg >/dev/null
  fetch_key() { # url fingerprint(optional) out
    curl -fsSL "$1" | gpg --dearmor >"$3"
    local got; got=$(gpg --show-keys --with-colons "$3" | awk -F: '/^fpr:/{print $10; exit}')
    echo "install-packages: signing key $1: fingerprint $got"
    [ -z "$2" ] || [ "$got" = "$2" ] || die "signing key from $1 has fingerprint $got, expected $2"
  }
  fetch_key https://www.postgresql.org/media/keys/ACCC4CF8.asc "${PGDG_KEY_FPR:-}" /usr/share/keyrings/pgdg.gpg
  fetch_key https://packagecloud.io/timescale/timescaledb/gpgkey "${TIMESCALEDB_KEY_FPR:-}" /usr/share/keyrings/timescaledb.gpg
  printf 'Types: deb\nURIs: https://apt.postgresql.org/pub/repos/apt\nSuites: %s-pgdg\nComponents: main\nSigned-By: /usr/share/keyrings/pgdg.gpg\n' \
    "$base_suite" >/etc/apt/sources.list.d/pgdg.sources
  printf 'Types: deb\nURIs: https://packagecloud.io/timescale/timescaledb/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/timescaledb.gpg\n' \
    "$base_suite" >/etc/apt/sources.list.d/timescaledb.sources
  apt-get update -qq
  pkgs+=("postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-postgis-3" "postgresql-$PG_MAJOR-postgis-3-scripts"
         "timescaledb-2-postgresql-$PG_MAJOR" "timescaledb-tools")
  for m in $PG_OLD_MAJORS; do
    old_pkgs+=("postgresql-$m" "postgresql-$m-postgis-3" "postgresql-$m-postgis-3-scripts")
    # Volumes with TimescaleDB need the extension's library in the old major for pg_upgrade.
    old_pkgs+=("timescaledb-2-postgresql-$m")
  done
fi

apt-get install -y -qq "${pkgs[@]}" "${old_pkgs[@]}" >/dev/null
[ "$PACKAGE_SOURCE" = upstream ] && apt-get purge -y -qq --auto-remove curl gnupg >/dev/null

# The server major wins for client tools (psql, pg_dump...).
for b in /usr/lib/postgresql/"$PG_MAJOR"/bin/*; do ln -sf "$b" /usr/local/bin/; done
/usr/lib/postgresql/"$PG_MAJOR"/bin/postgres --version
for m in $PG_OLD_MAJORS; do /usr/lib/postgresql/"$m"/bin/postgres --version; done

# Old majors only serve pg_upgrade: drop their JIT provider and LLVM unless asked to keep it.
if [ "$OLD_MAJORS_JIT" != true ]; then
  keep_llvm=$(ldd /usr/lib/postgresql/"$PG_MAJOR"/lib/llvmjit.so 2>/dev/null | awk '/libLLVM/{print $3}' || true)
  for m in $PG_OLD_MAJORS; do
    lib=/usr/lib/postgresql/$m/lib
    llvm=$(ldd "$lib/llvmjit.so" 2>/dev/null | awk '/libLLVM/{print $3}' || true)
    rm -rf "$lib"/llvmjit*.so "$lib"/bitcode
    if [ -n "$llvm" ] && [ "$llvm" != "$keep_llvm" ]; then
      real=$(readlink -f "$llvm")
      # Nothing else may link it (checked), then delete the library's files; the package
      # stays registered so apt sees no broken dependency in derived images.
      if ! grep -rlqs --include='*.so*' "$(basename "$real")" /usr/lib/postgresql /usr/lib/python3* 2>/dev/null; then
        echo "install-packages: PostgreSQL $m: dropping JIT ($(du -sh "$real" | cut -f1) $(basename "$real"))"
        rm -f "$real" "$llvm"
      fi
    fi
  done
fi

# WAL-G.
walg_local=""
for f in "$here"/walg/wal-g "$here"/walg/wal-g.tar.gz; do [ -f "$f" ] && walg_local=$f && break; done
if [ "$WALG_SOURCE" = auto ]; then
  if [ -n "$walg_local" ]; then WALG_SOURCE=local; else WALG_SOURCE=none; fi
fi
install_walg() { # file (binary or tarball)
  local tmp; tmp=$(mktemp -d)
  if tar -tzf "$1" >/dev/null 2>&1; then
    tar -xzf "$1" -C "$tmp"
    local bin; bin=$(find "$tmp" -type f -name 'wal-g*' | head -1)
    [ -n "$bin" ] || die "no wal-g binary inside $1"
    install -m 0755 "$bin" /usr/local/bin/wal-g
  else
    install -m 0755 "$1" /usr/local/bin/wal-g
  fi
  rm -rf "$tmp"
  /usr/local/bin/wal-g --version || die "the installed wal-g does not run on $base_suite (missing libraries?)"
}
case "$WALG_SOURCE" in
  local)
    [ -n "$walg_local" ] || die "WALG_SOURCE=local: put the binary at images/walg/wal-g (or images/walg/wal-g.tar.gz)"
    install_walg "$walg_local" ;;
  release)
    [[ $WALG_SHA256 =~ ^[0-9a-f]{64}$ ]] || die "WALG_SHA256='$WALG_SHA256': expected the 64 hex digit sha256 of $WALG_URL"
    apt-get install -y -qq curl >/dev/null
    curl -fsSL -o /tmp/wal-g.tar.gz "$WALG_URL"
    echo "$WALG_SHA256  /tmp/wal-g.tar.gz" | sha256sum -c - || die "WAL-G download $WALG_URL does not match WALG_SHA256"
    apt-get purge -y -qq --auto-remove curl >/dev/null
    install_walg /tmp/wal-g.tar.gz
    rm -f /tmp/wal-g.tar.gz ;;
  none)
    echo "install-packages: no WAL-G in this image (pgnode reports backups as unavailable)" ;;
esac

# Directories pgnode uses; PostgreSQL's files belong to postgres.
install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
install -d -o postgres -g postgres -m 0755 /var/lib/postgresql /run/postgresql
install -d -o postgres -g postgres -m 0700 /etc/pgnode
install -d -m 0755 /run/pgnode

# Trim: no package lists, docs, man pages, caches or python bytecode we can regenerate.
rm -f /etc/apt/apt.conf.d/90pgnode-keep-debs
printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >/etc/apt/apt.conf.d/docker-clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/log/*.log \
  /var/log/apt/* /tmp/* /var/cache/debconf/*-old /usr/share/postgresql/*/man
echo "install-packages: done"
