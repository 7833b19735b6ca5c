#!/usr/bin/env bash
# `mmloop infer --device cuda` against Hugging Face transformers `generate` on the same GPU,
# same run, same random-weight real-size checkpoints, JPEGs, chat template, prompt and output
# length; float32 and bfloat16, one image at a time and batched; and how many float32 answers
# are the same text as transformers'. Results: $OUT_DIR/results-gpu-<date>.txt; see
# docs/benchmarks.md.
#
#   tools/bench/infer_gpu.sh [smolvlm|qwen|all] [N_IMAGES]
#
# Environment: MMLOOP (a binary built with `--features cuda`; default target/release/mmloop),
# MODELS (checkpoint folders smolvlm-256m/ and qwen2.5-vl-3b/, as
# tools/bench/make_vlm_bench_models.py writes them; a folder that holds model.header.json in
# place of its weights gets random weights from tools/bench/random_weights_like.py), IMAGES (a
# folder of JPEGs; default $MODELS/images), PY (a Python with torch and transformers),
# OUT_DIR (default $MODELS), DEVICE (default cuda; cpu tries the script on tiny models).
set -uo pipefail
cd "$(dirname "$0")/../.."
WHICH="${1:-all}"
N="${2:-32}"
MMLOOP="${MMLOOP:-target/release/mmloop}"
MODELS="${MODELS:-target/bench-vlm}"
IMAGES="${IMAGES:-$MODELS/images}"
PY="${PY:-python3}"
OUT_DIR="${OUT_DIR:-$MODELS}"
DEVICE="${DEVICE:-cuda}"
PROMPT="What color is the main object? Answer briefly."
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/results-gpu-$(date +%Y%m%d-%H%M%S).txt"
log() { echo "$@" | tee -a "$LOG"; }

log "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "$DEVICE")"
log "-- $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"

weights() { # model folder: random weights where only the header travelled
  if [ ! -f "$1/model.safetensors" ] && [ -f "$1/model.header.json" ]; then
    "$PY" tools/bench/random_weights_like.py --header "$1/model.header.json" --out "$1/model.safetensors" --device "$DEVICE" \
      | tee -a "$LOG"
  fi
}

transformers_run() { # label model new_tokens dtype batch backend images...
  local label=$1 model=$2 n=$3 dtype=$4 batch=$5 backend=$6
  shift 6
  log "transformers $label: $("$PY" tools/bench/transformers_gpu.py "$model" "$@" --dtype "$dtype" --batch "$batch" --device "$DEVICE" --backend "$backend" \
    --new-tokens "$n" --prompt "$PROMPT" --answers "$OUT_DIR/answers-tf-$label.jsonl" 2>>"$LOG.err")"
}

mmloop_run() { # label model images_glob new_tokens extra-args...
  local label=$1 model=$2 images=$3 n=$4
  shift 4
  local out="$OUT_DIR/out-gpu-$label.jsonl"
  # Warm-up (not timed) on the first image of the run's folder: the driver compiles the
  # kernels' PTX once and caches it.
  "$MMLOOP" infer --model "$model" --device "$DEVICE" "$@" --images "${images%/*}/img0.jpg" --prompt "$PROMPT" \
    --max-new-tokens 2 --temperature 0 -o "$out" --overwrite --json >/dev/null 2>>"$LOG.err"
  local r
  r=$("$MMLOOP" infer --model "$model" --device "$DEVICE" "$@" --images "$images" --prompt "$PROMPT" \
    --max-new-tokens "$n" --min-new-tokens "$n" --temperature 0 --repetition-penalty 1 -o "$out" --overwrite \
    --json 2>>"$LOG.err")
  log "mmloop $label: $(echo "$r" | "$PY" -c 'import json,sys; r=json.load(sys.stdin); print("%d images, %.2f s, %.3f images/s" % (r["answered"], r["seconds"], r["per_second"]))')"
}

agree() { # mmloop-out.jsonl transformers-answers.jsonl label
  "$PY" - "$1" "$2" "$3" <<'EOF' | tee -a "$LOG"
import json, os, sys
ours = {os.path.basename(r["images"][0]): r["response"] for r in map(json.loads, open(sys.argv[1]))}
theirs = {os.path.basename(r["image"]): r["text"] for r in map(json.loads, open(sys.argv[2]))}
same = sum(ours.get(k) == v for k, v in theirs.items())
print(f"answers {sys.argv[3]}: {same}/{len(theirs)} the same text as transformers")
EOF
}

