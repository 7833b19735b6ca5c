#!/usr/bin/env python3
"""Golden caption scores from pycocoevalcap 1.2 for mmloop-metrics' parity tests.

Runs the `COCOEvalCap.evaluate` pipeline (PTB tokenizer on both sides, then Bleu(4),
Meteor, Rouge, Cider; SPICE left out: it needs Java 8/11 and a 385 MB download) on:

- `toy`: the already tokenized vector of shared/reference/eval-metrics.md section 2,
  scored without the tokenizer, and checked against the numbers printed there;
- `mixed`: a few hundred images of raw captions with real-world variety (case,
  punctuation, numbers, contractions, unicode, empty and very long captions, 1 to 7
  references per image);
- `mixed_reversed`: the same images in reverse order (numpy's pairwise means depend on it);
- `single`: one image (CIDEr-D's idf is log(1) = 0 there).

For each corpus it records the inputs, the tokenized captions, corpus and per-image
scores, BLEU's summed statistics, and METEOR's per-image statistics lines (the jar's SCORE
answers), with the Python, numpy, pycocoevalcap and Java versions.

Usage: python3 tools/metrics_reference/caption_reference.py
Writes tests/fixtures/metrics/captions.json.
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _venv  # noqa: E402

_venv.ensure()

from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.bleu.bleu_scorer import BleuScorer  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.meteor.meteor import Meteor  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402

SEED = 4242

TOY_GTS = {
    1: ["a man is riding a horse on the beach", "a person rides a brown horse along the shore", "a man on a horse near the ocean"],
    2: ["two dogs play with a red ball in the grass", "a couple of dogs playing in a field", "two puppies chase a ball on the lawn"],
    3: ["a plate of food with broccoli and rice", "a white plate topped with rice and vegetables", "food on a plate including broccoli"],
}
TOY_RES = {1: ["a man riding a horse on a beach"], 2: ["two dogs playing with a ball"], 3: ["a plate of rice and broccoli"]}
# shared/reference/eval-metrics.md, section 4 ("Toy vector").
TOY_EXPECTED = {
    "Bleu": [0.8595955470482018, 0.7409664032686888, 0.47393662126220276, 0.30590365617143206],
    "Bleu_4_per_image": [0.45180100167677795, 1.1513632354919353e-08, 8.408964149138525e-05],
    "ROUGE_L": 0.6566674458134188,
    "ROUGE_L_per_image": [0.8148854961832059, 0.5980392156862745, 0.5570776255707762],
    "CIDEr": 2.11764156844853,
    "CIDEr_per_image": [2.491456357732301, 1.5401914851095224, 2.3212768625037663],
    "METEOR": 0.3646897631888383,
    "METEOR_per_image": [0.4660002630667703, 0.2977784404145588, 0.34810539203451696],
}

SUBJECTS = [
    "a man", "a woman", "two dogs", "a cat", "a young boy", "an elderly woman", "a group of people",
    "three zebras", "a red double-decker bus", "a baby elephant", "someone's hand", "the chef",
    "A MAN", "The Cat", "a 3-year-old girl", "a skateboarder", "a café owner", "a teddy bear",
]
VERBS = [
    "riding", "holding", "sitting on", "standing next to", "eating", "looking at", "walking past",
    "playing with", "is riding", "are sitting on", "doesn't like", "can't reach", "won't leave",
    "jumps over", "leans against", "is cooking", "flies over",
]
OBJECTS = [
    "a horse", "a red ball", "a wooden table", "a laptop computer", "a pizza with pepperoni & mushrooms",
    "the beach", "a fire hydrant", "a stop sign", "a plate of food", "an umbrella (black)", "the U.S. Capitol",
    "a sign that says \"STOP\"", "a bowl of soup; some bread", "a giraffe", "a kite", "the ocean",
    "a $4.99 burger", "a clock showing 10:45", "½ a sandwich", "a T-shirt", "a naïve drawing",
    "the No. 7 train", "a café in Paris", "a TV, a couch and a table", "an iPhone", "snow-covered trees",
]
PLACES = [
    "on a beach", "in a kitchen", "in the grass", "near the ocean", "at 5:30 p.m.", "in New York",
    "on a city street", "in a field...", "at the airport", "in the rain", "next to a window",
    "on a rainy day", "in a zoo enclosure", "by the lake", "in a living room", "at Times Sq.",
    "in 2014", "with 1,000 others", "at 9am", "in Zürich", "on the 42nd floor", "in the U.K.",
]
ENDINGS = ["", ".", " .", "!", "...", "…", "?", " !!", ".\"", "'", " etc.", " :)", ")"]
ODDITIES = [
    "it's", "they're", "I'm", "we'll", "--", " - ", "(x)", "[y]", "{z}", "e.g.", "i.e.", "vs.",
    "Mr.", "Dr.", "www.example.com", "me@example.com", "#tbt", "@user", "50%", "3/4", "C++",
    "Ελλάδα", "東京", "русский", "😀", "x*y", "a/b", "AT&T", "Q&A", "'90s", "o'clock", "y'all",
]


def caption(rng):
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(PLACES))
    if rng.random() < 0.25:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(ODDITIES))
    s = " ".join(parts)
    r = rng.random()
    if r < 0.3:
        s = s[0].upper() + s[1:]
    elif r < 0.35:
        s = s.upper()
    if rng.random() < 0.1:
        s = s.replace(" ", "  ", 1)
    return s + rng.choice(ENDINGS)


def prediction(rng, refs):
    r = rng.random()
    if r < 0.04:
        return ""
    if r < 0.07:
        return " ".join(caption(rng) for _ in range(12))  # very long
    if r < 0.5:
        words = rng.choice(refs).split(" ")
        for _ in range(rng.randint(0, 3)):
            if words and rng.random() < 0.5:
                del words[rng.randrange(len(words))]
            else:
                words.insert(rng.randrange(len(words) + 1), rng.choice(["a", "the", "big", "small", "red", "two"]))
        return " ".join(words)
    return caption(rng)


def mixed_corpus(rng, n):
    images = []
    for i in range(n):
        k = rng.randint(1, 7)
        refs = [caption(rng) for _ in range(k)]
        if rng.random() < 0.03:
            refs[rng.randrange(k)] = ""
        if rng.random() < 0.03:
            refs[rng.randrange(k)] = " ".join(caption(rng) for _ in range(10))
        images.append({"id": 1000 + 7 * i, "references": refs, "prediction": prediction(rng, refs)})
    return images


def bleu_stats(gts, res):
    scorer = BleuScorer(n=4)
    for i in gts:
        scorer += (res[i][0], gts[i])
    scorer.compute_score(option="closest", verbose=0)
    guess = [sum(c["guess"][k] for c in scorer.ctest) for k in range(4)]
    correct = [sum(c["correct"][k] for c in scorer.ctest) for k in range(4)]
    return {"testlen": scorer._testlen, "reflen": scorer._reflen, "guess": guess, "correct": correct}


def score(gts, res, meteor):
    """The scorers of COCOEvalCap.evaluate on tokenized captions, plus METEOR's stats."""
    out = {}
    b, bs = Bleu(4).compute_score(gts, res, verbose=0)
    out["Bleu"] = [float(x) for x in b]
    out["Bleu_per_image"] = [[float(bs[k][i]) for k in range(4)] for i in range(len(gts))]
    out["bleu_stats"] = bleu_stats(gts, res)
    stats = []
    orig = meteor._stat

    def record(h, r):
        s = orig(h, r)
        stats.append(s)
        return s

    meteor._stat = record
    m, ms = meteor.compute_score(gts, res)
    meteor._stat = orig
    out["METEOR"] = float(m)
    out["METEOR_per_image"] = [float(x) for x in ms]
    out["meteor_stats"] = stats
    r, rs = Rouge().compute_score(gts, res)
    out["ROUGE_L"] = float(r)
    out["ROUGE_L_per_image"] = [float(x) for x in rs]
    c, cs = Cider().compute_score(gts, res)
    out["CIDEr"] = float(c)
    out["CIDEr_per_image"] = [float(x) for x in cs]
    return out


