#!/usr/bin/env python3
"""Writes tests/fixtures/metrics/growthbook.json: GrowthBook's own SDK (the `growthbook`
package on PyPI, pinned below) hashing user ids and choosing arms, so the test in
crates/mmloop-metrics/tests/growthbook_parity.rs can assert that `mmloop serve` puts every
user in the arm GrowthBook's SDKs would.

The cases: ASCII, non-ASCII (BMP and astral, where FNV-1a runs over UTF-16 code units) and
empty ids and seeds, with equal and unequal weights for 2, 3 and 4 arms, plus the SDK's
full-stack `run` of an experiment for a sample of users.

Usage: python3 tools/ab_reference.py   (creates tools/.venv-ab on first use)
"""

import json
import os
import random
import subprocess
import sys

PIN = "growthbook==4.0.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv-ab")
OUT = os.path.join(ROOT, "tests", "fixtures", "metrics", "growthbook.json")


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", PIN])
    os.execv(py, [py, *sys.argv])


def main():
    ensure_venv()
    from growthbook import GrowthBook, Experiment
    from growthbook.core import chooseVariation, gbhash, getBucketRanges

    rng = random.Random(11)
    seeds = ["", "exp", "captions-v2", "résumé-test", "实验-1", "🚀launch"]
    ids = ["", "a", "user-1", "123", "alice@example.com", "Zoë", "用户42", "𝒳-astral", "x" * 200]
    ids += ["u%d" % rng.randrange(10**9) for _ in range(40)]
    hashes = [{"seed": s, "id": i, "hash": gbhash(s, i, 2)} for s in seeds for i in ids]

    weight_sets = [[0.5, 0.5], [0.1, 0.9], [1 / 3, 1 / 3, 1 / 3], [0.25, 0.25, 0.25, 0.25], [0.7, 0.2, 0.1]]
    assignments = []
    for w in weight_sets:
        ranges = getBucketRanges(len(w), 1, w)
        for s in seeds[:3]:
            for i in ids:
                assignments.append({"seed": s, "id": i, "weights": w, "arm": chooseVariation(gbhash(s, i, 2), ranges)})

    # The SDK end to end: an experiment keyed by `id`, hash version 2, the seed given.
    runs = []
    for w in weight_sets[:3]:
        for k in range(60):
            uid = "user-%d" % rng.randrange(10**6)
            gb = GrowthBook(attributes={"id": uid})
            exp = Experiment(key="mmloop-exp", variations=list(range(len(w))), weights=w, hashVersion=2, seed="mmloop-exp")
            r = gb.run(exp)
            runs.append({"seed": "mmloop-exp", "id": uid, "weights": w, "arm": r.variationId, "in_experiment": r.inExperiment})

    doc = {
        "generated_by": "tools/ab_reference.py",
        "reference": PIN,
        "python": sys.version.split()[0],
        "hash_version": 2,
        "hashes": hashes,
        "assignments": assignments,
        "sdk_runs": runs,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print("wrote", os.path.relpath(OUT, ROOT), len(hashes), "hashes,", len(assignments), "assignments,", len(runs), "SDK runs")


if __name__ == "__main__":
    main()
