#!/usr/bin/env bash
# Builds the CUDA binaries (`mmloop` and the parity suite) on a machine with no GPU and no CUDA
# toolkit: nvcc and the CUDA 13.0 libraries come from NVIDIA's PyPI wheels, and the driver
# library is a link-time stub generated from cudarc's bindings (the real libcuda.so.1 is the
# GPU machine's). The binaries load libcublas/libcurand/libcudart 13 and the driver at run time:
# on the GPU machine put the folder holding them (e.g. the `nvidia/cu13/lib` of a CUDA-13
# PyTorch's site-packages) on LD_LIBRARY_PATH.
#
#   tools/bench/build_cuda.sh [COMPUTE_CAP]     # default 90 (H100/H200); 80 for A100, 89 for L4/4090
#
# Output: $CARGO_TARGET_DIR (default /var/tmp/mmloop-cuda-target)/release/mmloop and the parity
# test binary it prints; run the suite there with MMLOOP_TEST_DEVICE=cuda.
set -euo pipefail
cd "$(dirname "$0")/../.."
CAP="${1:-90}"
CUDA=/var/tmp/mmloop-cuda13
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mmloop-cuda-target}"

if [ ! -x "$CUDA/nvidia/cu13/bin/nvcc" ]; then
  mkdir -p "$CUDA/wheels"
  for p in nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-nvrtc nvidia-cublas nvidia-cuda-cccl nvidia-cuda-crt \
    nvidia-nvvm; do
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$CUDA/wheels" "$p==13.0.*"
  done
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$CUDA/wheels" "nvidia-curand<11"
  python3 -m pip install -q --no-deps --target "$CUDA" "$CUDA"/wheels/*.whl
fi
ROOT="$CUDA/nvidia/cu13"
LIB="$ROOT/lib"
for n in cublas cublasLt nvrtc cudart; do ln -sf "lib$n.so.13" "$LIB/lib$n.so"; done
ln -sf libcurand.so.10 "$LIB/libcurand.so"
# The driver API's entry points, as cudarc declares them, each returning an error: enough to link.
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
BINDINGS=$(ls -d "$CARGO_HOME"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | head -1)
if [ -z "$BINDINGS" ]; then cargo fetch -q && BINDINGS=$(ls -d "$CARGO_HOME"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1); fi
mkdir -p "$LIB/stubs"
grep -ho '^pub unsafe fn cu[A-Za-z0-9_]*' "$BINDINGS" | awk '{print "int " $4 "(void) { return 999; }"}' | sort -u \
  >"$LIB/stubs/cuda_stub.c"
gcc -shared -fPIC -o "$LIB/stubs/libcuda.so" "$LIB/stubs/cuda_stub.c" -Wl,-soname,libcuda.so.1

export CUDA_HOME="$ROOT" PATH="$ROOT/bin:$PATH" CUDA_COMPUTE_CAP="$CAP"
cargo build --release -p mmloop --bin mmloop --features cuda
cargo test --release -p mmloop-models --features cuda --test parity --no-run 2>&1 | grep -o '(/.*parity-[0-9a-f]*)' | tr -d '()'
echo "$CARGO_TARGET_DIR/release/mmloop"
