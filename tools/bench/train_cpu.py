#!/usr/bin/env python3
"""LoRA training speed on the CPU: `mmloop sft` against PEFT + transformers + torch AdamW on the
same random-weight SmolVLM-256M-shape checkpoint, the same examples, the same settings, in the
same run (docs/benchmarks.md, "Fine-tuning").

    tools/.venv-vlm/bin/python tools/bench/make_vlm_bench_models.py --which smolvlm
    cargo build -p mmloop
    tools/.venv-vlm/bin/python tools/bench/train_cpu.py [--steps 4] [--mmloop target/debug/mmloop]

Settings on both sides: LoRA rank 8, alpha 32, all linear layers of the language model, dropout 0,
batch 1, no accumulation, AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1), clipping 1.0,
f32; the processor's default settings (SmolVLM: 13 tiles x 64 image tokens for a 640x480 JPEG).
One example per step, the same order. Reported: seconds per step (median of the steps after the
first), and for mmloop also with the frozen vision features recomputed every step
(--feature_cache_mb 0), as PEFT does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import make_vlm_fixtures as fx  # noqa: E402

QA = [
    ("What is in the picture?", "A small red chair next to a wooden table."),
    ("What colour is the main object?", "Red."),
    ("How many objects are there?", "Two."),
    ("Describe the scene briefly.", "A room with a chair and a table by the window."),
]


def peft_steps(model_dir: Path, images: list[Path], steps: int) -> list[float]:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = fx.load_model("idefics3", model_dir)
    cfg = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    pm = get_peft_model(base, cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tools = fx.case_tools("idefics3", model_dir)
    tok = tools["tokenizer"]
    eot = tok.convert_tokens_to_ids("<end_of_utterance>")
    times = []
    for step in range(steps):
        q, a = QA[step % len(QA)]
        pil = [fx.load_image(images[step % len(images)])]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        _, inputs = fx.prepare_inputs("idefics3", tools, messages, pil)
        answer = tok(a, add_special_tokens=False).input_ids + [eot]
        prompt = inputs["input_ids"][0].tolist()
        ids = torch.tensor([prompt + answer])
        model_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        labels = torch.tensor([[-100] * len(prompt) + answer])
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = pm(input_ids=ids, attention_mask=torch.ones_like(ids), **model_inputs).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        print(f"  peft step {step + 1}: {times[-1]:.2f} s ({ids.shape[1]} tokens, loss {float(loss):.4f})", flush=True)
    return times


def mmloop_steps(binary: str, model_dir: Path, data: Path, steps: int, cache_mb: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as out:
        args = [binary, "sft", "--dataset", str(data), "--model", str(model_dir), "--output_dir", out,
                "--max_steps", str(steps), "--logging_steps", "1", "--save_steps", str(steps),
                "--gradient_accumulation_steps", "1", "--lora_dropout", "0", "--dataset_shuffle", "false",
                "--train_dataloader_shuffle", "false", "--feature_cache_mb", str(cache_mb)]
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        lines = [json.loads(l) for l in (Path(out) / "logging.jsonl").read_text().splitlines()]
    times = [l["train_speed(s/it)"] for l in lines if "loss" in l]
    for i, t in enumerate(times):
        print(f"  mmloop (cache {cache_mb} MiB) step {i + 1}: {t:.2f} s", flush=True)
    return times, total


def main() -> None:
    fx.ensure_venv(extra={"peft": "peft==0.21.2"})
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "target" / "bench-vlm" / "smolvlm-256m"))
    ap.add_argument("--mmloop", default=str(ROOT / "target" / "debug" / "mmloop"))
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    model_dir = Path(a.model)
    images = sorted((model_dir.parent / "images").glob("*.jpg"))[: len(QA)]
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "train.jsonl"
        with data.open("w") as f:
            for i, (q, ans) in enumerate(QA):
                f.write(json.dumps({"messages": [{"role": "user", "content": "<image>" + q},
                                                 {"role": "assistant", "content": ans}],
                                    "images": [str(images[i % len(images)])]}) + "\n")
        ours, total = mmloop_steps(a.mmloop, model_dir, data, a.steps, 1024)
        ours_nocache, total_nocache = mmloop_steps(a.mmloop, model_dir, data, a.steps, 0)
    theirs = peft_steps(model_dir, images, a.steps)
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731
    print()
    print("| run | s/step (median after the first) | vs PEFT |")
    print("|---|---|---|")
    print(f"| PEFT 0.21 + transformers 5.24 + torch {__import__('torch').__version__} | {med(theirs):.2f} | 1.00x |")
    print(f"| mmloop sft, vision features kept | {med(ours):.2f} | {med(theirs) / med(ours):.2f}x |")
    print(f"| mmloop sft, vision recomputed every step | {med(ours_nocache):.2f} | {med(theirs) / med(ours_nocache):.2f}x |")
    print(f"\nmmloop whole runs ({a.steps} steps, model load and example preparation included): "
          f"{total:.1f} s kept, {total_nocache:.1f} s recomputed")


if __name__ == "__main__":
    main()
