#!/usr/bin/env bash
# `mmloop infer` (embedded, CPU) against Hugging Face transformers `generate`, same machine,
# same run, same random-weight real-size models, JPEGs, prompt and output length.
# Results: target/bench-vlm/results-<date>.txt. See docs/benchmarks.md.
#
#   tools/bench/infer_cpu.sh [smolvlm|qwen|all]      # needs tools/.venv-vlm and a built target/debug/mmloop
set -euo pipefail
cd "$(dirname "$0")/../.."
WHICH="${1:-all}"   # smolvlm | qwen | all | mmloop-smolvlm (mmloop only)
PY=tools/.venv-vlm/bin/python
ANCHOR=/work/shared/bench/transformers_vlm.py
OUT=target/bench-vlm
LOG="$OUT/results-$(date +%Y%m%d-%H%M%S).txt"
MMLOOP=${MMLOOP:-target/debug/mmloop}
PROMPT="What color is the main object? Answer briefly."
mkdir -p "$OUT"
log() { echo "$@" | tee -a "$LOG"; }

[ -d "$OUT/smolvlm-256m" ] || $PY tools/bench/make_vlm_bench_models.py --which smolvlm
log "== $(date -u) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

mmloop_run() { # model dtype images new_tokens
  local model=$1 dtype=$2 images=$3 n=$4 out="$OUT/out-$(basename "$1")-$2.jsonl"
  # Warm-up (not timed): loads the model and runs one image.
  "$MMLOOP" infer --model "$model" --dtype "$dtype" --images "$OUT/images/img0.jpg" --prompt "$PROMPT" \
    --max-new-tokens 2 --min-new-tokens 2 --temperature 0 -o "$out" --overwrite --json >/dev/null 2>&1 || true
  local r
  r=$(MMLOOP_TIMING=1 "$MMLOOP" infer --model "$model" --dtype "$dtype" --images $images --prompt "$PROMPT" \
    --max-new-tokens "$n" --min-new-tokens "$n" --temperature 0 --repetition-penalty 1 -o "$out" --overwrite --json 2>>"$LOG")
  log "mmloop $(basename "$model") $dtype: $(echo "$r" | $PY -c 'import json,sys; r=json.load(sys.stdin); print("%d images, %.1f s, %.4f images/s" % (r["answered"], r["seconds"], r["per_second"]))')"
}

if [ "$WHICH" = smolvlm ] || [ "$WHICH" = all ]; then
  log "-- SmolVLM-256M shape, 8 JPEGs 640x480, 16 new tokens"
  $PY "$ANCHOR" smolvlm --configs fp32_b1,bf16_b1 --reps 1 --imgdir "$OUT/images" --out "$OUT/anchor.jsonl" 2>&1 \
    | grep '"kind": "result"\|images_per_s' | grep -v '"batch"' | tee -a "$LOG" || true
  $PY tools/bench/transformers_vlm_no_tiling.py --configs fp32_b1,bf16_b1 --reps 1 --imgdir "$OUT/images" 2>&1 \
    | grep '"config"' | tee -a "$LOG"
  # f32 only: candle 0.10's CPU kernels have no bf16 matmul for these models.
  mmloop_run "$OUT/smolvlm-256m" f32 "$OUT/images/*.jpg" 16
fi
if [ "$WHICH" = mmloop-smolvlm ]; then
  mmloop_run "$OUT/smolvlm-256m" f32 "$OUT/images/*.jpg" 16
fi
if [ "$WHICH" = qwen ] || [ "$WHICH" = all ]; then
  [ -d "$OUT/qwen2.5-vl-3b" ] || $PY tools/bench/make_vlm_bench_models.py --which qwen
  log "-- Qwen2.5-VL-3B shape, 2 JPEGs 640x480, 8 new tokens (transformers bf16 as the anchor runs it; mmloop f32)"
  $PY "$ANCHOR" qwen --reps 1 --imgdir "$OUT/images" --out "$OUT/anchor.jsonl" 2>&1 | grep '"config"' | tee -a "$LOG" || true
  mmloop_run "$OUT/qwen2.5-vl-3b" f32 "$OUT/images/img0.jpg $OUT/images/img1.jpg" 8
fi
log "results in $LOG"
