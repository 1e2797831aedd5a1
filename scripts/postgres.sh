#!/usr/bin/env bash
# Start a local PostgreSQL for the store's conformance tests and print its URL (make postgres).
# Installs Debian's postgresql when missing (needs root, as CI is). Prints nothing and exits 0
# when it cannot (then the PostgreSQL cases are not run outside CI).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "note: PostgreSQL tests need root to install/start a server; set RETUNE_TEST_POSTGRES_URL" >&2
  exit 0
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
pg_lsclusters -h | awk '{print $4}' | grep -q online || pg_ctlcluster "$version" main start >&2
as_postgres() { su postgres -c "$1"; }
as_postgres "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='retune'\"" | grep -q 1 \
  || as_postgres "psql -qc \"CREATE ROLE retune LOGIN PASSWORD 'retune'\"" >&2
# one database per pytest-xdist worker (tests/_postgres.py): retune_test, retune_test_gw0, ...
for db in retune_test retune_test_gw{0..7}; do
  as_postgres "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='$db'\"" | grep -q 1 \
    || as_postgres "createdb -O retune $db" >&2
done
echo "postgresql+psycopg://retune:retune@127.0.0.1:5432/retune_test"
