#!/usr/bin/env bash
# Review servers on PostgreSQL: SERVERS `review_serve` processes on one PostgreSQL project (a
# folder each, the same database), REVIEWERS closed-loop reviewers spread over them
# (next-item -> accept), next to one process on the same project in SQLite, same run.
#
#   cargo build --release -p mmloop
#   cargo build --release -p mmloop-server --example review_serve --example review_load
#   tools/pg_test_server.sh start /tmp/pg
#   SERVER=postgres://mmloop@127.0.0.1:55432/postgres tools/bench/review_pg_bench.sh
#
# The project: $DATA's vqa.jsonl imported with a model candidate per item
# (tools/bench/add_candidates.py) into SQLite, then moved with `mmloop migrate` (so both runs
# review the same items in the same risk order).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-/tmp/bench1m}
WORK=${WORK:-/tmp/mmloop-review-pg-bench}
MMLOOP=${MMLOOP:-target/release/mmloop}
SERVE=${SERVE:-target/release/examples/review_serve}
LOAD=${LOAD:-target/release/examples/review_load}
SERVERS=${SERVERS:-3}
REVIEWERS=${REVIEWERS:-32}
RUN_SECONDS=${RUN_SECONDS:-30}
SERVER=${SERVER:?SERVER=postgres://user@host:port/maintenance-db}
DB=mmloop_review_bench

[ -f "$DATA/vqa.jsonl" ] || python3 tools/bench/gen_vqa_jsonl.py "$DATA" --items 1000000 --images 200000
rm -rf "$WORK"; mkdir -p "$WORK"
"$MMLOOP" init "$WORK/lite" >/dev/null
"$MMLOOP" import "$WORK/lite" "$DATA/vqa.jsonl" >/dev/null
python3 tools/bench/add_candidates.py "$WORK/lite/.mmloop/mmloop.db"
psql -q "$SERVER" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
cp -r "$WORK/lite" "$WORK/pg0"
"$MMLOOP" migrate "$WORK/pg0" --to "${SERVER%/*}/$DB" >/dev/null
for i in $(seq 1 $((SERVERS - 1))); do mkdir -p "$WORK/pg$i"; cp "$WORK/pg0/mmloop.toml" "$WORK/pg$i/"; done

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done' EXIT
serve() { # folder -> prints URL and token
  "$SERVE" "$1" > "$1.out" 2> "$1.err" &
  PIDS+=($!)
  until [ -f "$1.out" ] && [ "$(wc -l < "$1.out")" -ge 2 ]; do sleep 0.3; done
}

echo "== SQLite, 1 process, $REVIEWERS reviewers"
serve "$WORK/lite"
"$LOAD" --url "$(sed -n 1p "$WORK/lite.out")" --token "$(sed -n 2p "$WORK/lite.out")" \
  --reviewers "$REVIEWERS" --seconds "$RUN_SECONDS" "$@"
kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}" || true; PIDS=()

echo "== PostgreSQL, $SERVERS processes, $REVIEWERS reviewers"
URLS=()
for i in $(seq 0 $((SERVERS - 1))); do serve "$WORK/pg$i"; URLS+=("$(sed -n 1p "$WORK/pg$i.out")"); done
"$LOAD" --url "$(IFS=,; echo "${URLS[*]}")" --token "$(sed -n 2p "$WORK/pg0.out")" \
  --reviewers "$REVIEWERS" --seconds "$RUN_SECONDS" "$@"
