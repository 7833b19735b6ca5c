#!/usr/bin/env bash
# llama.cpp (libmtmd, `llama-mtmd-cli`) on CPU against mmloop and transformers, same run, same
# SmolVLM-256M-shape random-weight checkpoint (tools/bench/make_vlm_bench_models.py), same JPEGs,
# prompt and output length, at equal image tokens: llama.cpp's own Idefics3 preprocessing of a
# 640x480 JPEG (longest edge 2048 -> 4x3 tiles of 512 + a 512 overview = 13 views x 64 = 832 image
# tokens) is the same split transformers' processor and mmloop make by default. The issue's
# "images/s >= llama.cpp at equal image tokens".
#
# What is measured, per llama.cpp variant (text model and mmproj both in DTYPE: f32, f16, bf16,
# q8_0; ggml uses AVX-512 BF16 / AMX where the CPU has them):
#   the first N JPEGs of target/bench-vlm/images (640x480; N as infer_cpu.sh, default 4), one
#   llama-mtmd-cli process per image, prompt "What color is the main object? Answer briefly."
#   (the GGUF's chat template), greedy (--temp 0), exactly 16 new tokens (-n 16 --ignore-eos),
#   2 threads, batch 1.
#   images/s = N / sum of per-image time, where per-image time runs from the end of model
#   loading (the CLI's "experimental CLI" warning, printed after load + warm-up) to
#   llama.cpp's final perf print (log timestamps), so it includes reading and decoding the
#   JPEG, preprocessing, the vision encoder, prefill, 16 decode steps. Load time is
#   reported separately. Prefill/decode come from llama_perf_context_print; vision encode
#   from mtmd's "image slice encoded" / "image decoded" lines.
# Then tools/bench/infer_cpu.sh smolvlm N in the same run (transformers fp32 and bf16, mmloop
# f32, q8_0 and --quant bf16 on the same N JPEGs, same prompt, 16 new tokens).
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
#   tools/bench/llamacpp_cpu.sh [all|fetch|build|convert|run] [N_IMAGES]     (default: all 4)
# Env: LLAMACPP_DIR (default /var/tmp/llamacpp: sources, build), JOBS (default 2),
#      VARIANTS (default "f32 f16 bf16 q8_0"), SKIP_OTHERS=1 (llama.cpp only).
# Heavy steps (build, conversion) run under `nice -n 19`. Results: target/bench-vlm/llamacpp-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STEP="${1:-all}"
N="${2:-4}"
LDIR=${LLAMACPP_DIR:-/var/tmp/llamacpp}
JOBS=${JOBS:-2}
VARIANTS=${VARIANTS:-"f32 f16 bf16 q8_0"}
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
  for t in $VARIANTS; do
    [ -f "$GG/smolvlm-256m-$t.gguf" ] || \
      nice -n 19 $PY "$conv" "$SRC" "$view" --outtype "$t" --outfile "$GG/smolvlm-256m-$t.gguf" 2>&1 \
        | grep -E "ERROR|Error|successfully|bench vocab" || true
    [ -f "$GG/mmproj-smolvlm-256m-$t.gguf" ] || \
      nice -n 19 $PY "$conv" "$SRC" "$view" --mmproj --outtype "$t" --outfile "$GG/mmproj-smolvlm-256m-$t.gguf" 2>&1 \
        | grep -E "ERROR|Error|successfully" || true
  done
  ls -la "$GG"
}

llama_variant() { # dtype -> one JSON line
  local v=$1 img extra=()
  # The repacked (AMX int8) q8_0 weights crash llama.cpp's warm-up on this model (segfault at
  # commit 0c1e570); --no-repack keeps them as stored.
  [ "$v" = q8_0 ] && extra=(--no-repack)
  local vdir="$OUT/llamacpp-run/$v"
  rm -rf "$vdir" && mkdir -p "$vdir"
  note "-- llama.cpp $v (text model and mmproj)  load $(cut -d' ' -f1-3 /proc/loadavg)"
  for img in "$OUT"/images-"$N"/*.jpg; do
    local o="$vdir/$(basename "$img" .jpg).log"
    "$CLI" -m "$GG/smolvlm-256m-$v.gguf" --mmproj "$GG/mmproj-smolvlm-256m-$v.gguf" --image "$img" \
      -p "$PROMPT" -n 16 --ignore-eos --temp 0 -t 2 -tb 2 -c 2048 "${extra[@]}" \
      --log-prefix --log-timestamps --log-colors off -lv 4 </dev/null >"$o" 2>&1 || { note "FAILED: $o"; tail -5 "$o"; }
  done
  $PY tools/bench/llamacpp_parse.py "$v" "$vdir" | tee -a "$LOG" || note "llama.cpp $v: no result"
}

run() {
  LOG="$OUT/llamacpp-$(date +%Y%m%d-%H%M%S).txt"
  note() { echo "$@" | tee -a "$LOG"; }
  local i v
  rm -rf "$OUT/images-$N" && mkdir -p "$OUT/images-$N"
  for i in $(seq 0 $((N - 1))); do cp "$OUT/images/img$i.jpg" "$OUT/images-$N/"; done
  note "== $(date -u) $(nproc) cores; llama.cpp $("$CLI" --version 2>&1 | grep -m1 version); $N JPEGs"
  for v in $VARIANTS; do llama_variant "$v"; done
  if [ -z "${SKIP_OTHERS:-}" ]; then
    note "-- transformers and mmloop: tools/bench/infer_cpu.sh smolvlm $N  load $(cut -d' ' -f1-3 /proc/loadavg)"
    tools/bench/infer_cpu.sh smolvlm "$N" 2>&1 | grep '"kind": "result"\|^mmloop \|^drift\|^results in' | tee -a "$LOG"
  fi
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
