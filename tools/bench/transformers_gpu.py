#!/usr/bin/env python3
"""Hugging Face transformers `generate` on a GPU, timed the way `mmloop infer` reports it:
images/s over the whole run (image loading, preprocessing, vision, prefill, decode), the model
loaded and warmed up first. Same checkpoint folder, JPEGs, chat template and prompt as mmloop;
greedy, exactly N new tokens. Prints one JSON line; --answers writes each image's answer and
token ids (JSONL) to compare with mmloop's output.

    python3 tools/bench/transformers_gpu.py MODEL_DIR IMG... --dtype fp32|bf16 --batch 16 \
        --new-tokens 16 --prompt "What color is the main object? Answer briefly." [--answers A.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt", default="What color is the main object? Answer briefly.")
    ap.add_argument("--answers")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script without a GPU")
    ap.add_argument(
        "--backend", choices=["default", "pil"], default="default",
        help="image processor: transformers' default (torchvision where installed, for most families) or "
        "the PIL one, which mmloop's preprocessing equals bit for bit (for comparing answers)",
    )
    args = ap.parse_args()

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    # Plain float32 matmuls (no TF32), as mmloop's f32 runs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    if args.backend == "pil":
        image_processor = AutoImageProcessor.from_pretrained(args.model, backend="pil")
        if not type(image_processor).__name__.endswith("Pil"):  # releases before `backend`
            image_processor = AutoImageProcessor.from_pretrained(args.model, use_fast=False)
        proc = AutoProcessor.from_pretrained(args.model, image_processor=image_processor)
    else:
        proc = AutoProcessor.from_pretrained(args.model)
    proc.tokenizer.padding_side = "left"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}]
    # The checkpoint's own template, as mmloop renders it (tokenizer_config.json's where the
    # processor has none).
    render = proc if getattr(proc, "chat_template", None) else proc.tokenizer
    text = render.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pad = proc.tokenizer.pad_token_id
    if pad is None:
        pad = model.generation_config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else pad

    def run(paths, new_tokens):
        images = [[Image.open(p).convert("RGB")] for p in paths]
        inputs = proc(text=[text] * len(paths), images=images, return_tensors="pt", padding=True).to(args.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
            )
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        return int(inputs["input_ids"].shape[1]), new

    run(args.images[:1], 2)  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    answers, prompt_len = [], 0
    for i in range(0, len(args.images), args.batch):
        chunk = args.images[i : i + args.batch]
        prompt_len, new = run(chunk, args.new_tokens)
        answers += [(p, ids) for p, ids in zip(chunk, new)]
    sync()
    seconds = time.perf_counter() - t0
    if args.answers:
        with open(args.answers, "w") as f:
            for p, ids in answers:
                f.write(json.dumps({"image": p, "ids": ids, "text": proc.tokenizer.decode(ids, skip_special_tokens=True)}) + "\n")
    n = len(args.images)
    print(json.dumps({
        "engine": "transformers", "version": __import__("transformers").__version__, "torch": torch.__version__,
        "dtype": args.dtype, "image_processor": type(proc.image_processor).__name__, "batch": args.batch, "images": n, "prompt_len": prompt_len,
        "seconds": round(seconds, 3), "per_second": round(n / seconds, 3), "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
    }), flush=True)


if __name__ == "__main__":
    main()
