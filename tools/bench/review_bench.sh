#!/usr/bin/env bash
# Review server benchmark: a 1,000,000-item project with a model candidate per item, and 32
# simulated reviewers doing next-item -> accept loops on 127.0.0.1 for a bounded time.
#
#   cargo build --release -p mmloop
#   cargo build --release -p mmloop-server --example review_serve --example review_load
#   tools/bench/review_bench.sh            # DATA=/tmp/bench1m WORK=/tmp/mmloop-review-bench
#
# Reuses $DATA (made by gen_vqa_jsonl.py when missing) and the project in $WORK when it is
# there (decided items leave the queue, so later runs review the next-riskiest items).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-/tmp/bench1m}
WORK=${WORK:-/tmp/mmloop-review-bench}
MMLOOP=${MMLOOP:-target/release/mmloop}
SERVE=${SERVE:-target/release/examples/review_serve}
LOAD=${LOAD:-target/release/examples/review_load}
REVIEWERS=${REVIEWERS:-32}
RUN_SECONDS=${RUN_SECONDS:-30}
QUERY=${QUERY:-}

[ -f "$DATA/vqa.jsonl" ] || python3 tools/bench/gen_vqa_jsonl.py "$DATA" --items 1000000 --images 200000
if [ ! -f "$WORK/p/.mmloop/mmloop.db" ]; then
  mkdir -p "$WORK"
  "$MMLOOP" init "$WORK/p" >/dev/null
  "$MMLOOP" import "$WORK/p" "$DATA/vqa.jsonl"
  python3 tools/bench/add_candidates.py "$WORK/p/.mmloop/mmloop.db"
fi

rm -f "$WORK/serve.out" "$WORK/serve.err"
"$SERVE" "$WORK/p" > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
until [ -f "$WORK/serve.out" ] && [ "$(wc -l < "$WORK/serve.out")" -ge 2 ]; do
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.err"; exit 1; }
  sleep 0.5
done
cat "$WORK/serve.err"
URL=$(sed -n 1p "$WORK/serve.out")
TOKEN=$(sed -n 2p "$WORK/serve.out")
"$LOAD" --url "$URL" --token "$TOKEN" --reviewers "$REVIEWERS" --seconds "$RUN_SECONDS" ${QUERY:+--query "$QUERY"} "$@"
