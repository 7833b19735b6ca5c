#!/usr/bin/env python3
"""`mmloop serve` throughput: generated tokens/s with 1 request at a time against C concurrent
requests, on one model, in one run (the engine's continuous batching at work).

    python3 tools/bench/serve_bench.py --model target/bench-vlm/smolvlm-256m \
        [--mmloop target/debug/mmloop] [--concurrency 1,8,32] [--tokens 32] [--image IMG]

Each request is a fixed-length answer (`max_tokens` = `min_tokens` = --tokens, greedy), text-only
unless --image is given (then each request carries that image). For each concurrency C it sends
max(C, 8) requests with C in flight, over plain HTTP, and reports generated tokens/s, the mean
request latency and the mean time to first token (from `/metrics`), and the ratio to C = 1.
Standard library only. The mmloop-models crate is built with opt-level 3 in dev builds, so the
debug binary runs the model at full speed.
"""

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def metric(text, name):
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmloop", default="target/debug/mmloop")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--image")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([a.mmloop, "serve", "--model", a.model, "--port", str(port),
                               "--max-batch-size", str(max(levels)), "--served-model-name", "m"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    content = [{"type": "text", "text": "Describe a wooden chair in one long sentence."}]
    if a.image:
        with open(a.image, "rb") as f:
            url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": a.tokens,
            "min_tokens": a.tokens, "temperature": 0}
    try:
        for _ in range(3000):
            if server.poll() is not None:
                sys.exit("mmloop serve exited: " + server.stderr.read())
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        post(base + "/v1/chat/completions", body)  # warm-up
        rows = []
        for c in levels:
            n = max(c, 8)
            before = urllib.request.urlopen(base + "/metrics").read().decode()
            latencies, tokens, lock = [], [0], threading.Lock()
            todo = list(range(n))

            def worker():
                while True:
                    with lock:
                        if not todo:
                            return
                        todo.pop()
                    t = time.perf_counter()
                    r = post(base + "/v1/chat/completions", body)
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        tokens[0] += r["usage"]["completion_tokens"]

            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            after = urllib.request.urlopen(base + "/metrics").read().decode()
            name = "vllm:time_to_first_token_seconds"
            ttft = (metric(after, name + "_sum") - metric(before, name + "_sum")) / max(
                1, metric(after, name + "_count") - metric(before, name + "_count"))
            rows.append((c, n, tokens[0], wall, tokens[0] / wall, sum(latencies) / len(latencies), ttft))
        one = rows[0][4]
        print(f"| in flight | requests | tokens | wall | tokens/s | vs 1 | mean latency | mean TTFT |")
        print(f"|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c, n, tok, wall, tps, lat, ttft in rows:
            print(f"| {c} | {n} | {tok} | {wall:.1f} s | {tps:.1f} | {tps / one:.2f}x | {lat:.2f} s | {ttft:.2f} s |")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
