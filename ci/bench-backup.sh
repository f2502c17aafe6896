#!/usr/bin/env bash
# Measures the backup path with real components and prints a table (nothing is asserted):
#   - backup-push / backup-fetch throughput (MB/s) of a pgbench database next to a raw
#     `tar | zstd` of the same data directory on the same disk (and its unpacking),
#   - time to restore to a recovery target time (fetch + WAL replay + promotion),
#   - RPO observed with the chosen archive_timeout: a writer commits a row every 100 ms, the
#     node is lost (postmaster killed, its pg_wal discarded), the newest row that survives a
#     restore from S3 tells how much committed work was lost.
# Needs: wal-g on PATH (else prints one SKIP line), MinIO (ci/setup-minio.sh), PostgreSQL 15,
# curl, zstd. Runs as root; PostgreSQL runs as postgres. Everything listens on loopback.
#   SCALE=50 ARCHIVE_TIMEOUT=60 RPO_SECONDS=150 bash ci/bench-backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-50}
ARCHIVE_TIMEOUT=${ARCHIVE_TIMEOUT:-60}
RPO_SECONDS=${RPO_SECONDS:-$((ARCHIVE_TIMEOUT * 5 / 2))}
PGBIN=/usr/lib/postgresql/15/bin
MINIO=${PGNODE_MINIO_DIR:-/var/cache/pgnode/minio}/bin/minio

if ! command -v wal-g >/dev/null; then
  echo "SKIP: wal-g not on PATH; the backup benchmark needs a wal-g binary"
  exit 0
fi
[ -x "$MINIO" ] || bash ci/setup-minio.sh
for p in curl zstd tar; do command -v $p >/dev/null || { echo "bench-backup: $p is missing"; exit 1; }; done