if [ "$WHICH" = smolvlm ] || [ "$WHICH" = all ]; then
  M="$MODELS/smolvlm-256m"
  weights "$M"
  SDIR="$OUT_DIR/images-smolvlm" && rm -rf "$SDIR" && mkdir -p "$SDIR"
  ls "$IMAGES"/img*.jpg | sort -V | head -n "$N" | xargs -I{} cp {} "$SDIR/"
  mapfile -t IMGS < <(ls "$SDIR"/img*.jpg | sort -V)
  GLOB="$SDIR/img*.jpg"
  log "-- SmolVLM-256M shape, default processor (13 tiles x 64 image tokens), ${#IMGS[@]} JPEGs 640x480, 16 new tokens"
  transformers_run smolvlm-fp32 "$M" 16 fp32 1 pil "${IMGS[@]}"
  transformers_run smolvlm-bf16 "$M" 16 bf16 1 default "${IMGS[@]}"
  transformers_run smolvlm-bf16-batch16 "$M" 16 bf16 16 default "${IMGS[@]}"
  mmloop_run smolvlm-f32 "$M" "$GLOB" 16 --dtype f32 --max-batch-size 1
  mmloop_run smolvlm-f32-batch16 "$M" "$GLOB" 16 --dtype f32 --max-batch-size 16
  mmloop_run smolvlm-bf16 "$M" "$GLOB" 16 --dtype bf16 --max-batch-size 1
  mmloop_run smolvlm-bf16-batch16 "$M" "$GLOB" 16 --dtype bf16 --max-batch-size 16
  agree "$OUT_DIR/out-gpu-smolvlm-f32.jsonl" "$OUT_DIR/answers-tf-smolvlm-fp32.jsonl" "smolvlm f32"
  agree "$OUT_DIR/out-gpu-smolvlm-bf16.jsonl" "$OUT_DIR/answers-tf-smolvlm-bf16.jsonl" "smolvlm bf16"
  # Where the time of one image goes (prepare = decode, resize, tiles; first token = vision + prefill).
  MMLOOP_TIMING=1 "$MMLOOP" infer --model "$M" --device "$DEVICE" --dtype bf16 --max-batch-size 16 --images "$GLOB" \
    --prompt "$PROMPT" --max-new-tokens 16 --min-new-tokens 16 --temperature 0 --repetition-penalty 1 \
    -o "$OUT_DIR/out-gpu-timing.jsonl" --overwrite --json 2>&1 >/dev/null | grep '^prepare' | tail -4 | tee -a "$LOG"
fi
if [ "$WHICH" = qwen ] || [ "$WHICH" = all ]; then
  M="$MODELS/qwen2.5-vl-3b"
  weights "$M"
  Q=$((N < 8 ? N : 8))
  QDIR="$OUT_DIR/images-qwen" && rm -rf "$QDIR" && mkdir -p "$QDIR"
  for i in $(seq 0 $((Q - 1))); do cp "$IMAGES/img$i.jpg" "$QDIR/"; done
  mapfile -t IMGS < <(ls "$QDIR"/img*.jpg | sort -V)
  log "-- Qwen2.5-VL-3B shape, $Q JPEGs 640x480 (391 image tokens), 8 new tokens"
  transformers_run qwen-fp32 "$M" 8 fp32 1 default "${IMGS[@]}"
  transformers_run qwen-bf16 "$M" 8 bf16 1 default "${IMGS[@]}"
  transformers_run qwen-fp32-pil "$M" 8 fp32 1 pil "${IMGS[@]}"
  transformers_run qwen-bf16-batch8 "$M" 8 bf16 8 default "${IMGS[@]}"
  mmloop_run qwen-f32 "$M" "$QDIR/img*.jpg" 8 --dtype f32 --max-batch-size 1
  mmloop_run qwen-bf16 "$M" "$QDIR/img*.jpg" 8 --dtype bf16 --max-batch-size 1
  mmloop_run qwen-bf16-batch8 "$M" "$QDIR/img*.jpg" 8 --dtype bf16 --max-batch-size 8
  agree "$OUT_DIR/out-gpu-qwen-f32.jsonl" "$OUT_DIR/answers-tf-qwen-fp32-pil.jsonl" "qwen f32 (PIL image processor)"
fi
log "results in $LOG"