def run_raw(images, meteor):
    gts = {im["id"]: [{"caption": c} for c in im["references"]] for im in images}
    res = {im["id"]: [{"caption": im["prediction"]}] for im in images}
    tok = PTBTokenizer()
    gts_t = tok.tokenize(gts)
    res_t = tok.tokenize(res)
    out = {"images": images}
    out["tokenized"] = {
        "references": [gts_t[im["id"]] for im in images],
        "predictions": [res_t[im["id"]][0] for im in images],
    }
    out["scores"] = score(gts_t, res_t, meteor)
    return out


def check_toy(scores):
    problems = []
    for key, want in TOY_EXPECTED.items():
        if key == "Bleu_4_per_image":
            got = [s[3] for s in scores["Bleu_per_image"]]
        else:
            got = scores[key]
        if got != want:
            problems.append(f"{key}: got {got}, eval-metrics.md says {want}")
    return problems


def main():
    rng = random.Random(SEED)
    meteor = Meteor()
    toy = {"gts": {str(k): v for k, v in TOY_GTS.items()}, "res": {str(k): v for k, v in TOY_RES.items()}}
    toy["scores"] = score(TOY_GTS, TOY_RES, meteor)
    toy["matches_eval_metrics_md"] = check_toy(toy["scores"])
    for p in toy["matches_eval_metrics_md"]:
        print("toy vector differs:", p)
    if not toy["matches_eval_metrics_md"]:
        print("toy vector: identical to eval-metrics.md")
        toy["matches_eval_metrics_md"] = True

    mixed = mixed_corpus(rng, 300)
    reversed_run = run_raw(list(reversed(mixed)), meteor)
    # Same images as "mixed" in reverse order: only the scores are stored again.
    reversed_run = {"reverse_of": "mixed", "scores": reversed_run["scores"]}
    corpora = {
        "toy": toy,
        "mixed": run_raw(mixed, meteor),
        "mixed_reversed": reversed_run,
        "single": run_raw(mixed_corpus(rng, 1), meteor),
    }
    out = {"reference": _venv.versions(), "pipeline": "pycocoevalcap 1.2 COCOEvalCap.evaluate without SPICE", "corpora": corpora}
    path = os.path.join(_venv.ROOT, "tests", "fixtures", "metrics", "captions.json")
    with open(path, "w") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    for name, c in corpora.items():
        s = c["scores"]
        print(f"{name}: BLEU {s['Bleu']} METEOR {s['METEOR']} ROUGE_L {s['ROUGE_L']} CIDEr {s['CIDEr']}")
    print("wrote", path)


if __name__ == "__main__":
    main()
