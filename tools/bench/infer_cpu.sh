#!/usr/bin/env bash
# `mmloop infer` (embedded engine, CPU) against Hugging Face transformers `generate`, same
# machine, same run, same random-weight real-size models, JPEGs, prompt and output length;
# plus the peak of one large matmul with candle's kernels, the quantized runs' logprob drift,
# and batched against sequential throughput. Results: target/bench-vlm/results-<date>.txt;
# see docs/benchmarks.md.
#
#   tools/bench/infer_cpu.sh [smolvlm|qwen|all] [N_IMAGES]
#
# Needs tools/.venv-vlm (tools/make_vlm_fixtures.py makes it) and builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHICH="${1:-smolvlm}"
N="${2:-4}"
PY=tools/.venv-vlm/bin/python
ANCHOR=/work/shared/bench/transformers_vlm.py
OUT=target/bench-vlm
LOG="$OUT/results-$(date +%Y%m%d-%H%M%S).txt"
MMLOOP=target/release/mmloop
PROMPT="What color is the main object? Answer briefly."
mkdir -p "$OUT"
log() { echo "$@" | tee -a "$LOG"; }

cargo build --release -p mmloop --bin mmloop 2>/dev/null
cargo build --release -p mmloop-models --example matmul_peak 2>/dev/null
[ -d "$OUT/smolvlm-256m" ] || $PY tools/bench/make_vlm_bench_models.py --which smolvlm
IMGS="$OUT/images-$N"
if grep -q 'amx_bf16\|avx512_bf16' /proc/cpuinfo; then BF16_IMAGES=$N; else BF16_IMAGES=1; fi
rm -rf "$IMGS" && mkdir -p "$IMGS"
for i in $(seq 0 $((N - 1))); do cp "$OUT/images/img$i.jpg" "$IMGS/"; done
log "== $(date -u) $(nproc) cores ($(grep -o 'avx512[a-z_0-9]*\|avx2\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "-- peak: one large matmul with candle's CPU kernels"
target/release/examples/matmul_peak 4096 768 3072 5 | tee -a "$LOG"

anchor() { # which n_images configs: the anchor on its first N images
  $PY tools/bench/anchor_subset.py "$ANCHOR" "$@" "$OUT/images" "$OUT/anchor.jsonl" 2>&1 \
    | grep '"kind": "result"' | tee -a "$LOG" || true
}

mmloop_run() { # label model images new_tokens extra-args...
  local label=$1 model=$2 images=$3 n=$4
  shift 4
  local out="$OUT/out-$label.jsonl"
  # Warm-up (not timed): loads the model and page cache.
  "$MMLOOP" infer --model "$model" "$@" --images "$OUT/images/img7.jpg" --prompt "$PROMPT" --max-new-tokens 2 \
    --temperature 0 -o "$out" --overwrite --json >/dev/null 2>&1 || true
  local r
  r=$(MMLOOP_TIMING=1 "$MMLOOP" infer --model "$model" "$@" --images "$images" --prompt "$PROMPT" \
    --max-new-tokens "$n" --min-new-tokens "$n" --temperature 0 --repetition-penalty 1 -o "$out" --overwrite --json 2>>"$LOG")
  log "mmloop $label: $(echo "$r" | $PY -c 'import json,sys; r=json.load(sys.stdin); print("%d images, %.1f s, %.4f images/s" % (r["answered"], r["seconds"], r["per_second"]))')"
}

drift() { # reference.jsonl other.jsonl label
  $PY - "$1" "$2" "$3" <<'EOF' | tee -a "$LOG"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
worst, same, n = 0.0, 0, 0
for x, y in zip(a, b):
    lx = [t["logprob"] for t in x["logprobs"]["content"]]
    ly = [t["logprob"] for t in y["logprobs"]["content"]]
    tx = [t["token"] for t in x["logprobs"]["content"]]
    ty = [t["token"] for t in y["logprobs"]["content"]]
    k = next((i for i, (p, q) in enumerate(zip(tx, ty)) if p != q), min(len(tx), len(ty)))
    worst = max([worst] + [abs(p - q) for p, q in zip(lx[:k], ly[:k])])
    same += tx == ty
    n += 1
print(f"drift {sys.argv[3]} vs f32: {same}/{n} answers token-identical, max |d ln p| before the first difference {worst:.2e}")
EOF
}

if [ "$WHICH" = smolvlm ] || [ "$WHICH" = all ]; then
  log "-- SmolVLM-256M shape, default processor (13 tiles x 64 image tokens), $N JPEGs 640x480, 16 new tokens"
  anchor smolvlm "$N" fp32_b1
  mmloop_run smolvlm-f32 "$OUT/smolvlm-256m" "$IMGS/*.jpg" 16 --dtype f32 --max-batch-size 1
  mmloop_run smolvlm-f32-batch16 "$OUT/smolvlm-256m" "$IMGS/*.jpg" 16 --dtype f32 --max-batch-size 16
  mmloop_run smolvlm-q8_0 "$OUT/smolvlm-256m" "$IMGS/*.jpg" 16 --dtype f32 --quant q8_0 --max-batch-size 1
  drift "$OUT/out-smolvlm-f32.jsonl" "$OUT/out-smolvlm-q8_0.jsonl" q8_0
  mmloop_run smolvlm-bf16 "$OUT/smolvlm-256m" "$IMGS/*.jpg" 16 --dtype f32 --quant bf16 --max-batch-size 1
  mmloop_run smolvlm-bf16-batch16 "$OUT/smolvlm-256m" "$IMGS/*.jpg" 16 --dtype f32 --quant bf16 --max-batch-size 16
  drift "$OUT/out-smolvlm-f32.jsonl" "$OUT/out-smolvlm-bf16.jsonl" bf16
  # torch's bfloat16 runs on AMX / AVX-512 BF16 where the CPU has them; elsewhere it is
  # emulated and several times slower than float32, so one image is enough there.
  anchor smolvlm "$BF16_IMAGES" bf16_b1
fi
if [ "$WHICH" = qwen ] || [ "$WHICH" = all ]; then
  [ -d "$OUT/qwen2.5-vl-3b" ] || $PY tools/bench/make_vlm_bench_models.py --which qwen
  log "-- Qwen2.5-VL-3B shape, 2 JPEGs 640x480, 8 new tokens"
  mkdir -p "$OUT/images-2" && cp "$OUT/images/img0.jpg" "$OUT/images/img1.jpg" "$OUT/images-2/"
  anchor qwen 2 bf16_b1
  mmloop_run qwen-f32 "$OUT/qwen2.5-vl-3b" "$OUT/images-2/*.jpg" 8 --dtype f32 --max-batch-size 1
  mmloop_run qwen-bf16 "$OUT/qwen2.5-vl-3b" "$OUT/images-2/*.jpg" 8 --dtype f32 --quant bf16 --max-batch-size 1
  drift "$OUT/out-qwen-f32.jsonl" "$OUT/out-qwen-bf16.jsonl" bf16
fi
log "results in $LOG"
