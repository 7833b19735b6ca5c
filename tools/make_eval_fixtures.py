#!/usr/bin/env python3
"""Writes the inputs of `mmloop eval`'s end-to-end tests (tests/fixtures/eval/) from the
reference fixtures under tests/fixtures/metrics/, so the expected numbers are the
reference implementations' own (pycocoevalcap 1.2, the official VQA eval, VLMEvalKit,
MME calculation.py). Plain Python 3, no packages; rerun it after regenerating those.

Usage: python3 tools/make_eval_fixtures.py
"""

import csv
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "fixtures", "metrics")
OUT = os.path.join(ROOT, "tests", "fixtures", "eval")


def load(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return json.load(f)


def dump(name, value, lines=False):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        if lines:
            for v in value:
                f.write(json.dumps(v, ensure_ascii=False) + "\n")
        else:
            json.dump(value, f, ensure_ascii=False, indent=1)
            f.write("\n")
    print("wrote", os.path.relpath(path, ROOT))


def captions():
    """COCO annotation + results files for the 300-image `mixed` corpus of captions.json."""
    corpus = load("captions.json")["corpora"]["mixed"]["images"]
    images, annotations, results = [], [], []
    ann_id = 1
    for im in corpus:
        images.append({"id": im["id"], "file_name": "img_%d.png" % im["id"]})
        for c in im["references"]:
            annotations.append({"id": ann_id, "image_id": im["id"], "caption": c})
            ann_id += 1
        results.append({"image_id": im["id"], "caption": im["prediction"]})
    dump("captions_refs.json", {"info": {"description": "captions.json mixed corpus"}, "images": images, "annotations": annotations})
    dump("captions_results.json", results)


def vqa():
    """VQAv2 questions + annotations and results for the 409 questions of vqa_official.json,
    plus JSONL predictions with confidences (A) and a second model (B) for --compare."""
    qs = load("vqa_official.json")["questions"]
    questions, annotations, results, a_rows, b_rows = [], [], [], [], []
    rng = random.Random(4)
    for q in qs:
        qid = q["question_id"]
        questions.append({"question_id": qid, "image_id": 1000 + qid % 50, "question": "Question %d?" % qid})
        annotations.append({
            "question_id": qid,
            "image_id": 1000 + qid % 50,
            "question_type": q["question_type"],
            "answer_type": q["answer_type"],
            "multiple_choice_answer": q["answers"][0],
            "answers": [{"answer_id": i + 1, "answer": a, "answer_confidence": "yes"} for i, a in enumerate(q["answers"])],
        })
        results.append({"question_id": qid, "answer": q["prediction"]})
        right = q["accuracy"] > 0
        conf = min(1.0, max(0.0, rng.gauss(0.75 if right else 0.45, 0.15)))
        a_rows.append({"id": qid, "answer": q["prediction"], "confidence": round(conf, 4), "model": "model-a"})
        # B answers with the most common human answer for a third of the questions.
        b = max(set(q["answers"]), key=q["answers"].count) if qid % 3 == 0 else q["prediction"]
        b_rows.append({"id": qid, "answer": b, "confidence": round(rng.random(), 4), "model": "model-b"})
    dump("vqa_questions.json", {"data_subtype": "val2014", "questions": questions})
    dump("vqa_annotations.json", {"data_subtype": "val2014", "annotations": annotations})
    dump("vqa_results.json", results)
    dump("vqa_a.jsonl", a_rows, lines=True)
    dump("vqa_b.jsonl", b_rows, lines=True)


def choice():
    """A VLMEvalKit-style multiple-choice result table (TSV) from choice.json."""
    rows = load("choice.json")["rows"]
    cols = ["index", "question", "A", "B", "C", "D", "E", "answer", "category", "l2-category", "prediction"]
    path = os.path.join(OUT, "choice.tsv")
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    print("wrote", os.path.relpath(path, ROOT))


def mme():
    """MME result files (one per subtask: image, question, truth, answer) from mme.json."""
    d = os.path.join(OUT, "mme")
    os.makedirs(d, exist_ok=True)
    by_task = {}
    for r in load("mme.json")["rows"]:
        by_task.setdefault(r["task"], []).append(r)
    for task, rows in by_task.items():
        with open(os.path.join(d, task + ".txt"), "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                fields = [r["image"], r["question"], r["answer"], r["prediction"]]
                assert not any("\t" in x or "\n" in x for x in fields), fields
                f.write("\t".join(fields) + "\n")
    print("wrote", os.path.relpath(d, ROOT), len(by_task), "files")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    captions()
    vqa()
    choice()
    mme()
