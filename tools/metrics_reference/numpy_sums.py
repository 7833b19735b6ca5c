#!/usr/bin/env python3
"""Golden values for `np.sum` / `np.mean` on float64 arrays, for mmloop-metrics' numeric.rs.

Arrays come from a splitmix64 stream that the Rust test regenerates, so the fixture holds
only (seed, length, sum bits, mean bits). Values span 60 binary orders of magnitude so
that any change of summation order shows in the result.

Usage: python3 tools/metrics_reference/numpy_sums.py
Writes tests/fixtures/metrics/numpy_sums.json.
"""

import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _venv  # noqa: E402

_venv.ensure()

import numpy as np  # noqa: E402

MASK = (1 << 64) - 1


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def array(seed, n):
    s, out = seed, []
    for _ in range(n):
        s, a = splitmix(s)
        s, b = splitmix(s)
        out.append(math.ldexp((a >> 11) / 2.0**53 - 0.5, (b % 61) - 30))
    return out


def bits(x):
    return "%016x" % struct.unpack("<Q", struct.pack("<d", x))[0]


def main():
    cases = []
    lengths = [(seed, splitmix(seed * 7919)[1] % 2001) for seed in range(3000)]
    lengths += [(10_000 + i, n) for i, n in enumerate([4095, 4096, 8191, 8192, 8193, 16384, 25000, 100_003])]
    for seed, n in lengths:
        a = np.array(array(seed, n), dtype=np.float64)
        s = float(np.sum(a))
        m = float(np.mean(a)) if n else float("nan")
        cases.append([seed, n, bits(s), bits(m)])
    out = {"reference": _venv.versions(), "generator": "splitmix64; value = ldexp((a>>11)/2^53 - 0.5, b%61 - 30)", "cases": cases}
    path = os.path.join(_venv.ROOT, "tests", "fixtures", "metrics", "numpy_sums.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, len(cases), "cases")


if __name__ == "__main__":
    main()
