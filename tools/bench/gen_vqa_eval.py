#!/usr/bin/env python3
"""Synthetic VQAv2 files for timing `mmloop eval` on VQA accuracy: an annotations file of
N questions x 10 human answers (mostly one answer with a few variants, as in VQAv2, with
question and answer types) and a VQA results file `[{question_id, answer}]`.

Usage: python3 tools/bench/gen_vqa_eval.py OUT_DIR [--n 200000] [--seed 1]
Then:  target/release/mmloop eval --predictions OUT_DIR/results.json \\
           --references OUT_DIR/annotations.json --metrics vqa_acc -o OUT_DIR/report
"""

import json
import os
import random
import sys

ANSWERS = ["yes", "Yes", "no", "No.", "2", "two", "3", "1,000", "red", "white and black", "frisbee", "t-shirt",
           "tshirt", "a dog", "dog", "the man", "tennis", "baseball bat", "left", "right", "don't know", "dont know",
           "kitchen", "black/white", "10:30", "u.s.a.", "blue", "green", "giraffe", "pizza", "surfing",
           "skateboarding", "umbrella", "clock", "5", "five", "none", "café", "on the table", "sitting"]
QTYPES = ["what color is the", "how many", "is the", "what is the", "what", "are there", "why", "where is the"]
ATYPES = ["other", "number", "yes/no"]


def main():
    out = sys.argv[1]
    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    n = int(args.get("--n", "200000"))
    rng = random.Random(int(args.get("--seed", "1")))
    os.makedirs(out, exist_ok=True)
    anns, res = [], []
    for q in range(1, n + 1):
        base = rng.randrange(len(ANSWERS))
        answers = [ANSWERS[base] if rng.random() < 0.7 else ANSWERS[(base + rng.randrange(10)) % len(ANSWERS)]
                   for _ in range(10)]
        anns.append({
            "question_id": q,
            "image_id": q // 5,
            "question_type": rng.choice(QTYPES),
            "answer_type": rng.choice(ATYPES),
            "multiple_choice_answer": answers[0],
            "answers": [{"answer_id": i + 1, "answer": a, "answer_confidence": "yes"} for i, a in enumerate(answers)],
        })
        res.append({"question_id": q, "answer": rng.choice(ANSWERS)})
    with open(os.path.join(out, "annotations.json"), "w") as f:
        json.dump({"annotations": anns}, f)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f)
    print("wrote", n, "questions to", out)


if __name__ == "__main__":
    main()
