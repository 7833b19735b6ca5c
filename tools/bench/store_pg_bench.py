#!/usr/bin/env python3
"""The store benchmark on both databases, same run, same data: import, commit, export,
re-import of a 1%-changed file, commit, diff, each on SQLite and on PostgreSQL, and the ratio
PostgreSQL / SQLite (the goal is at most 2 for each).

    cargo build --release -p mmloop
    python3 tools/bench/gen_vqa_jsonl.py /tmp/bench1m --items 1000000 --images 200000
    python3 tools/bench/gen_vqa_jsonl.py /tmp/bench1m --items 1000000 --images 200000 --changed 0.01
    tools/pg_test_server.sh start /tmp/pg     # or any server; the URL names its maintenance database
    python3 tools/bench/store_pg_bench.py /tmp/bench1m --mmloop target/release/mmloop \\
        --server postgres://mmloop@127.0.0.1:55432/postgres

The PostgreSQL server runs on the same machine (its default settings; `fsync` on), and gets
an empty database of its own for the run (`psql` creates and drops it). Prints a Markdown table;
times are wall-clock seconds of the whole command, RSS the mmloop process's peak.
"""

import argparse
import os
import shutil
import subprocess
import tempfile


def timed(cmd):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile("r") as t:
        full = ["/usr/bin/time", "-f", "%e %M", "-o", t.name] + cmd
        subprocess.run(full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        secs, kb = t.read().split()
        return float(secs), int(kb) / 1024


def run_all(mm, proj, src, changed, work, init_extra):
    subprocess.run([mm, "init", proj] + init_extra, check=True, capture_output=True)
    out = {}
    out["import"] = timed([mm, "import", proj, src])
    out["commit"] = timed([mm, "commit", proj, "-m", "v1"])
    out["export"] = timed([mm, "export", proj, "--format", "swift", "-o", os.path.join(work, "v1.jsonl")])
    out["re-import, 1% changed"] = timed([mm, "import", proj, changed])
    subprocess.run([mm, "commit", proj, "-m", "v2"], check=True, capture_output=True)
    out["diff v1 v2"] = timed([mm, "diff", proj, "v1", "v2", "--json"])
    out["audit verify"] = timed([mm, "audit", "verify", proj])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="folder made by gen_vqa_jsonl.py (vqa.jsonl, vqa_changed.jsonl, images/)")
    ap.add_argument("--mmloop", default="target/release/mmloop")
    ap.add_argument("--server", required=True, help="postgres://user@host:port/maintenance-db")
    a = ap.parse_args()
    mm = os.path.abspath(a.mmloop)
    data = os.path.abspath(a.data)
    src, changed = os.path.join(data, "vqa.jsonl"), os.path.join(data, "vqa_changed.jsonl")
    base = a.server.rsplit("/", 1)[0]
    db = f"mmloop_bench_{os.getpid()}"
    work = tempfile.mkdtemp(prefix="mmloop-pgbench-")
    subprocess.run(["psql", "-q", a.server, "-c", f"CREATE DATABASE {db}"], check=True)
    try:
        lite = run_all(mm, os.path.join(work, "lite"), src, changed, work, [])
        pg = run_all(mm, os.path.join(work, "pg"), src, changed, work, ["--database", f"{base}/{db}"])
    finally:
        subprocess.run(["psql", "-q", a.server, "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
        shutil.rmtree(work, ignore_errors=True)
    print("| operation | SQLite | PostgreSQL | ratio (PostgreSQL / SQLite) | peak RSS SQLite / PostgreSQL |")
    print("|---|---|---|---|---|")
    for op in lite:
        (t1, r1), (t2, r2) = lite[op], pg[op]
        print(f"| {op} | {t1:.2f} s | {t2:.2f} s | {t2 / t1:.2f}× | {r1:.0f} / {r2:.0f} MiB |")


if __name__ == "__main__":
    main()
