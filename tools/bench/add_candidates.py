#!/usr/bin/env python3
"""Model candidates for the review benchmark, written the way an engine writes them (rows in
the project's `candidates` table), until the pre-annotation engine can fill a 1M-item project
quickly on this machine.

    python3 tools/bench/add_candidates.py PROJECT/.mmloop/mmloop.db [--fraction 1.0] [--seed 1]

Every item (or a fraction of them) gets one answer with a confidence drawn from a mix of
Beta-like shapes (most answers confident, a long tail of doubtful ones) and, for about one in
six, one or two risk flags (hedge, number_mismatch, short_answer) with a span, in the
`candidate_flags` table. Deterministic; standard library only; one transaction.
"""

import argparse
import random
import sqlite3

FLAGS = [
    ("hedge", "hedges with 'maybe'"),
    ("number_mismatch", "a word where the question asks for a count"),
    ("short_answer", "a one-word caption"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="qwen2.5-vl-7b")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    con = sqlite3.connect(a.db, timeout=60)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    ids = [r[0] for r in con.execute("SELECT id FROM items ORDER BY id")]
    every = max(1, round(1 / a.fraction)) if a.fraction < 1 else 1

    def rows():
        for n, item in enumerate(ids):
            if n % every:
                continue
            conf = rng.betavariate(5, 1.3) if rng.random() < 0.85 else rng.betavariate(1.2, 2.5)
            flags = []
            if rng.random() < 1 / 6:
                for f, why in rng.sample(FLAGS, rng.choice([1, 1, 2])):
                    flags.append({"flag": f, "why": why, "span": [0, 5]})
            model = a.model if n % 10 else a.model + "-ft"
            yield (item, model, "maybe a chair", round(conf, 4), "2026-01-01T00:00:00Z"), flags

    with con:
        for row, flags in rows():
            cur = con.execute(
                "INSERT INTO candidates (item_id, model, answer, confidence, created_at) VALUES (?, ?, ?, ?, ?)", row
            )
            con.executemany(
                "INSERT INTO candidate_flags (candidate_id, pos, flag, why, span_start, span_end) VALUES (?, ?, ?, ?, ?, ?)",
                [(cur.lastrowid, pos, f["flag"], f["why"], *f["span"]) for pos, f in enumerate(flags)],
            )
    n = con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    print(f"{n} candidates in {a.db}")


if __name__ == "__main__":
    main()
