#!/usr/bin/env bash
# The fleet's shared trace store: Debian's PostgreSQL, a cluster made at first start (role
# `relay`, password $POSTGRES_PASSWORD, database `trace`), reachable from the fleet network
# with SCRAM passwords, run in the foreground as the `postgres` user.
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
data=/var/lib/postgresql/fleet
if [ ! -s "$data/PG_VERSION" ]; then
  install -d -o postgres -g postgres -m 0700 "$data"
  pw=$(mktemp) && chown postgres "$pw" && printf '%s' "$POSTGRES_PASSWORD" > "$pw"
  runuser -u postgres -- "$bin/initdb" -D "$data" -U relay --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$pw" >/dev/null
  rm -f "$pw"
  echo "host all all 10.225.26.0/24 scram-sha-256" >> "$data/pg_hba.conf"
  echo "CREATE DATABASE trace;" | runuser -u postgres -- "$bin/postgres" --single -D "$data" postgres >/dev/null
fi
exec runuser -u postgres -- "$bin/postgres" -D "$data" -c listen_addresses='*' \
  -c unix_socket_directories=/tmp
