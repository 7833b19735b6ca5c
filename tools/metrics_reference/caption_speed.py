#!/usr/bin/env python3
"""Speed and large-scale parity check: pycocoevalcap 1.2 vs mmloop-metrics.

Makes a synthetic corpus (default 25,000 images x 5 references, the captions of
caption_reference.py), times pycocoevalcap's PTB tokenization (both sides) + Bleu(4) +
Rouge + Cider on it, and writes the corpus, the reference scores and the timings to a
JSON file that `crates/mmloop-metrics/tests/caption_speed.rs` reads to time the Rust
pipeline on the same data and check every score.

With `--plain 1` the captions look like COCO's (lower case words, a final period now and
then) instead of caption_reference.py's deliberately tricky ones.

Usage: python3 tools/metrics_reference/caption_speed.py [--n 25000] [--plain 1] [--out /tmp/caption_speed.json]
Then:  MMLOOP_CAPTION_BENCH=/tmp/caption_speed.json cargo test --release -p mmloop-metrics \
           --test caption_speed -- --ignored --nocapture
"""

import json
import os
import random
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


if __name__ == "__main__":
    main()
