#!/usr/bin/env python3
"""The transformers anchor (/work/shared/bench/transformers_vlm.py) for SmolVLM with image
tiling off (``do_image_splitting=False``: one 512x512 view, 64 image tokens), the setting
mmloop's embedded engine runs Idefics3 with on mistral.rs 0.8.1. Same model shape, random
init, tokenizer, images, prompt, greedy 16 new tokens and timing as the anchor; only the
processor's tiling differs.

    tools/.venv-vlm/bin/python tools/bench/transformers_vlm_no_tiling.py --configs fp32_b1,bf16_b1 --reps 2
"""

import argparse
import importlib.util
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor", default="/work/shared/bench/transformers_vlm.py")
    ap.add_argument("--configs", default="fp32_b1,bf16_b1")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imgdir", default="target/bench-vlm/images")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("anchor", args.anchor)
    a = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(a)
    torch.set_num_threads(args.threads)
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as IP

    tok = a.smolvlm_tokenizer()
    improc = IP(
        do_convert_rgb=True, do_resize=True, size={"longest_edge": 2048}, resample=1,
        do_image_splitting=False, max_image_size={"longest_edge": 512}, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pad=True,
    )
    processor = Idefics3Processor(image_processor=improc, tokenizer=tok, image_seq_len=64)
    prompt_text = f"<|im_start|>User:<image>{a.PROMPT}<end_of_utterance>\nAssistant:"
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(a.smolvlm_config()).eval()
    gen_extra = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"))
    paths = a.make_images(args.imgdir)
    print(json.dumps({"env": a.env_info(), "tiling": False}), flush=True)
    current = torch.float32
    for name in args.configs.split(","):
        dtype = torch.bfloat16 if name.startswith("bf16") else torch.float32
        if dtype != current:
            model = model.to(dtype)
            current = dtype
        w = processor(text=[prompt_text], images=[[a.Image.open(paths[0]).convert("RGB")]], return_tensors="pt")
        w["pixel_values"] = w["pixel_values"].to(dtype)
        with torch.inference_mode():
            model.generate(**w, max_new_tokens=2, min_new_tokens=2, do_sample=False, **gen_extra)
        for rep in range(1, args.reps + 1):
            res = a.bench(model, processor, paths, prompt_text, dtype, int(name.split("_b")[1]), 16, gen_extra)
            print(json.dumps({"config": name, "rep": rep, **{k: v for k, v in res.items() if k != "per_call"}}), flush=True)


if __name__ == "__main__":
    main()
