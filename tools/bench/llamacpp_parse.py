#!/usr/bin/env python3
"""Summarise llama-mtmd-cli logs (one per image, run with --log-prefix --log-timestamps -lv 4)
for tools/bench/llamacpp_cpu.sh: one JSON line per variant.

    tools/bench/llamacpp_parse.py VARIANT DIR      # DIR/img*.log

Per image: load = log time of the CLI's "experimental CLI" warning (model + mmproj loaded and
warmed up); image time = from there to llama.cpp's final perf print (JPEG read and decode,
preprocessing, vision encoder, prefill, 16 decode steps). images/s = n / sum(image time).
"""

import glob
import json
import re
import sys

TS = re.compile(r"^(\d+)\.(\d\d)\.(\d\d\d)\.(\d\d\d) [IWED] ")


def ts(line):
    m = TS.match(line)
    if not m:
        return None
    mi, s, ms, us = (int(g) for g in m.groups())
    return mi * 60 + s + ms / 1e3 + us / 1e6


def one(path):
    r = {"views": 0, "vision_ms": 0.0, "image_tokens": 0, "image_prefill_ms": 0.0}
    t_ready = t_end = None
    for line in open(path, errors="replace"):
        t = ts(line)
        if "experimental CLI" in line:
            t_ready = t
        elif "mtmd batch encoding done in" in line:
            r["views"] += 1
            r["vision_ms"] += float(re.search(r"done in (\d+) ms", line).group(1))
        elif "n_tokens_batch =" in line:
            r["image_tokens"] += int(re.search(r"n_tokens_batch = (\d+)", line).group(1))
        elif "image decoded (batch" in line:
            r["image_prefill_ms"] += float(re.search(r"in (\d+) ms", line).group(1))
        elif "llama_perf_context_print: prompt eval time" in line:
            m = re.search(r"=\s+([\d.]+) ms /\s+(\d+) tokens", line)
            r["prompt_eval_ms"], r["prompt_tokens"] = float(m.group(1)), int(m.group(2))
        elif "llama_perf_context_print:        eval time" in line:
            m = re.search(r"=\s+([\d.]+) ms /\s+(\d+) runs", line)
            r["eval_ms"], r["eval_runs"] = float(m.group(1)), int(m.group(2))
        if "llama_perf_context_print" in line and t is not None:
            t_end = t
    if t_ready is None or t_end is None or "eval_runs" not in r:
        raise SystemExit(f"{path}: incomplete log (run failed?)")
    r["load_s"] = t_ready
    r["image_s"] = t_end - t_ready
    return r


def main():
    variant, d = sys.argv[1], sys.argv[2]
    rs = [one(p) for p in sorted(glob.glob(f"{d}/img*.log"))]
    n = len(rs)
    tot = sum(r["image_s"] for r in rs)
    mean = lambda k: sum(r[k] for r in rs) / n  # noqa: E731
    out = {
        "engine": "llama.cpp", "variant": variant, "images": n,
        "images_per_s": round(n / tot, 4), "s_per_image": round(tot / n, 2),
        "load_s_mean": round(mean("load_s"), 2),
        "views_per_image": mean("views"), "image_tokens_per_image": mean("image_tokens"),
        "prompt_tokens": mean("prompt_tokens"),
        "vision_encoder_s_per_image": round(mean("vision_ms") / 1e3, 2),
        "llm_image_prefill_s_per_image": round(mean("image_prefill_ms") / 1e3, 2),
        # llama.cpp's "prompt eval time" runs from the first decode to the first sampled
        # token, so with libmtmd it also covers the vision encoder calls in between.
        "llamacpp_prompt_eval_s_per_image": round(mean("prompt_eval_ms") / 1e3, 2),
        "decode_tokens_per_s": round(sum(r["eval_runs"] for r in rs) / (sum(r["eval_ms"] for r in rs) / 1e3), 2),
        "generated_tokens": mean("eval_runs") + 1,  # the first token is sampled from the prefill
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
