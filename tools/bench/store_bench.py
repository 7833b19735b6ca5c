#!/usr/bin/env python3
"""Store benchmark: import, export, commit and diff of a 1M-item project, each next to a
simple reference run on the same data in the same run.

    cargo build --release -p mmloop
    python3 tools/bench/gen_vqa_jsonl.py /tmp/bench1m --items 1000000 --images 200000
    python3 tools/bench/gen_vqa_jsonl.py /tmp/bench1m --items 1000000 --images 200000 --changed 0.01
    python3 tools/bench/store_bench.py /tmp/bench1m --mmloop target/release/mmloop

References (standard tools, no mmloop):
  import  — `jq -c . vqa.jsonl` and Python `json.loads` of every line (parsing alone,
            no images, no database);
  export  — Python: load every line, `json.dumps` it back to a file;
  commit  — Python: sha256 of every exported line, sorted, hashed (a content id);
  diff    — GNU `diff` of the two exported files.
Prints a Markdown table; times are wall-clock seconds, RSS is peak resident memory.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def timed(cmd, **kw):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile("r") as t:
        full = ["/usr/bin/time", "-f", "%e %M", "-o", t.name] + cmd
        subprocess.run(full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        secs, kb = t.read().split()
        return float(secs), int(kb) / 1024


PY_PARSE = "import json,sys\nfor l in open(sys.argv[1]): json.loads(l)"
PY_EXPORT = "import json,sys\nw=open(sys.argv[2],'w')\nfor l in open(sys.argv[1]): w.write(json.dumps(json.loads(l))+'\\n')"
PY_COMMIT = (
    "import hashlib,sys\nh=sorted(hashlib.sha256(l).digest() for l in open(sys.argv[1],'rb'))\n"
    "print(hashlib.sha256(b''.join(h)).hexdigest())"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="folder made by gen_vqa_jsonl.py (vqa.jsonl, vqa_changed.jsonl, images/)")
    ap.add_argument("--mmloop", default="target/release/mmloop")
    a = ap.parse_args()
    mm = os.path.abspath(a.mmloop)
    data = os.path.abspath(a.data)
    src = os.path.join(data, "vqa.jsonl")
    changed = os.path.join(data, "vqa_changed.jsonl")
    work = tempfile.mkdtemp(prefix="mmloop-bench-")
    proj = os.path.join(work, "p")
    out1 = os.path.join(work, "v1.jsonl")
    out2 = os.path.join(work, "v2.jsonl")
    rows = []
    try:
        subprocess.run([mm, "init", proj], check=True, capture_output=True)
        imp = timed([mm, "import", proj, src])
        jq = timed(["jq", "-c", ".", src]) if shutil.which("jq") else None
        py = timed([sys.executable, "-c", PY_PARSE, src])
        rows.append(("import 1M VQA items (JSONL, 200k images)", imp, [("jq -c .", jq), ("Python json.loads", py)]))
        com = timed([mm, "commit", proj, "-m", "v1"])
        exp = timed([mm, "export", proj, "--format", "swift", "-o", out1])
        pyexp = timed([sys.executable, "-c", PY_EXPORT, src, os.path.join(work, "py.jsonl")])
        rows.append(("export 1M items (ms-swift JSONL)", exp, [("Python load+dump", pyexp)]))
        pycom = timed([sys.executable, "-c", PY_COMMIT, out1])
        rows.append(("commit 1M items", com, [("Python sorted sha256", pycom)]))
        subprocess.run([mm, "import", proj, changed], check=True, capture_output=True)
        subprocess.run([mm, "commit", proj, "-m", "v2"], check=True, capture_output=True)
        dif = timed([mm, "diff", proj, "v1", "v2", "--json"])
        subprocess.run([mm, "export", proj, "--format", "swift", "-o", out2], check=True, capture_output=True)
        gnu = timed(["sh", "-c", f"diff {out1} {out2} > /dev/null; true"])
        rows.append(("diff two 1M versions, 1% changed", dif, [("GNU diff of exports", gnu)]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| operation | mmloop | peak RSS | reference | ratio (reference / mmloop) |")
    print("|---|---|---|---|---|")
    for name, (t, rss), refs in rows:
        ref = "; ".join(f"{n} {r[0]:.2f} s" for n, r in refs if r)
        ratio = "; ".join(f"{r[0] / t:.2f}×" for n, r in refs if r)
        print(f"| {name} | {t:.2f} s | {rss:.0f} MiB | {ref} | {ratio} |")


if __name__ == "__main__":
    main()
