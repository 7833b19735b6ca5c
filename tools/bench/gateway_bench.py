#!/usr/bin/env python3
"""What a gateway arm adds: the latency of a chat request sent straight to an OpenAI-compatible
server against the same request through `mmloop serve` in gateway mode (an experiment whose arms
are that server), in one run, interleaved.

    python3 tools/bench/gateway_bench.py [--mmloop target/debug/mmloop] [--requests 500] [--stream]

The upstream is `mmloop serve` on the tiny Qwen2-VL checkpoint of the fixtures, answering a
one-token greedy text question, so the upstream's own time is small and steady and the gateway's
share shows. The gateway runs with a project (each request's exposure is written to it, audited,
as in production). Requests alternate direct / through the gateway over two kept-alive
connections (one per server) from one Python thread; the first 50 of each are warm-up. Reports
p50 / p90 / p99 of both and the median of the paired differences. Standard library only.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "vlm", "qwen2_vl")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(proc, port):
    for _ in range(600):
        if proc.poll() is not None:
            proc.log.seek(0)
            sys.exit("mmloop serve exited: " + proc.log.read())
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("mmloop serve did not come up in 60 s")


def spawn(cmd):
    """A server whose stderr goes to a file the script reads on failure (a pipe nobody reads
    could fill and stall it)."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    return proc


def timed(conn, body):
    data = json.dumps(body).encode()
    t = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    dt = time.perf_counter() - t
    if r.status != 200:
        sys.exit(f"HTTP {r.status}: {payload[:300]!r}")
    return dt * 1e3


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmloop", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "mmloop"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--stream", action="store_true", help="streamed requests (SSE relayed event by event)")
    a = ap.parse_args()
    up_port, gw_port = free_port(), free_port()
    project = tempfile.mkdtemp(prefix="mmloop-gateway-bench-")
    procs = []
    try:
        procs.append(spawn([a.mmloop, "serve", "--model", FIXTURE, "--served-model-name", "tiny",
                            "--port", str(up_port)]))
        wait_up(procs[0], up_port)
        subprocess.run([a.mmloop, "init", project], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        up = f"http://127.0.0.1:{up_port}/v1#tiny"
        procs.append(spawn([a.mmloop, "serve", "--port", str(gw_port), "--project", project,
                            "--experiment", "bench", "--arm", f"a={up}", "--arm", f"b={up}"]))
        wait_up(procs[1], gw_port)
        direct = http.client.HTTPConnection("127.0.0.1", up_port)
        gateway = http.client.HTTPConnection("127.0.0.1", gw_port)
        # The gateway asks its upstream for logprobs (two alternatives) to score the answer:
        # the direct requests ask for the same, so the upstream does the same work both ways.
        body = {"messages": [{"role": "user", "content": "Is the chair red? Answer yes or no."}],
                "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 2}
        if a.stream:
            body["stream"] = True
        d, g = [], []
        for i in range(a.requests + 50):
            td = timed(direct, {**body, "model": "tiny"})
            tg = timed(gateway, {**body, "model": "bench", "user": f"user-{i}"})
            if i >= 50:
                d.append(td)
                g.append(tg)
        diffs = [y - x for x, y in zip(d, g)]
        print(f"{a.requests} requests each ({'streamed' if a.stream else 'whole'}), interleaved, after 50 warm-up")
        print("| path | p50 | p90 | p99 | mean |")
        print("|---|---:|---:|---:|---:|")
        for name, xs in (("direct to the upstream", d), ("through the gateway", g)):
            print(f"| {name} | {pct(xs, .5):.2f} ms | {pct(xs, .9):.2f} ms | {pct(xs, .99):.2f} ms | {statistics.mean(xs):.2f} ms |")
        print(f"gateway overhead: p50 difference {pct(g, .5) - pct(d, .5):+.3f} ms, "
              f"median of paired differences {statistics.median(diffs):+.3f} ms")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
