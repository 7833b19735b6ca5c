#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store's tests, from the distribution's packages
# (Debian: `apt-get install postgresql`), run as an unprivileged user in a temporary data
# directory, listening on 127.0.0.1 only, password-less for its one local user.
#
#   tools/pg_test_server.sh start DIR [PORT]   # prints the URL to export as MMLOOP_TEST_POSTGRES
#   tools/pg_test_server.sh stop DIR
#
# The tests create a database of their own on it for each test and drop it afterwards.
set -euo pipefail
cmd=${1:?start or stop}
dir=${2:?a directory for the data}
port=${3:-55432}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] && command -v initdb >/dev/null 2>&1; then bin=$(dirname "$(command -v initdb)"); fi
[ -n "$bin" ] || { echo "no PostgreSQL server found (Debian: apt-get install postgresql)" >&2; exit 1; }

# PostgreSQL refuses to run as root: run it as the user the packages made.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir/data" -U mmloop --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    echo "postgres://mmloop@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
