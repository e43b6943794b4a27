#!/usr/bin/env bash
# `scripts/postgres.sh`: makes sure a PostgreSQL server answers on 127.0.0.1:5432 with trust
# authentication for local TCP (machines of this kind run one); elsewhere it installs and
# starts Debian's cluster. `scripts/postgres.sh cleanup` drops the tests' databases.
set -euo pipefail
PSQL=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq)

if [ "${1:-}" = cleanup ]; then
    "${PSQL[@]}" -c "select datname from pg_database where datname like 'mixpool\_test\_%'" |
        while read -r db; do "${PSQL[@]}" -c "drop database if exists \"$db\" with (force)"; done
    exit 0
fi

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
ready && exit 0
if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /etc/postgresql | sort -V | tail -1)
hba=/etc/postgresql/$version/main/pg_hba.conf
if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
for _ in $(seq 30); do ready && exit 0; sleep 1; done
echo "PostgreSQL did not start on 127.0.0.1:5432" >&2
exit 1
