#!/usr/bin/env python3
"""Routing on the review benchmark project: how much review `mmloop route` saves at
epsilon = 0.05, delta = 0.1, and whether the accepted answers really meet it.

    python3 tools/bench/route_bench.py PROJECT [--data /tmp/bench1m/vqa.jsonl]
        [--mmloop target/release/mmloop] [--serve target/release/examples/review_serve]
        [--size 1000] [--seed 1]

PROJECT is made when missing: the review benchmark's 1,000,000 VQA questions (gen_vqa_jsonl.py),
imported without their answers, as a project fresh from pre-annotation: every item pending with one
model candidate from add_candidates.py. Those candidates have no real truth, so each answer gets a
hidden one: wrong with probability 0.6 * (1 - confidence)^1.5, three times that
with a risk flag (capped at 1), decided by a hash of the item id (deterministic). The script

1. draws an audit sample with `mmloop audit-sample --size N`;
2. starts the review server and decides every audit item through the REST API as a reviewer
   who knows the truth would (accept the right answers, reject the wrong ones), checking
   that the server hands out the audit items first and without the model's confidence;
3. runs `mmloop route --dry-run --json` with the confidence and the calibrated score;
4. applies the default (confidence) run and measures, with the hidden truth, the real error of the
   answers it auto-accepted, against epsilon.

Prints a Markdown table (docs/benchmarks.md, "Routing"). Standard library only.
"""

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request

EPSILON, DELTA = 0.05, 0.1


def p_wrong(conf, flagged):
    return min(1.0, 0.6 * (1.0 - conf) ** 1.5 * (3.0 if flagged else 1.0))


def correct(item_id, conf, flagged):
    u = int.from_bytes(hashlib.sha256(f"truth:{item_id}".encode()).digest()[:8], "big") / 2**64
    return u >= p_wrong(conf, flagged)


