#!/usr/bin/env python3
"""transformers references for two engine-imposed variants of the tiny VLM fixtures.

mmloop's embedded backend runs on mistral.rs 0.8.1, which differs from transformers in two
places no caller can change (see crates/mmloop-engine/src/embedded/). For each, this script
records what transformers does under the same condition, from the committed checkpoints
(weights untouched), with the cases and recording of tools/make_vlm_fixtures.py (greedy,
float32, PIL image processor):

* ``idefics3/reference_no_tiling.json``: Idefics3 / SmolVLM with ``do_image_splitting: false``.
  mistral.rs panics on an image cut into tiles (its per-image encoder cache indexes tiles
  with one hash per image), so mmloop turns tiling off.
* ``qwen2_5_vl/reference_decode_offset.json``: Qwen2.5-VL with every decode-step M-RoPE
  position one higher than transformers'. mistral.rs 0.8.1's ``get_rope_index`` takes one
  past the last prompt position as the maximum, so its ``mrope_position_deltas`` are one too
  high; prefill positions are right. Matching this reference exactly shows that offset is
  the whole difference.

    python3 tools/make_vlm_variant_references.py      # re-executes inside tools/.venv-vlm
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import make_vlm_fixtures as fx


def write(family: str, file: str, res: dict, note: str, extra: dict) -> None:
    import torch
    import transformers

    src = fx.OUT / family
    ref = json.loads((src / "reference.json").read_text())
    out = {k: v for k, v in ref.items() if k not in ("cases", "quality")}
    out["generator"] = "tools/make_vlm_variant_references.py"
    out["reference"] = f"{ref['reference']}, {note}"
    out["versions"]["torch"] = torch.__version__
    out["versions"]["transformers"] = transformers.__version__
    out.update(extra)
    out["quality"] = res["quality"]
    out["cases"] = res["cases"]
    fx.write_json(src / file, out)
    print("wrote", src / file, res["quality"], flush=True)


def no_tiling(images: list[Path]) -> None:
    src = fx.OUT / "idefics3"
    seed = json.loads((src / "reference.json").read_text())["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "idefics3"
        shutil.copytree(src, d)
        pre = json.loads((d / "preprocessor_config.json").read_text())
        pre["do_image_splitting"] = False
        fx.write_json(d / "preprocessor_config.json", pre)
        res = fx.run_cases("idefics3", d, images, seed)
    write("idefics3", "reference_no_tiling.json", res, "do_image_splitting=False",
          {"preprocessor_override": {"do_image_splitting": False}})


def decode_offset(images: list[Path]) -> None:
    import transformers

    cls = transformers.Qwen2_5_VLForConditionalGeneration
    orig = cls.prepare_inputs_for_generation

    @functools.wraps(orig)
    def shifted(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        pid = out.get("position_ids")
        cache = out.get("past_key_values") if out.get("past_key_values") is not None else out.get("cache")
        if pid is not None and cache is not None and cache.get_seq_length() > 0:
            pid = pid.clone()
            pid[-3:] += 1  # the three M-RoPE rows (temporal, height, width); not the text row
            out["position_ids"] = pid
        return out

    cls.prepare_inputs_for_generation = shifted
    try:
        src = fx.OUT / "qwen2_5_vl"
        seed = json.loads((src / "reference.json").read_text())["seed"]
        res = fx.run_cases("qwen2_5_vl", src, images, seed)
    finally:
        cls.prepare_inputs_for_generation = orig
    write("qwen2_5_vl", "reference_decode_offset.json", res,
          "decode-step M-RoPE positions +1 (as mistral.rs 0.8.1 computes them)",
          {"decode_position_offset": 1})


def main() -> None:
    fx.ensure_venv()
    import torch

    torch.set_num_threads(2)
    images = sorted((fx.OUT / "images").glob("img*.png"))
    no_tiling(images)
    decode_offset(images)


if __name__ == "__main__":
    main()
