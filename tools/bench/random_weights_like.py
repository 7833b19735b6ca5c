#!/usr/bin/env python3
"""Writes a checkpoint's `model.safetensors` again with random weights: the same tensor names,
shapes and dtypes, read from a safetensors header (a checkpoint file, or the header alone as
JSON, a few kilobytes where the weights would be gigabytes). Norm weights are ones, biases
zeros, everything else N(0, 0.02) (transformers' `initializer_range`), seeded.

    python3 tools/bench/random_weights_like.py --header-of target/bench-vlm/smolvlm-256m/model.safetensors \
        --save-header smolvlm.header.json
    python3 tools/bench/random_weights_like.py --header smolvlm.header.json --out DIR/model.safetensors [--device cuda]

Used where the benchmark models cannot travel (tools/bench/infer_gpu.sh): the config,
tokenizer and processor files go along, and the weights are made where they run.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path


def read_header(path: Path) -> dict:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--header-of", type=Path, help="a safetensors file whose header to read")
    ap.add_argument("--save-header", type=Path, help="write the header as JSON here and stop")
    ap.add_argument("--header", type=Path, help="a header saved by --save-header")
    ap.add_argument("--out", type=Path, help="the model.safetensors to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where to draw the numbers (cuda is faster for 3B)")
    args = ap.parse_args()

    if args.header_of:
        header = read_header(args.header_of)
    elif args.header:
        header = json.loads(args.header.read_text())
    else:
        ap.error("--header-of or --header is required")
    if args.save_header:
        args.save_header.write_text(json.dumps(header, indent=1, sort_keys=True) + "\n")
        return
    if not args.out:
        ap.error("--out is required")

    import torch
    from safetensors.torch import save_file

    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    meta = header.pop("__metadata__", None) or {"format": "pt"}
    tensors = {}
    for name in sorted(header):
        info = header[name]
        shape, dtype = info["shape"], dtypes[info["dtype"]]
        if "norm" in name and name.endswith(".weight") and len(shape) == 1:
            t = torch.ones(shape, dtype=dtype)
        elif name.endswith(".bias"):
            t = torch.zeros(shape, dtype=dtype)
        else:
            t = (torch.randn(shape, generator=gen, device=args.device, dtype=torch.float32) * 0.02).to(dtype).cpu()
        tensors[name] = t.contiguous()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    n = sum(t.numel() for t in tensors.values())
    print(f"{args.out}: {len(tensors)} tensors, {n / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
