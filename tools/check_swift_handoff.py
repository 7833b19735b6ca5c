#!/usr/bin/env python3
"""`mmloop sft --engine swift` for real: ms-swift 4 from PyPI trains the tiny Qwen2-VL fixture on
the CPU from a project's committed version, mmloop follows its logging.jsonl and records the run,
and the adapter ms-swift writes (its `all-linear` look-ahead regex in target_modules included)
answers through `mmloop infer --adapters`.

    cargo build -p mmloop
    python3 tools/check_swift_handoff.py [--mmloop target/debug/mmloop]

Makes (once) a venv with ms-swift 4.6.0, qwen_vl_utils and torchvision (about 6 GB with torch) at
$MMLOOP_SWIFT_VENV (default /var/tmp/mmloop-venv-swift). Not part of CI: the venv is large; the
integration is tested in CI with a stand-in `swift` (crates/mmloop-cli/tests/sft.rs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vlm" / "qwen2_vl"
PACKAGES = ["ms-swift==4.6.0", "qwen_vl_utils", "torchvision"]


def venv() -> Path:
    v = Path(os.environ.get("MMLOOP_SWIFT_VENV", "/var/tmp/mmloop-venv-swift"))
    if not (v / "bin" / "swift").is_file():
        subprocess.check_call([sys.executable, "-m", "venv", str(v)])
        subprocess.check_call([str(v / "bin" / "pip"), "install", "-q", *PACKAGES])
    return v


def run(args: list[str], **kw) -> str:
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmloop", default=str(ROOT / "target" / "debug" / "mmloop"))
    a = ap.parse_args()
    v = venv()
    env = dict(os.environ, PATH=f"{v / 'bin'}:{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    versions = run([str(v / "bin" / "python"), "-c",
                    "import swift, torch, transformers, peft; print(swift.__version__, torch.__version__, transformers.__version__, peft.__version__)"])
    print("ms-swift, torch, transformers, peft:", versions.strip())
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        images = sorted((FIXTURE.parent / "images").glob("*.png"))
        qa = [("What colour is the chair?", "red"), ("Is it red?", "yes"), ("How many legs?", "four"),
              ("What material?", "wood")]
        with (d / "data.jsonl").open("w") as f:
            for i, (q, ans) in enumerate(qa):
                f.write(json.dumps({"id": f"q{i}", "images": [str(images[i % len(images)])],
                                    "messages": [{"role": "user", "content": "<image>" + q},
                                                 {"role": "assistant", "content": ans}]}) + "\n")
        p = str(d / "p")
        run([a.mmloop, "init", p])
        run([a.mmloop, "import", p, str(d / "data.jsonl")])
        run([a.mmloop, "commit", p, "-m", "answers"])
        out = d / "run"
        run([a.mmloop, "sft", p, "--engine", "swift", "--model", str(FIXTURE), "--model_type", "qwen2_vl",
             "--template", "qwen2_vl", "--max_steps", "2", "--save_steps", "2", "--logging_steps", "1",
             "--lora_rank", "4", "--lora_alpha", "8", "--gradient_accumulation_steps", "1",
             "--output_dir", str(out)], env=env)
        runs = json.loads(run([a.mmloop, "runs", p, "--kind", "train", "--json"]))
        r = runs[0]
        assert r["status"] == "done", r
        assert r["config"]["engine"] == "swift", r
        assert r["summary"]["global_step"] == 2 and len(r["summary"]["losses"]) == 2, r["summary"]
        ckpt = Path(r["summary"]["last_model_checkpoint"])
        cfg = json.loads((ckpt / "adapter_config.json").read_text())
        print("ms-swift's target_modules:", cfg["target_modules"])
        run([a.mmloop, "infer", "--model", str(FIXTURE), "--adapters", str(ckpt), "--images", str(images[0]),
             "--prompt", "What colour is the chair?", "--max_new_tokens", "3", "-o", str(d / "answers.jsonl")])
        print(f"recorded run {r['id']}: losses {r['summary']['losses']}, checkpoint {ckpt.name}; "
              "the adapter answers through mmloop infer --adapters")
        print("all checks passed")


if __name__ == "__main__":
    main()
