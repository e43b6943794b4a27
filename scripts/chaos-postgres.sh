#!/usr/bin/env bash
# A private PostgreSQL server for `make chaos` on 127.0.0.1:15432 (trust authentication),
# which the run may restart without touching the machine's own: `start` (prints its URL),
# `restart [fast|immediate]` (immediate is a crash: no shutdown checkpoint), `stop` (and its
# data is thrown away).
set -euo pipefail
PORT="${MIXPOOL_CHAOS_PG_PORT:-15432}"
DIR="${MIXPOOL_CHAOS_PG_DIR:-/tmp/mixpool-chaos-pg}"
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
OPTS="-p $PORT -k /tmp -c listen_addresses=127.0.0.1"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-start}" in
start)
    if [ ! -f "$DIR/PG_VERSION" ]; then
        mkdir -p "$DIR"
        [ "$(id -u)" = 0 ] && chown postgres "$DIR"
        as_postgres "$BIN/initdb" -D "$DIR" -A trust -U postgres >/dev/null
    fi
    as_postgres "$BIN/pg_ctl" -D "$DIR" -o "$OPTS" -l "$DIR/server.log" -w start >/dev/null
    ;;
restart)
    as_postgres "$BIN/pg_ctl" -D "$DIR" -m "${2:-fast}" -w stop >/dev/null
    as_postgres "$BIN/pg_ctl" -D "$DIR" -o "$OPTS" -l "$DIR/server.log" -w start >/dev/null
    ;;
stop)
    as_postgres "$BIN/pg_ctl" -D "$DIR" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    exit 0
    ;;
esac
echo "postgres://postgres@127.0.0.1:$PORT"
