#!/usr/bin/env python3
"""Speed and large-scale parity check: pycocoevalcap 1.2 vs mmloop-metrics.

Makes a synthetic corpus (default 25,000 images x 5 references, the captions of
caption_reference.py), times pycocoevalcap's PTB tokenization (both sides) + Bleu(4) +
Rouge + Cider on it, and writes the corpus, the reference scores and the timings to a
JSON file that `crates/mmloop-metrics/tests/caption_speed.rs` reads to time the Rust
pipeline on the same data and check every score.

With `--plain 1` the captions look like COCO's (lower case words, a final period now and
then) instead of caption_reference.py's deliberately tricky ones.

With `--mmloop PATH` (a release `mmloop` binary) the same corpus is also written as a COCO
annotation file and a COCO results file under `--coco-dir`, scored end to end by
`mmloop eval --metrics bleu,rouge_l,cider` in the same run, timed, and every corpus and
per-image score compared with pycocoevalcap's.

Usage: python3 tools/metrics_reference/caption_speed.py [--n 25000] [--plain 1] [--out /tmp/caption_speed.json]
           [--mmloop target/release/mmloop] [--coco-dir /tmp/caption_speed_coco]
Then:  MMLOOP_CAPTION_BENCH=/tmp/caption_speed.json cargo test --release -p mmloop-metrics \
           --test caption_speed -- --ignored --nocapture
"""

import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _venv  # noqa: E402

_venv.ensure()

import caption_reference as cr  # noqa: E402
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402


PLAIN_WORDS = {
    "subject": ["a man", "a woman", "two dogs", "a cat", "a young boy", "a group of people", "a giraffe", "a train"],
    "verb": ["riding", "holding", "sitting on", "standing next to", "eating", "looking at", "walking down"],
    "object": ["a horse", "a surfboard", "a wooden table", "a laptop", "a pizza", "the street", "a kite", "a bench"],
    "place": ["on a beach", "in a kitchen", "in the grass", "near the water", "on top of a hill", "in a field"],
}


def plain_caption(rng):
    w = PLAIN_WORDS
    s = " ".join([rng.choice(w["subject"]), rng.choice(w["verb"]), rng.choice(w["object"]), rng.choice(w["place"])])
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:]
    return s + rng.choice(["", ".", " ."])


def main():
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    n = int(args.get("--n", "25000"))
    out_path = args.get("--out", "/tmp/caption_speed.json")
    rng = random.Random(7)
    images = []
    make = plain_caption if args.get("--plain") == "1" else cr.caption
    for i in range(n):
        refs = [make(rng) for _ in range(5)]
        pred = make(rng) if rng.random() < 0.5 else refs[0].replace(" a ", " the ", 1)
        images.append({"references": refs, "prediction": pred})
    gts = {i: [{"caption": c} for c in im["references"]] for i, im in enumerate(images)}
    res = {i: [{"caption": im["prediction"]}] for i, im in enumerate(images)}
    t = {}
    t0 = time.perf_counter()
    tok = PTBTokenizer()
    gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
    t["tokenize"] = time.perf_counter() - t0
    scores = {}
    for name, scorer in [("Bleu", Bleu(4)), ("ROUGE_L", Rouge()), ("CIDEr", Cider())]:
        t0 = time.perf_counter()
        if name == "Bleu":
            s, ss = scorer.compute_score(gts_t, res_t, verbose=0)
            scores["Bleu"] = [float(x) for x in s]
            scores["Bleu_per_image"] = [[float(ss[k][i]) for k in range(4)] for i in range(n)]
        else:
            s, ss = scorer.compute_score(gts_t, res_t)
            scores[name] = float(s)
            scores[name + "_per_image"] = [float(x) for x in ss]
        t[name] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    print("pycocoevalcap seconds:", {k: round(v, 2) for k, v in t.items()})
    with open(out_path, "w") as f:
        json.dump({"reference": _venv.versions(), "images": images, "scores": scores, "seconds": t}, f)
    print("wrote", out_path)
    if args.get("--mmloop"):
        run_mmloop(args["--mmloop"], args.get("--coco-dir", "/tmp/caption_speed_coco"), images, scores, t["total"])


def run_mmloop(binary, coco_dir, images, scores, py_seconds):
    """`mmloop eval` on the same corpus as COCO files, timed end to end, scores compared."""
    os.makedirs(coco_dir, exist_ok=True)
    refs = {"images": [], "annotations": []}
    res = []
    for i, im in enumerate(images):
        refs["images"].append({"id": i, "file_name": "%012d.jpg" % i})
        for c in im["references"]:
            refs["annotations"].append({"id": len(refs["annotations"]) + 1, "image_id": i, "caption": c})
        res.append({"image_id": i, "caption": im["prediction"]})
    refs_path = os.path.join(coco_dir, "captions_refs.json")
    res_path = os.path.join(coco_dir, "captions_results.json")
    with open(refs_path, "w") as f:
        json.dump(refs, f)
    with open(res_path, "w") as f:
        json.dump(res, f)
    out = os.path.join(coco_dir, "report")
    cmd = [binary, "eval", "--predictions", res_path, "--references", refs_path,
           "--metrics", "bleu,rouge_l,cider", "-o", out]
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    with open(os.path.join(out, "metrics.json")) as f:
        got = json.load(f)
    by = {m["name"]: m for m in got["metrics"]}
    diffs = {
        "Bleu": max(abs(p["value"] - w) for p, w in zip(by["bleu"]["parts"], scores["Bleu"])),
        "ROUGE_L": abs(by["rouge_l"]["value"] - scores["ROUGE_L"]),
        "CIDEr": abs(by["cider"]["value"] - scores["CIDEr"]),
    }
    per = {"Bleu": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}
    for i, it in enumerate(got["items"]):
        s = it["scores"]
        per["Bleu"] = max(per["Bleu"], max(abs(s["bleu_%d" % (k + 1)] - scores["Bleu_per_image"][i][k]) for k in range(4)))
        per["ROUGE_L"] = max(per["ROUGE_L"], abs(s["rouge_l"] - scores["ROUGE_L_per_image"][i]))
        per["CIDEr"] = max(per["CIDEr"], abs(s["cider"] - scores["CIDEr_per_image"][i]))
    print("mmloop eval end to end: runs %s s, best %.3f s; pycocoevalcap %.2f s: %.1fx faster"
          % ([round(r, 3) for r in runs], best, py_seconds, py_seconds / best))
    print("max |mmloop - pycocoevalcap|: corpus", diffs, "per image", per)
    if any(diffs.values()) or any(per.values()):
        sys.exit("scores differ")
    print("identical scores: corpus and all", len(got["items"]), "images")


if __name__ == "__main__":
    main()