WORK=$(mktemp -d /var/tmp/pgnode-bench-backup.XXXXXX)
chown postgres: "$WORK"
chmod 755 "$WORK"
S3PORT=22901 PGPORT=22902 RPORT=22903
PIDS=()
cleanup() {
  for d in "$WORK"/data "$WORK"/fetch "$WORK"/pitr "$WORK"/rpo; do
    [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
pg() { runuser -u postgres -- "$@"; }
psqlc() { pg "$PGBIN/psql" -h "$WORK" -p "${2:-$PGPORT}" -U postgres -XAtq -v ON_ERROR_STOP=1 -c "$1" postgres; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mbps() { awk -v s="$1" -v t="$2" 'BEGIN { printf "%.1f", s / 1048576 / t }'; }
mb() { awk -v s="$1" 'BEGIN { printf "%d", s / 1048576 }'; }

# MinIO + bucket.
KEY=pgnodebench SECRET=pgnode-bench-secret-123456
MINIO_ROOT_USER=$KEY MINIO_ROOT_PASSWORD=$SECRET MINIO_BROWSER=off HOME=$WORK \
  "$MINIO" server --quiet --address 127.0.0.1:$S3PORT --console-address 127.0.0.1:22904 "$WORK/s3" >"$WORK/minio.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$S3PORT/minio/health/ready" && break; sleep 0.2; done
curl -fs --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" -X PUT "http://127.0.0.1:$S3PORT/bench" >/dev/null

walgconf() { # file prefix
  cat >"$1" <<JSON
{"WALG_S3_PREFIX": "$2", "AWS_ACCESS_KEY_ID": "$KEY", "AWS_SECRET_ACCESS_KEY": "$SECRET",
 "AWS_ENDPOINT": "http://127.0.0.1:$S3PORT", "AWS_REGION": "us-east-1", "AWS_S3_FORCE_PATH_STYLE": "true",
 "WALG_COMPRESSION_METHOD": "zstd", "PGHOST": "$WORK", "PGPORT": "$PGPORT", "PGUSER": "postgres", "PGDATABASE": "postgres"}
JSON
  chown postgres: "$1"; chmod 600 "$1"
}
walgconf "$WORK/walg.json" s3://bench/pgnode/bench/pg15
WALG="$(command -v wal-g) --config $WORK/walg.json"

pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --data-checksums -A trust >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PGPORT
unix_socket_directories = '$WORK'
listen_addresses = ''
archive_mode = on
archive_command = '$WALG wal-push %p'
archive_timeout = ${ARCHIVE_TIMEOUT}s
CONF
pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
echo "bench-backup: pgbench -i -s $SCALE …" >&2
pg "$PGBIN/pgbench" -i -s "$SCALE" -q -h "$WORK" -p $PGPORT -U postgres postgres >/dev/null 2>&1
psqlc "CHECKPOINT" >/dev/null
SIZE=$(du -sb "$WORK/data" | cut -f1)

echo "bench-backup: raw tar | zstd …" >&2
t0=$(now); tar -cf - -C "$WORK/data" --exclude=postmaster.pid . | zstd -q -1 -T0 >"$WORK/raw.tar.zst"; t1=$(now)
RAW_PACK=$(secs "$t0" "$t1"); RAW_SIZE=$(stat -c %s "$WORK/raw.tar.zst")
mkdir "$WORK/rawx"; t0=$(now); zstd -q -d -c "$WORK/raw.tar.zst" | tar -xf - -C "$WORK/rawx"; t1=$(now)
RAW_UNPACK=$(secs "$t0" "$t1"); rm -rf "$WORK/rawx" "$WORK/raw.tar.zst"

echo "bench-backup: wal-g backup-push …" >&2
t0=$(now); pg $WALG backup-push "$WORK/data" >"$WORK/push.log" 2>&1; t1=$(now)
PUSH=$(secs "$t0" "$t1")
COMPRESSED=$(pg $WALG backup-list --json --detail 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["compressed_size"])')

echo "bench-backup: wal-g backup-fetch …" >&2
mkdir "$WORK/fetch"; chown postgres: "$WORK/fetch"; chmod 700 "$WORK/fetch"
t0=$(now); pg $WALG backup-fetch "$WORK/fetch" LATEST >"$WORK/fetch.log" 2>&1; t1=$(now)
FETCH=$(secs "$t0" "$t1"); rm -rf "$WORK/fetch"

# Restore to a target time: 30 s of pgbench after the backup, target in the middle.
echo "bench-backup: PITR …" >&2
pg "$PGBIN/pgbench" -T 15 -c 2 -h "$WORK" -p $PGPORT -U postgres postgres >/dev/null 2>&1
TARGET=$(psqlc "SELECT now()::text")
pg "$PGBIN/pgbench" -T 15 -c 2 -h "$WORK" -p $PGPORT -U postgres postgres >/dev/null 2>&1
SEG=$(psqlc "SELECT pg_walfile_name(pg_switch_wal())")
until [ "$(psqlc "SELECT coalesce(last_archived_wal,'') >= '$SEG' FROM pg_stat_archiver")" = t ]; do sleep 0.5; done
restore() { # dir port extra-conf...
  local d=$1 port=$2; shift 2
  mkdir "$d"; chown postgres: "$d"; chmod 700 "$d"
  pg $WALG backup-fetch "$d" LATEST >/dev/null 2>&1
  mv "$d/postgresql.conf" "$d/postgresql.conf.restored"; : >"$d/postgresql.auto.conf"
  { echo "port = $port"; echo "unix_socket_directories = '$WORK'"; echo "listen_addresses = ''"; echo "archive_mode = off"
    echo "restore_command = '$WALG wal-fetch %f %p'"; printf '%s\n' "$@"; } >"$d/postgresql.conf"
  touch "$d/recovery.signal"; chown -R postgres: "$d"
  pg "$PGBIN/pg_ctl" -D "$d" -l "$d.log" -w -t 3600 start >/dev/null
  until [ "$(psqlc "SELECT pg_is_in_recovery()" "$port" 2>/dev/null)" = f ]; do sleep 0.2; done
}
t0=$(now); restore "$WORK/pitr" $RPORT "recovery_target_time = '$TARGET'" "recovery_target_action = 'promote'"; t1=$(now)
PITR=$(secs "$t0" "$t1")
pg "$PGBIN/pg_ctl" -D "$WORK/pitr" -m fast -w stop >/dev/null; rm -rf "$WORK/pitr"

# RPO: a writer commits a row every 100 ms; then the node is lost.
echo "bench-backup: RPO with archive_timeout=${ARCHIVE_TIMEOUT}s (${RPO_SECONDS}s of writes) …" >&2
psqlc "CREATE TABLE rpo (at timestamptz PRIMARY KEY DEFAULT clock_timestamp())" >/dev/null
end=$(( $(date +%s) + RPO_SECONDS ))
while [ "$(date +%s)" -lt "$end" ]; do psqlc "INSERT INTO rpo DEFAULT VALUES" >/dev/null; sleep 0.1; done
LOST_AT=$(psqlc "SELECT max(at)::text FROM rpo")
COMMITTED=$(psqlc "SELECT count(*) FROM rpo")
pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null   # the node and its pg_wal are gone
restore "$WORK/rpo" $RPORT "recovery_target_action = 'promote'"
SURVIVED_AT=$(psqlc "SELECT max(at)::text FROM rpo" $RPORT)
SURVIVED=$(psqlc "SELECT count(*) FROM rpo" $RPORT)
RPO=$(psqlc "SELECT round(extract(epoch FROM '$LOST_AT'::timestamptz - '$SURVIVED_AT'::timestamptz)::numeric, 1)" $RPORT)

MB=$(mb "$SIZE")
printf '\n%-44s %12s %10s\n' "measurement (pgbench scale $SCALE, data dir ${MB} MB)" "seconds" "MB/s"
printf '%-44s %12.1f %10s\n' "raw tar | zstd -1 (local file)" "$RAW_PACK" "$(mbps "$SIZE" "$RAW_PACK")"
printf '%-44s %12.1f %10s\n' "raw zstd -d | tar -x" "$RAW_UNPACK" "$(mbps "$SIZE" "$RAW_UNPACK")"
printf '%-44s %12.1f %10s\n' "wal-g backup-push (zstd, MinIO loopback)" "$PUSH" "$(mbps "$SIZE" "$PUSH")"
printf '%-44s %12.1f %10s\n' "wal-g backup-fetch" "$FETCH" "$(mbps "$SIZE" "$FETCH")"
printf '%-44s %12.1f %10s\n' "restore to target time (fetch+replay+promote)" "$PITR" "-"
printf '%-44s %12s %10s\n' "RPO, archive_timeout=${ARCHIVE_TIMEOUT}s (work lost)" "$RPO" "-"
printf '\nraw .tar.zst %s MB, wal-g compressed %s MB; RPO: %s of %s committed rows survived\n' \
  "$(mb "$RAW_SIZE")" "$(mb "$COMPRESSED")" "$SURVIVED" "$COMMITTED"