def mmloop(args, exe):
    out = subprocess.run([exe, *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def call(url, token, path, body=None):
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, (json.loads(r.read()) if r.status == 200 else None)


def review_audit(project, serve, size):
    srv = subprocess.Popen([serve, project], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = srv.stdout.readline().strip()
        token = srv.stdout.readline().strip()
        decided = wrong = 0
        t0 = time.time()
        while decided < size:
            status, item = call(url, token, "/api/items/next")
            if status == 204:
                break
            assert item["audit"] is not None, f"item {item['item']['id']} served before the audit was done"
            cand = item["candidates"][0]
            assert cand.get("confidence") is None and not cand.get("flags"), "audit items hide the confidence"
            item_id = item["item"]["id"]
            conf, flagged = TRUTH[item_id]
            ok = correct(item_id, conf, flagged)
            wrong += not ok
            body = {
                "action": "accept" if ok else "reject",
                "base": (item["item"]["label"] or {}).get("id"),
                "candidate_id": cand["id"],
                "lead_time_ms": 1000,
            }
            status, _ = call(url, token, f"/api/items/{item_id}/decision", body)
            assert status == 200, status
            decided += 1
        return decided, wrong, time.time() - t0
    finally:
        srv.terminate()
        srv.wait()


def setup(a):
    questions = os.path.join(os.path.dirname(a.data), "vqa-questions.jsonl")
    with open(a.data) as src, open(questions, "w") as dst:
        for line in src:
            row = json.loads(line)
            row["messages"] = [m for m in row["messages"] if m["role"] != "assistant"]
            dst.write(json.dumps(row) + "\n")
    subprocess.run([a.mmloop, "init", a.project], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([a.mmloop, "import", a.project, questions], check=True)
    here = os.path.dirname(os.path.abspath(__file__))
    db = os.path.join(a.project, ".mmloop", "mmloop.db")
    subprocess.run([sys.executable, os.path.join(here, "add_candidates.py"), db], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("project")
    ap.add_argument("--mmloop", default="target/release/mmloop")
    ap.add_argument("--serve", default="target/release/examples/review_serve")
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default="/tmp/bench1m/vqa.jsonl")
    a = ap.parse_args()
    db = os.path.join(a.project, ".mmloop", "mmloop.db")
    if not os.path.exists(db):
        setup(a)
    con = sqlite3.connect(db)
    global TRUTH
    TRUTH = {
        item: (conf, flags not in (None, "", "[]"))
        for item, conf, flags in con.execute(
            "SELECT c.item_id, c.confidence, c.flags FROM candidates c"
            " WHERE c.id = (SELECT MAX(id) FROM candidates WHERE item_id = c.item_id)"
        )
    }
    con.close()
    base_error = sum(not correct(i, c, f) for i, (c, f) in TRUTH.items()) / len(TRUTH)
    # The oracle: the lowest confidence threshold whose answers above it really have error <= epsilon.
    ranked = sorted(TRUTH.items(), key=lambda kv: -kv[1][0])
    wrong_so_far, oracle = 0, (None, 0)
    for n, (i, (c, f)) in enumerate(ranked, 1):
        wrong_so_far += not correct(i, c, f)
        if wrong_so_far <= EPSILON * n and (n == len(ranked) or ranked[n][1][0] < c):
            oracle = (c, n)

    s = mmloop(["audit-sample", a.project, "--size", str(a.size), "--seed", str(a.seed)], a.mmloop)
    decided, wrong, secs = review_audit(a.project, a.serve, s["size"])
    print(f"audit sample {s['id']}: {decided} of {s['pool']:,} pending answers decided in {secs:.1f} s "
          f"through the API, {wrong} wrong; all answers' hidden error {base_error:.4f}", file=sys.stderr)

    rows = []
    for score in ("confidence", "calibrated"):
        t0 = time.time()
        plan = mmloop(["route", a.project, "--epsilon", str(EPSILON), "--delta", str(DELTA),
                       "--score", score, "--dry-run"], a.mmloop)["plan"]
        secs = time.time() - t0
        g = plan["groups"][0]
        cert = g["confidence"] if score == "confidence" else g["calibrated"]
        rows.append((score, cert, plan, secs))

    t0 = time.time()
    applied = mmloop(["route", a.project, "--epsilon", str(EPSILON), "--delta", str(DELTA),
                      "--audit-rate", "0.02"], a.mmloop)
    apply_secs = time.time() - t0
    con = sqlite3.connect(db)
    run = applied["applied"]["run_id"]
    accepted = [
        (i,) + TRUTH[i]
        for (i,) in con.execute(
            "SELECT item_id FROM labels WHERE actor = ? AND action = 'auto_accept'", (f"route:{run}",)
        )
    ]
    real_error = sum(not correct(i, c, f) for i, c, f in accepted) / max(1, len(accepted))

    print(f"| score | threshold | audited above it (n) | wrong (k) | p-value | review saved | time |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for score, cert, plan, secs in rows:
        t = cert["threshold"] if cert else None
        print(f"| {score} | {t if t is None else f'{t:.4f}'} | {cert['n'] if cert else 0} | "
              f"{cert['errors'] if cert else 0} | {(cert or {}).get('p_value') or float('nan'):.3f} | "
              f"{plan['accepted']:,} of {plan['pool']:,} ({plan['review_saved'] * 100:.1f}%) | {secs:.1f} s |")
    print()
    print(f"oracle: confidence >= {oracle[0]:.4f} accepts {oracle[1]:,} of {len(TRUTH):,} "
          f"({oracle[1] / len(TRUTH) * 100:.1f}%) with true error <= {EPSILON}")
    print(f"applied (confidence, run {run}): {len(accepted):,} answers auto-accepted in {apply_secs:.1f} s, "
          f"real error among them {real_error:.4f} (epsilon {EPSILON}); drift sample of "
          f"{applied['applied']['drift_size']:,}")


if __name__ == "__main__":
    main()
