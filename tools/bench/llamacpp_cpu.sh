#!/usr/bin/env bash
# llama.cpp (libmtmd, `llama-mtmd-cli`) on CPU against the SmolVLM-256M-shape random-weight
# checkpoint of tools/bench/infer_cpu.sh, back to back with the transformers no-tiling f32
# run (and mmloop's, when target/debug/mmloop exists), same machine state. Answers the
# issue's "if mistral.rs on CPU falls short, measure llama.cpp on the same architecture in
# the same run and write down which is faster". See docs/benchmarks.md "Pre-annotation".
#
# What is measured, per llama.cpp variant (text model f32 / f16, mmproj f32):
#   the 8 JPEGs of target/bench-vlm/images (640x480), one llama-mtmd-cli process per image,
#   prompt "What color is the main object? Answer briefly." (the GGUF's chat template),
#   greedy (--temp 0), exactly 16 new tokens (-n 16 --ignore-eos), 2 threads, batch 1.
#   - "tiled":  llama.cpp's own Idefics3 preprocessing (longest edge 2048 -> 4x3 tiles of
#               512 + a 512 overview = 13 views x 64 = 832 image tokens for 640x480).
#   - "min":    --image-max-tokens 64: the fewest views llama.cpp's Idefics3 path produces
#               (one 512 tile + the overview = 2 x 64 = 128 image tokens). Transformers
#               no-tiling and mmloop use ONE view (64 image tokens); llama.cpp has no switch
#               for that.
#   images/s = 8 / sum of per-image time, where per-image time runs from the end of model
#   loading (the CLI's "experimental CLI" warning, printed after load + warm-up) to
#   llama.cpp's final perf print (log timestamps), so it includes reading and decoding the
#   JPEG, preprocessing, the vision encoder, prefill, 16 decode steps. Load time is
#   reported separately. Prefill/decode come from llama_perf_context_print; vision encode
#   from mtmd's "image slice encoded" / "image decoded" lines.
#
# llama.cpp source: the llama-cpp-python sdist on PyPI (vendor/llama.cpp; no GitHub needed),
# pinned below with its sha256. Its llama.cpp commit is in its CHANGELOG.
#
# The checkpoint needs three conversion-time work-arounds, neither touching weights:
#   1. convert_hf_to_gguf.py picks the text model class by text_config "architectures":
#      ["VLlama3ForCausalLM"], as in the published HuggingFaceTB/SmolVLM-256M-Instruct config.
#      make_vlm_bench_models.py now writes it; for models generated before it did, we convert
#      from a view directory (symlinks to the checkpoint's files plus a config.json with the key).
#   2. Its tokenizer is a synthetic tiny BPE (tools/bench/make_vlm_bench_models.py), whose
#      pre-tokenizer hash the converter does not know; we name it "gpt-2" (its pre-tokenizer
#      is plain ByteLevel with the GPT-2 regex).
#   3. libmtmd looks the Idefics3 separator "\n\n" up as a single vocabulary entry; the tiny
#      BPE has none, so libmtmd would put token id -1 in the prompt. At conversion we give the
#      piece "ĊĊ" to the first "<unused_N>" filler id in the GGUF's vocabulary (no merge
#      produces it, so ordinary tokenization is unchanged).
#
#   tools/bench/llamacpp_cpu.sh [all|fetch|build|convert|run]     (default: all)
# Env: LLAMACPP_DIR (default /var/tmp/llamacpp: sources, build), JOBS (default 2),
#      VARIANTS (default "f32-min f32-tiled f16-min f16-tiled"), SKIP_TRANSFORMERS=1, SKIP_MMLOOP=1.
# Heavy steps (build, conversion) run under `nice -n 19`. Results: target/bench-vlm/llamacpp-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STEP="${1:-all}"
LDIR=${LLAMACPP_DIR:-/var/tmp/llamacpp}
JOBS=${JOBS:-2}
VARIANTS=${VARIANTS:-"f32-min f32-tiled f16-min f16-tiled"}
PY=tools/.venv-vlm/bin/python
OUT=target/bench-vlm
GG=$OUT/gguf
CKPT=$OUT/smolvlm-256m
PROMPT="What color is the main object? Answer briefly."
SDIST_VER=0.3.36
SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SRC=$LDIR/llama_cpp_python-$SDIST_VER/vendor/llama.cpp
BUILD=$LDIR/build
CLI=$BUILD/bin/llama-mtmd-cli
mkdir -p "$LDIR" "$OUT" "$GG"

fetch() {
  [ -f "$SRC/convert_hf_to_gguf.py" ] && return
  local tgz="$LDIR/llama_cpp_python-$SDIST_VER.tar.gz" url
  # The PEP 503 simple index gives the file's absolute URL (what pip itself uses).
  url=$(curl -fsS "https://pypi.org/simple/llama-cpp-python/" \
    | grep -o "https://[^\"#]*/llama_cpp_python-$SDIST_VER\.tar\.gz" | head -1)
  curl -fsS -o "$tgz" "$url"
  echo "$SDIST_SHA  $tgz" | sha256sum -c -
  tar -xzf "$tgz" -C "$LDIR"
  # The sdist keeps the git submodule's ".git" file (gitdir: ../../.git/modules/...), which
  # points nowhere and makes ninja re-run cmake forever ("build.ninja still dirty").
  rm -f "$SRC/.git"
}

