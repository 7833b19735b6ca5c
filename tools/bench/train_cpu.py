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
first) and peak resident memory of the process; for mmloop also with the frozen vision features
recomputed every step (--feature_cache_mb 0), as PEFT does, with gradient checkpointing (ms-swift's default; PEFT's
loop here keeps its activations) and QLoRA (--quant_bits 8 / 4: the frozen language model
quantized at load).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def peft_steps(model_dir: Path, images: list[Path], steps: int, batch: int) -> list[float]:
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
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    times = []
    for step in range(steps):
        # One padded batch (right padding, as ms-swift's collator); the loss is the mean over
        # every labelled token of the batch.
        seqs, extra = [], []
        for j in range(batch):
            k = (step * batch + j) % len(QA)
            q, a = QA[k]
            pil = [fx.load_image(images[k % len(images)])]
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            _, inputs = fx.prepare_inputs("idefics3", tools, messages, pil)
            answer = tok(a, add_special_tokens=False).input_ids + [eot]
            prompt = inputs["input_ids"][0].tolist()
            seqs.append((prompt + answer, [-100] * len(prompt) + answer))
            extra.append({k2: v for k2, v in inputs.items() if k2 not in ("input_ids", "attention_mask")})
        width = max(len(ids) for ids, _ in seqs)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in seqs])
        labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in seqs])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in seqs])
        model_inputs = {k2: torch.cat([e[k2] for e in extra]) for k2 in extra[0]}
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = pm(input_ids=ids, attention_mask=mask, **model_inputs).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        print(f"  peft step {step + 1}: {times[-1]:.2f} s ({tuple(ids.shape)} tokens, loss {float(loss):.4f})", flush=True)
    return times


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def mmloop_steps(binary: str, model_dir: Path, data: Path, steps: int, batch: int, cache_mb: int,
                 extra: list[str]) -> tuple[list[float], float, float]:
    with tempfile.TemporaryDirectory() as out:
        args = [binary, "sft", "--dataset", str(data), "--model", str(model_dir), "--output_dir", out,
                "--max_steps", str(steps), "--logging_steps", "1", "--save_steps", str(steps),
                "--per_device_train_batch_size", str(batch),
                "--gradient_accumulation_steps", "1", "--lora_dropout", "0", "--dataset_shuffle", "false",
                "--train_dataloader_shuffle", "false", "--feature_cache_mb", str(cache_mb)]
        args += extra
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        total = time.perf_counter() - t0
        rss = usage.ru_maxrss / 2**20
        if status != 0:
            # Killed for memory, typically: reported as a row without times.
            print(f"  mmloop sft failed (wait status {status}) at peak RSS {rss:.1f} GiB: {' '.join(args)}", flush=True)
            return [], total, rss
        lines = [json.loads(l) for l in (Path(out) / "logging.jsonl").read_text().splitlines()]
    times = [l["train_speed(s/it)"] for l in lines if "loss" in l]
    for i, t in enumerate(times):
        print(f"  mmloop (cache {cache_mb} MiB, {' '.join(extra)}) step {i + 1}: {t:.2f} s", flush=True)
    print(f"  peak RSS {rss:.2f} GiB", flush=True)
    return times, total, rss


def main() -> None:
    fx.ensure_venv(extra={"peft": "peft==0.21.2"})
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "target" / "bench-vlm" / "smolvlm-256m"))
    ap.add_argument("--mmloop", default=str(ROOT / "target" / "debug" / "mmloop"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1, help="examples per step (per_device_train_batch_size)")
    ap.add_argument("--rows", default="kept,recompute,checkpointing,q8,q4",
                    help="mmloop runs: kept (activations kept), recompute (vision recomputed every step, "
                         "activations kept), checkpointing (the default), q8 / q4 (QLoRA)")
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
        keep = ["--gradient_checkpointing", "false"]
        run = lambda cache, extra: mmloop_steps(a.mmloop, model_dir, data, a.steps, a.batch, cache, extra)  # noqa: E731
        runs = {
            "kept": ("mmloop sft, vision features kept, activations kept", 1024, keep),
            "recompute": ("mmloop sft, vision recomputed every step, activations kept", 0, keep),
            "checkpointing": ("mmloop sft, gradient checkpointing (ms-swift's default)", 1024, []),
            "q8": ("mmloop sft --quant_bits 8, gradient checkpointing", 1024, ["--quant_bits", "8", "--quant_method", "bnb"]),
            "q4": ("mmloop sft --quant_bits 4, gradient checkpointing", 1024, ["--quant_bits", "4", "--quant_method", "bnb"]),
        }
        rows = [(runs[r][0], run(runs[r][1], runs[r][2])) for r in a.rows.split(",") if r]
    theirs = peft_steps(model_dir, images, a.steps, a.batch)
    theirs_rss = peak_rss_gib()
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731
    print()
    print(f"batch {a.batch}, {a.steps} steps")
    print("| run | s/step (median after the first) | vs PEFT | peak RSS GiB | vs PEFT | whole run s |")
    print("|---|---|---|---|---|---|")
    print(f"| PEFT 0.21 + transformers 5.24 + torch {__import__('torch').__version__} | {med(theirs):.2f} | 1.00x "
          f"| {theirs_rss:.2f} | 1.00x | |")
    for name, (t, total, r) in rows:
        if not t:
            print(f"| {name} | failed (out of memory?) | | {r:.2f} at exit | | |")
            continue
        print(f"| {name} | {med(t):.2f} | {med(theirs) / med(t):.2f}x | {r:.2f} | {r / theirs_rss:.2f}x | {total:.1f} |")

if __name__ == "__main__":
    main()
