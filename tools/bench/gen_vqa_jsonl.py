#!/usr/bin/env python3
"""Synthetic VQA dataset for the store benchmarks: ms-swift JSONL rows over tiny PNGs.

    python3 tools/bench/gen_vqa_jsonl.py OUT_DIR --items 1000000 --images 200000
    python3 tools/bench/gen_vqa_jsonl.py OUT_DIR --items 1000000 --images 200000 --changed 0.01

Writes OUT_DIR/images/<k>/<n>.png (1×1 pixel, a distinct colour each, so every image has
its own sha256) and OUT_DIR/vqa.jsonl (about 5 questions per image, as in VQAv2). With
--changed F it writes OUT_DIR/vqa_changed.jsonl instead: the same rows with the answers
of a fraction F of them changed (for the diff benchmark). With --questions-only it writes
OUT_DIR/vqa_questions.jsonl: the questions without answers, which import as pending items for
the model to answer (the routing benchmarks). Deterministic; standard library only.
"""

import argparse
import json
import os
import struct
import zlib

QUESTIONS = [
    "What color is the {o}?",
    "How many {o}s are in the picture?",
    "Is the {o} made of wood?",
    "What material is this {o} made of?",
    "Where is the {o}?",
]
OBJECTS = ["chair", "table", "lamp", "sofa", "bed", "shelf", "desk", "stool", "cabinet", "mirror"]
ANSWERS = ["red", "blue", "2", "yes", "no", "wood", "metal", "fabric", "on the left", "3"]


def png(r, g, b):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes([0, r, g, b]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_path(n):
    return f"images/{n // 1000:04d}/{n}.png"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--changed", type=float, default=0.0)
    ap.add_argument("--questions-only", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.changed == 0.0:
        for n in range(a.images):
            p = os.path.join(a.out, image_path(n))
            if n % 1000 == 0:
                os.makedirs(os.path.dirname(p), exist_ok=True)
            if not os.path.exists(p):
                with open(p, "wb") as f:
                    f.write(png(n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF))
    name = "vqa_changed.jsonl" if a.changed else "vqa_questions.jsonl" if a.questions_only else "vqa.jsonl"
    every = round(1 / a.changed) if a.changed else 0
    with open(os.path.join(a.out, name), "w") as f:
        for i in range(a.items):
            img = i % a.images
            obj = OBJECTS[(i // a.images) % len(OBJECTS)]
            q = QUESTIONS[i % len(QUESTIONS)].format(o=obj)
            ans = ANSWERS[(i * 7) % len(ANSWERS)]
            if every and i % every == every // 2:
                ans = ans + " (corrected)"
            messages = [{"role": "user", "content": "<image>" + q}]
            if not a.questions_only:
                messages.append({"role": "assistant", "content": ans})
            row = {"id": str(i), "messages": messages, "images": [image_path(img)]}
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")


if __name__ == "__main__":
    main()
