#!/usr/bin/env bash
# Runs every importer fuzz target for N seconds each (default 30), one after another, and
# prints runs, exec/s and the outcome of each. Exits non-zero if any target found a crash,
# hang (> 10 s on one input) or memory blow-up (> 2 GiB RSS); the input is kept in
# fuzz/artifacts/<target>/. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
#   fuzz/run.sh          # 30 s per target
#   fuzz/run.sh 300      # longer
#   FUZZ_TARGETS="csv parquet" fuzz/run.sh 60
set -euo pipefail

secs="${1:-30}"
cd "$(dirname "$0")/.."
targets=(${FUZZ_TARGETS:-jsonl_readers json_documents csv parquet detect})

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed" >&2
    echo "  hint: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

# cargo fuzz passes nightly -Z flags (sanitizer, coverage passes); the stable toolchain
# accepts them when told it is bootstrapping itself. Nothing else changes.
export RUSTC_BOOTSTRAP=1

# Inputs are written to files, so keep them in memory and in a folder of our own.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base="${TMPDIR:-/tmp}"
MMLOOP_FUZZ_SCRATCH="$(mktemp -d "$base/mmloop-fuzz.XXXXXX")"
export MMLOOP_FUZZ_SCRATCH
trap 'rm -rf "$MMLOOP_FUZZ_SCRATCH"' EXIT

declare -A fixtures=(
    [jsonl_readers]="swift sharegpt table"
    [json_documents]="coco vqav2 textvqa labelstudio llava"
    [csv]="table"
    [parquet]="parquet"
    [detect]="swift sharegpt table coco vqav2 textvqa labelstudio llava parquet"
)

logs="$MMLOOP_FUZZ_SCRATCH/logs"
mkdir -p "$logs"
echo "== building the fuzz targets (the first build takes several minutes)"
if ! cargo fuzz build >"$logs/build.log" 2>&1; then
    tail -30 "$logs/build.log" >&2
    echo "cargo fuzz build failed" >&2
    exit 2
fi
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    # The project's format fixtures, where present, seed the run too (read-only: libFuzzer
    # writes new inputs to the first folder only).
    extra=()
    for f in ${fixtures[$t]}; do
        [ -d "tests/fixtures/formats/$f" ] && extra+=("tests/fixtures/formats/$f")
    done
    echo "== $t: ${secs}s"
    set +e
    cargo fuzz run "$t" "fuzz/corpus/$t" "${extra[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -dict=fuzz/importers.dict -print_final_stats=1 >"$logs/$t.log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || true)
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$logs/$t.log" | tail -1 || true)
    if [ "$rc" -eq 0 ]; then
        line="$t: ok, ${runs:-?} runs, ${speed:-?} exec/s, $cov"
    else
        line="$t: FAILED (exit $rc), ${runs:-?} runs; see the log below and fuzz/artifacts/$t/"
        failed+=("$t")
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|^thread' "$logs/$t.log" | head -20 || true
    fi
    echo "$line"
    summary+=("$line")
    # Panics inside the parquet/arrow crates that the reader caught: upstream bugs.
    grep -h -A1 '^decoder panic' "$logs/$t.log" | grep -v '^--$' || true
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    echo "  hint: reproduce with RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/FILE" >&2
    exit 1
fi