build() {
  local cmake=cmake
  if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    [ -x "$LDIR/venv/bin/cmake" ] || { python3 -m venv "$LDIR/venv" && "$LDIR/venv/bin/pip" -q install cmake ninja; }
    export PATH="$LDIR/venv/bin:$PATH"
  fi
  local commit
  commit=$(grep -m1 -o 'ggml-org/llama.cpp@[0-9a-f]*' "$SRC/../../CHANGELOG.md" | cut -d@ -f2)
  nice -n 19 $cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$commit" >/dev/null
  nice -n 19 $cmake --build "$BUILD" -j"$JOBS" --target llama-mtmd-cli llama-bench
}

convert() {
  local view=$GG/hf-view f
  mkdir -p "$view"
  for f in generation_config.json model.safetensors preprocessor_config.json processor_config.json \
           tokenizer.json tokenizer_config.json; do
    ln -sfn "$ROOT/$CKPT/$f" "$view/$f"
  done
  $PY - "$CKPT/config.json" "$view/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["text_config"].setdefault("architectures", ["VLlama3ForCausalLM"])  # as the published config
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF
  # convert_hf_to_gguf.py with work-arounds 2 and 3 above (tokenizer only).
  local conv=$LDIR/convert_smolvlm_bench.py
  cat >"$conv" <<'EOF'
import runpy, sys
src = sys.argv.pop(1)
sys.path.insert(0, src)
from conversion.base import TextModel

TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
_base = TextModel.get_vocab_base

def get_vocab_base(self):
    tokens, toktypes, tokpre = _base(self)
    if "ĊĊ" not in tokens:
        i = next(i for i, t in enumerate(tokens) if t.startswith("<unused_"))
        print(f"bench vocab: id {i} {tokens[i]!r} -> 'ĊĊ' (\\n\\n)", flush=True)
        tokens[i] = "ĊĊ"
    return tokens, toktypes, tokpre

TextModel.get_vocab_base = get_vocab_base
sys.argv[0] = src + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
EOF
  # sentencepiece: convert_hf_to_gguf.py imports it before falling back to tokenizer.json.
  $PY -c "import sentencepiece" 2>/dev/null || tools/.venv-vlm/bin/pip -q install sentencepiece
  local t
  for t in f32 f16; do
    [ -f "$GG/smolvlm-256m-$t.gguf" ] && continue
    nice -n 19 $PY "$conv" "$SRC" "$view" --outtype $t --outfile "$GG/smolvlm-256m-$t.gguf" 2>&1 \
      | grep -E "ERROR|Error|successfully|bench vocab" || true
  done
  [ -f "$GG/mmproj-smolvlm-256m-f32.gguf" ] || \
    nice -n 19 $PY "$conv" "$SRC" "$view" --mmproj --outtype f32 --outfile "$GG/mmproj-smolvlm-256m-f32.gguf" 2>&1 \
      | grep -E "ERROR|Error|successfully" || true
  ls -la "$GG"
}

llama_variant() { # dtype-mode  -> one JSON line
  local v=$1 dtype=${1%-*} mode=${1#*-} extra=() img
  [ "$mode" = min ] && extra=(--image-max-tokens 64)
  local vdir="$OUT/llamacpp-run/$v"
  mkdir -p "$vdir"
  note "-- llama.cpp $v  load $(cut -d' ' -f1-3 /proc/loadavg)"
  for img in "$OUT"/images/img*.jpg; do
    local o="$vdir/$(basename "$img" .jpg).log"
    "$CLI" -m "$GG/smolvlm-256m-$dtype.gguf" --mmproj "$GG/mmproj-smolvlm-256m-f32.gguf" --image "$img" \
      -p "$PROMPT" -n 16 --ignore-eos --temp 0 -t 2 -tb 2 -c 2048 "${extra[@]}" \
      --log-prefix --log-timestamps --log-colors off -lv 4 </dev/null >"$o" 2>&1 || { note "FAILED: $o"; tail -5 "$o"; }
  done
  $PY tools/bench/llamacpp_parse.py "$v" "$vdir" | tee -a "$LOG"
}

run() {
  LOG="$OUT/llamacpp-$(date +%Y%m%d-%H%M%S).txt"
  note() { echo "$@" | tee -a "$LOG"; }
  note "== $(date -u) $(nproc) cores; llama.cpp $("$CLI" --version 2>&1 | grep -m1 version)"
  local v
  # f32 first, then transformers and mmloop back to back, then the f16 text model.
  for v in $VARIANTS; do case $v in f32-*) llama_variant "$v" ;; esac; done
  if [ -z "${SKIP_TRANSFORMERS:-}" ]; then
    note "-- transformers no-tiling f32  load $(cut -d' ' -f1-3 /proc/loadavg)"
    $PY tools/bench/transformers_vlm_no_tiling.py --configs fp32_b1 --reps 1 --imgdir "$OUT/images" 2>&1 \
      | grep '"config"' | tee -a "$LOG"
  fi
  if [ -z "${SKIP_MMLOOP:-}" ]; then
    if [ -x target/debug/mmloop ]; then
      note "-- mmloop f32 (tools/bench/infer_cpu.sh mmloop-smolvlm)  load $(cut -d' ' -f1-3 /proc/loadavg)"
      tools/bench/infer_cpu.sh mmloop-smolvlm 2>&1 | grep 'mmloop smolvlm\|results in' | tee -a "$LOG"
    else
      note "-- mmloop: target/debug/mmloop not built; skipped"
    fi
  fi
  for v in $VARIANTS; do case $v in f32-*) ;; *) llama_variant "$v" ;; esac; done
  note "== end $(date -u)  load $(cut -d' ' -f1-3 /proc/loadavg); results in $LOG"
}

case "$STEP" in
  fetch) fetch ;;
  build) fetch; build ;;
  convert) fetch; convert ;;
  run) run ;;
  all) fetch; build; convert; run ;;
  *) echo "usage: $0 [all|fetch|build|convert|run]" >&2; exit 2 ;;
esac
