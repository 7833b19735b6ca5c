#!/usr/bin/env python3
"""Runs /work/shared/bench/transformers_vlm.py (the transformers anchor) on its first N
images: the anchor always generates the same 8 JPEGs and, for SmolVLM, times all of them.

    tools/.venv-vlm/bin/python tools/bench/anchor_subset.py ANCHOR smolvlm|qwen N CONFIGS IMGDIR OUT
"""
import importlib.util
import sys

path, which, n, configs, imgdir, out = sys.argv[1:7]
spec = importlib.util.spec_from_file_location("anchor", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
make = mod.make_images
mod.make_images = lambda d, *a, **k: make(d, *a, **k)[: int(n)]
sys.argv = [path, which, "--configs", configs, "--reps", "1", "--imgdir", imgdir, "--out", out, "--qwen-images", n]
mod.main()
