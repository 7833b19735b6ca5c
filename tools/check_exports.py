#!/usr/bin/env python3
"""Prove that `mmloop export` files load with the consumers' own loaders.

Usage: python3 tools/check_exports.py [--mmloop BIN] [--keep DIR] [--only NAME,...]

The binary is --mmloop, else $MMLOOP_BIN, else ${CARGO_TARGET_DIR:-target}/debug/mmloop.
Exit status 0 when every check passes, 1 when one fails (each failure names the file, the row
and the field), 2 when the setup itself fails. The last line is `N passed, N failed`.

What it does
------------
1. In a temporary folder: `mmloop init P --example` (12 pictures, 36 VQA questions, 12
   captions), then `mmloop import` of a small ms-swift JSONL written here with one two-turn
   conversation with a system prompt (on a 40x30 picture) and one item with two pictures
   (24x16 and 16x24), then `mmloop split` and `mmloop commit`: 51 items, 50 conversations.
2. `mmloop export --json` to swift (.jsonl), sharegpt (.json and .jsonl), llava (.json),
   parquet and parquet --embed-images, and llava once more without --json (its stderr is kept).
   The expected content of every export is computed here from the source files (texts, image
   paths, and image sizes read from the PNG headers), not from mmloop: every export must hold
   the 50 conversations (row formats) or the 51 items (Parquet, and the `records` that
   `export --json` reports, which counts items). The counts the llava notes must give are
   computed from the source too: 1 conversation with several images (pair-1), 1 with a system
   prompt (chat-1).
3. The loaders run in a venv, tools/.venv-exports ($MMLOOP_EXPORTS_VENV moves it), created on
   first use with the exact PINS below and recreated when they change: this script re-executes
   itself there with `--run-check NAME`, as tools/metrics_reference/_venv.py does. Two small
   OVERLAYS (pip --target folders put first on PYTHONPATH) swap in the datasets stack
   LLaMA-Factory declares (datasets<=4.0.0; ms-swift 4.6.0 needs datasets>=4.0,<4.8.5 and the
   `Json` feature that 4.0.0 lacks) and the newest datasets, sharing the venv's pyarrow, pandas,
   numpy and pillow. Every package comes from PyPI. The consumers' training stacks (torch,
   transformers, peft, modelscope) are not installed: reading data does not need them, and
   torch's PyPI wheel with its CUDA libraries is gigabytes. So ms-swift, LLaMA-Factory and
   LLaVA are installed with `--no-deps`, and only their data-loading code is executed, from the
   installed files, bodies unchanged; the few names it imports from the training stack are
   supplied as listed below.

The checks, and what each proves
---------------------------------
export-notes (mmloop's own reports; no consumer code)
    The `notes` array of `mmloop export --json`. llava must report exactly two notes, one naming
    the rows with several images and one the system prompts it left out (LLaVA JSON has no
    place for them), each starting with its count, and the counts must be those of the source
    (1 and 1); without --json the same notes must come as `warning: NOTE` lines on stderr, and
    the file written must be byte-identical. swift, sharegpt (both), parquet and parquet
    --embed-images must report no notes (no `notes`, or an empty list).

parquet (real upstream: Hugging Face `datasets` 4.8.4, 4.0.0 and 5.2.0, all of it)
    `datasets.load_dataset("parquet", data_files=F, split="train")` on the plain and the
    --embed-images file, under ms-swift's newest allowed datasets (the venv), LLaMA-Factory's
    (overlay llamafactory) and the newest (overlay datasets-5). Proves: the `huggingface` schema
    metadata gives `images` the feature `List(Image())`; every image decodes to a PIL image of
    the source's size; one row per item with id, task, question, answer, split, context and
    turn as imported; plain files store the absolute path and no bytes, embedded files store
    the file's exact bytes.

swift, swift-sharegpt (real upstream: ms-swift 4.6.0 swift/dataset/preprocessor/core.py whole,
    and DatasetLoader.__init__ / _load_dataset_path from swift/dataset/loader.py)
    What `swift sft --dataset F.jsonl` does to a local file: `datasets.load_dataset("json")`,
    AutoPreprocessor -> MessagesPreprocessor (strict=True, so a bad row raises instead of being
    dropped), ms-swift's own row checks (_check_messages, _cast_mm_data), remove_useless_columns.
    Proves: all 50 rows survive with the standard `messages` (system/user/assistant, contents
    equal to the source) and `images` ([{bytes: None, path}], paths that exist and decode to
    the right size); the <image> tags in the user turns equal the number of images.
    Also run on the ShareGPT export (ms-swift reads `conversations` of from/value and `system`).
    Supplied, not ms-swift's: swift.utils.get_logger -> logging.getLogger; modelscope's
    get_cache_dir -> a temporary folder (it names the map cache); ms-swift's own
    history_to_messages, normalize_openai_tool_calls, MaxLengthError, sample_dataset,
    safe_ddp_context, is_dist, is_master, TOOL_KEYS and remove_arrow_padding are loaded from
    their installed files (torch.distributed, which safe_ddp_context asks, is answered "not
    initialized", as in any single-process run).

sharegpt-json, sharegpt-jsonl (real upstream: LLaMA-Factory 0.9.5
    data/parser.py get_dataset_list + DatasetAttr, data/converter.py whole (align_dataset,
    SharegptDatasetConverter), _load_single_dataset from data/loader.py, hparams/data_args.py
    DataArguments, extras/logging.py, extras/constants.py)
    A dataset_info.json entry as LLaMA-Factory's data/README documents for a multimodal
    ShareGPT dataset: {"file_name", "formatting": "sharegpt", "columns": {"messages":
    "conversations", "images": "images", "system": "system"}}, loaded and converted as
    `llamafactory-cli train` does. Proves: no row is "abnormal" (the converter empties those),
    _prompt/_response/_system equal the source, _images resolve to existing files of the right
    size, and the <image> placeholders match the image count (mm_plugin.py's own
    _validate_messages, loaded from the installed file, is called on each row).
    Supplied, not LLaMA-Factory's: extras/constants.py imports six file-name constants from
    peft and transformers (the adapter/weights file names; unused by data loading): they are
    given with the values those packages define; extras/misc.py (imports torch) is replaced by
    its own is_env_enabled/use_modelscope/use_openmind, loaded from the installed file;
    ModelArguments and Seq2SeqTrainingArguments (torch) are replaced by the four attributes
    _load_single_dataset reads (cache_dir, hf_hub_token, local_process_index,
    dataloader_num_workers).

llava (real upstream for single-image rows: haotian-liu/LLaVA 1.2.2.post1 as published on PyPI
    as `llava-torch` (the PyPI name `llava` is an empty 0.0.1.dev0 placeholder);
    llava/train/train.py LazySupervisedDataset (__init__, __len__, lengths, modality_lengths,
    __getitem__), preprocess_multimodal, preprocess, preprocess_v1; llava/mm_utils.py
    tokenizer_image_token; llava/conversation.py and llava/constants.py whole. Multi-image
    rows: checked against the LLaVA-NeXT / OneVision layout, not run through any LLaVA code.)
    mmloop's llava export writes a one-image item as `"image": "PATH"` (LLaVA-1.5's layout) and
    an item with several images as `"image": [PATH, ...]` with one <image> tag per image in the
    first human turn (the layout LLaVA-NeXT / OneVision's loader reads), and drops system
    prompts; it says so in its notes (see export-notes). So the rows of llava.json are checked
    in two groups, and together they must be all 50:
    - `image` a string, or no `image` (49 rows here; the example project has no image-less item,
      so that branch is written but not exercised by this project): what LLaVA-1.5's
      scripts/v1_5/finetune.sh (--version v1 --image_folder D --lazy_preprocess True
      --image_aspect_ratio pad --mm_use_im_start_end False --group_by_modality_length True)
      does with each row: json.load of the list, Image.open of
      os.path.join(image_folder, row["image"]).convert("RGB") padded to a square, the <image>
      tag moved to the front of the first human turn, the vicuna_v1 template with its human/gpt
      alternation assert, and tokenizer_image_token. Proves: every row opens its one image (at
      the right size after expand2square), the roles alternate from human, exactly one image
      token reaches the token ids (none, and the 3x336x336 zero placeholder, for an image-less
      row), and every question and answer reaches the prompt word for word.
      LazySupervisedDataset.__init__, lengths and modality_lengths do run on the whole file,
      multi-image rows included (they only read the conversation texts and whether `image` is
      there).
    - `image` a list (exactly as many rows as the source has items with several images: 1,
      pair-1): not given to LLaVA-1.5's __getitem__, which takes one image per row and raises
      TypeError on a list (os.path.join(image_folder, [...])): a LLaVA-1.5 run on this file
      fails at that row, which is why mmloop's note tells users to export such items with
      --format swift or sharegpt. Its consumer, LLaVA-NeXT / OneVision (LLaVA-VL/LLaVA-NeXT
      llava/train/train.py, LazySupervisedDataset._get_item: `if type(image_file) is list:`
      process_image(f, "pad") for each path, each opened as
      os.path.join(image_folder, f).convert("RGB")), is not published on PyPI (it installs from
      its git repository, and its train.py imports torch, transformers and its model code at
      module level), so its code is not run here; the row is checked against that layout instead:
      `image` is a list of at least 2, in the source's order, of paths that exist (joined to the
      image folder, as its loader does) and decode to the source's sizes; `conversations`
      alternates human/gpt from human and ends with gpt; the first human turn holds exactly as
      many <image> tags as there are images and later turns none; the turns' texts, <image>
      tags left out, equal the source's. A one-image row written as a list fails (LLaVA-1.5
      could not read it).
    Replicated, not LLaVA's: torch (a small numpy stand-in for tensor/stack/clone/ne/zeros),
    the tokenizer (a reversible whitespace tokenizer that pads to the longest for
    return_tensors="pt": the real one is a model download; the "tokenization mismatch" masking
    that depends on it is not checked) and the CLIP image processor (returns the PIL image
    unchanged, so its size can be checked).

Pinned versions: see PINS and OVERLAYS (ms-swift 4.6.0, llamafactory 0.9.5, llava-torch
1.2.2.post1, datasets 4.8.4 / 4.0.0 / 5.2.0, pyarrow 26.0.1, pillow 13.0.0, ...). ms-swift,
llamafactory and llava-torch declare torch, transformers, peft etc. as dependencies; they are
installed without them, as explained above.
"""

import argparse
import ast
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_ROOT = os.environ.get("MMLOOP_EXPORTS_VENV") or os.path.join(ROOT, "tools", ".venv-exports")

# One venv: the whole dependency closure of datasets 4.8.4 + pillow as pip resolved it, exact
# versions, installed with --no-deps so every run gets the same set; then the consumers, without
# their dependencies (see the docstring).
PINS = [
    "aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0", "anyio==4.16.0", "attrs==26.1.0",
    "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "click==8.5.1", "datasets==4.8.4", "dill==0.4.1",
    "filelock==4.3.2", "frozenlist==1.8.0", "fsspec==2026.2.0", "h11==0.16.0", "hf-xet==1.8.0",
    "httpcore==1.0.9", "httpx==0.29.0", "huggingface_hub==1.33.0", "idna==3.20", "multidict==7.2.1",
    "multiprocess==0.70.19", "numpy==2.4.6", "packaging==26.4", "pandas==3.1.1", "pillow==13.0.0",
    "propcache==0.5.4", "pyarrow==26.0.1", "python-dateutil==4.0.0", "PyYAML==6.0.4", "requests==2.34.2",
    "tqdm==4.70.1", "typing_extensions==4.16.0", "tzdata==2026.6", "urllib3==2.8.0", "xxhash==4.1.0",
    "yarl==1.25.1",
    "ms-swift==4.6.0", "llava-torch==1.2.2.post1",
]
# Overlays: folders installed with `pip install --no-deps --target`, put first on PYTHONPATH for
# their checks, so that they shadow the venv's datasets stack (what pip resolves for that
# datasets version and differs from the venv's) and share its pyarrow, pandas, numpy, pillow.
OVERLAYS = {
    # LLaMA-Factory 0.9.5 declares datasets<=4.0.0.
    "llamafactory": ["datasets==4.0.0", "dill==0.3.8", "multiprocess==0.70.16", "fsspec==2025.3.0",
                     "huggingface_hub==2.4.0", "httpcore2==2.16.2", "httpx2==2.16.2", "truststore==0.10.5",
                     "llamafactory==0.9.5"],
    # The newest datasets, for the Parquet check.
    "datasets-5": ["datasets==5.2.0", "fsspec==2026.9.0", "huggingface_hub==2.4.0", "httpcore2==2.16.2",
                   "httpx2==2.16.2", "truststore==0.10.5"],
}
# Which checks run where: None is the venv itself.
CHECKS = [
    (None, ["export-notes", "parquet", "swift", "swift-sharegpt", "llava"]),
    ("llamafactory", ["parquet", "sharegpt-json", "sharegpt-jsonl"]),
    ("datasets-5", ["parquet"]),
]

PNG_SIG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- host side (stdlib only)


def die(msg, code=2):
    print(f"check_exports: {msg}", file=sys.stderr)
    sys.exit(code)


def write_png(path, w, h, rgb):
    import zlib

    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(PNG_SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != PNG_SIG or head[12:16] != b"IHDR":
        die(f"{path}: not a PNG; this script reads expected sizes from PNG headers only")
    return list(struct.unpack(">II", head[16:24]))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


EXTRA_ROWS = [
    {"id": "chat-1", "images": ["chat.png"], "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "<image>What color is this picture?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "Is it wider than it is tall?"},
        {"role": "assistant", "content": "yes"}]},
    {"id": "pair-1", "images": ["left.png", "right.png"], "messages": [
        {"role": "user", "content": "<image><image>Which picture is green?"},
        {"role": "assistant", "content": "the first one"}]},
]


def find_mmloop(arg):
    cands = [arg] if arg else []
    if os.environ.get("MMLOOP_BIN"):
        cands.append(os.environ["MMLOOP_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    cands.append(os.path.join(target, "debug", "mmloop"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    die(f"no mmloop binary (tried {', '.join(cands)}); build it with `cargo build` or pass --mmloop")


def mm(binary, *args, want_json=False):
    cmd = [binary, *args] + (["--json"] if want_json else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MMLOOP_ACTOR": "check_exports"})
    if p.returncode != 0:
        die(f"`{' '.join(cmd)}` failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return json.loads(p.stdout) if want_json else p.stdout


def read_source(path, images_dirs):
    """ms-swift rows of a source file -> expected conversations."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            msgs = row["messages"]
            system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
            body = msgs[1:] if system is not None else msgs
            turns = [[body[i]["content"], body[i + 1]["content"]] for i in range(0, len(body), 2)]
            images = []
            for rel in row["images"]:
                found = [os.path.join(d, rel) for d in images_dirs if os.path.isfile(os.path.join(d, rel))]
                if not found:
                    die(f"{path}: image {rel} not found under {images_dirs}")
                images.append(os.path.abspath(found[0]))
            out.append({"id": row["id"], "system": system, "turns": turns, "images": images,
                        "sizes": [png_size(p) for p in images], "sha256": [sha256(p) for p in images],
                        "task": "caption" if "captions" in os.path.basename(path) else "vqa"})
    return out


def build(binary, work):
    proj = os.path.join(work, "proj")
    mm(binary, "init", proj, "--example")
    extra = os.path.join(work, "extra")
    os.makedirs(extra)
    write_png(os.path.join(extra, "chat.png"), 40, 30, (200, 10, 10))
    write_png(os.path.join(extra, "left.png"), 24, 16, (10, 200, 10))
    write_png(os.path.join(extra, "right.png"), 16, 24, (10, 10, 200))
    with open(os.path.join(extra, "extra.jsonl"), "w", encoding="utf-8") as f:
        for r in EXTRA_ROWS:
            f.write(json.dumps(r) + "\n")
    mm(binary, "import", proj, os.path.join(extra, "extra.jsonl"))
    mm(binary, "split", proj, "--seed", "42")
    mm(binary, "commit", proj, "-m", "check_exports")
    stats = mm(binary, "stats", proj, want_json=True)

    convs = []
    for name in ("vqa.jsonl", "captions.jsonl"):
        convs += read_source(os.path.join(proj, "data", name), [os.path.join(proj, "data"), proj])
    convs += read_source(os.path.join(extra, "extra.jsonl"), [extra])
    items = sum(len(c["turns"]) for c in convs)
    if stats["items"] != items:
        die(f"the project has {stats['items']} items, the source files {items} answered turns")

    multi_image = sum(1 for c in convs if len(c["images"]) > 1)
    with_system = sum(1 for c in convs if c["system"] is not None)
    if multi_image < 1 or with_system < 1:
        die(f"the test project has {multi_image} multi-image conversations and {with_system} with a system "
            "prompt; the llava checks need at least one of each")

    out = os.path.join(work, "out")
    os.makedirs(out)
    files, notes = {}, {}
    for key, fmt, name, extra_args in [
        ("swift", "swift", "train.jsonl", []),
        ("sharegpt-json", "sharegpt", "sharegpt.json", []),
        ("sharegpt-jsonl", "sharegpt", "sharegpt.jsonl", []),
        ("llava", "llava", "llava.json", []),
        ("parquet", "parquet", "data.parquet", []),
        ("parquet-embedded", "parquet", "embedded.parquet", ["--embed-images"]),
    ]:
        path = os.path.join(out, name)
        rep = mm(binary, "export", proj, "--format", fmt, "-o", path, *extra_args, want_json=True)
        if rep.get("records") != items:
            die(f"`export --format {fmt} {' '.join(extra_args)}` reports records={rep.get('records')}, "
                f"the project has {items} items")
        if not os.path.isfile(path):
            die(f"`export --format {fmt}` wrote no {path}")
        files[key] = path
        notes[key] = rep["notes"] if "notes" in rep else None  # None: the report has no `notes`
    # The same llava export without --json: the notes must come as warnings on stderr.
    plain = os.path.join(out, "llava-plain.json")
    cmd = [binary, "export", proj, "--format", "llava", "-o", plain]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MMLOOP_ACTOR": "check_exports"})
    if p.returncode != 0:
        die(f"`{' '.join(cmd)}` failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    files["llava-plain"] = plain
    return {"work": work, "out": out, "files": files, "items": items, "conversations": convs, "notes": notes,
            "llava_plain_stderr": p.stderr, "multi_image": multi_image, "with_system": with_system}


def ensure_venv():
    """The venv's python, created (or recreated, when the pins changed) with PINS and OVERLAYS."""
    py = os.path.join(VENV_ROOT, "bin", "python")
    stamp = os.path.join(VENV_ROOT, "pins.json")
    want = json.dumps({"venv": PINS, "overlays": OVERLAYS, "python": sys.version}, indent=1)
    if os.path.exists(py) and os.path.exists(stamp) and open(stamp).read() == want:
        return py
    t = time.time()
    print(f"== creating {VENV_ROOT} ({len(PINS)} packages, overlays {', '.join(OVERLAYS)})", flush=True)
    shutil.rmtree(VENV_ROOT, ignore_errors=True)
    subprocess.check_call([sys.executable, "-m", "venv", VENV_ROOT])
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [py, "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.check_call(pip + PINS, env=env)
    for name, pins in OVERLAYS.items():
        subprocess.check_call(pip + ["--target", os.path.join(VENV_ROOT, "overlays", name)] + pins, env=env)
    with open(stamp, "w") as f:
        f.write(want)
    print(f"   ({time.time() - t:.1f}s)", flush=True)
    return py


def host_main(args):
    binary = find_mmloop(args.mmloop)
    only = set(args.only.split(",")) if args.only else None
    work = args.keep or tempfile.mkdtemp(prefix="mmloop-check-exports-")
    os.makedirs(work, exist_ok=True)
    if os.listdir(work):
        die(f"--keep {work}: the folder is not empty")
    t0 = time.time()
    manifest = build(binary, work)
    man_path = os.path.join(work, "manifest.json")
    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"== project and exports in {work} ({manifest['items']} items, "
          f"{len(manifest['conversations'])} conversations, {time.time() - t0:.1f}s)", flush=True)

    env = {**os.environ, "HF_HOME": os.path.join(work, "hf"), "HF_DATASETS_CACHE": os.path.join(work, "hf", "ds"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MODELSCOPE_CACHE": os.path.join(work, "ms"),
           "PYTHONNOUSERSITE": "1", "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    passed, failed = [], []
    py = ensure_venv()
    t1 = time.time()
    for overlay, checks in CHECKS:
        run_env = dict(env)
        if overlay:
            run_env["PYTHONPATH"] = os.path.join(VENV_ROOT, "overlays", overlay)
        for check in checks:
            if only is not None and check not in only:
                continue
            label = f"{check}@{overlay or 'venv'}"
            print(f"== {label}", flush=True)
            p = subprocess.run([py, os.path.abspath(__file__), "--run-check", check, "--manifest", man_path],
                               env=run_env, cwd=work)
            (passed if p.returncode == 0 else failed).append(label)
    print(f"== checks: {time.time() - t1:.1f}s", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"== {time.time() - t0:.1f}s in all")
    if failed:
        print("FAILED: " + ", ".join(failed))
    print(f"{len(passed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------- venv side


class Failures(Exception):
    pass


class Check:
    def __init__(self, name):
        self.name = name
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)

    def eq(self, where, got, want):
        if got != want:
            self.fail(f"{where}: got {got!r}, expected {want!r}")
            return False
        return True

    def done(self, summary):
        if self.errors:
            shown = self.errors[:25]
            more = len(self.errors) - len(shown)
            raise Failures("\n".join(f"  FAIL {e}" for e in shown) + (f"\n  ... and {more} more" if more else ""))
        print(f"  ok: {summary}")


def pkg_file(dist, rel):
    import importlib.metadata as md

    path = str(md.distribution(dist).locate_file(rel))
    if not os.path.exists(path):
        raise SystemExit(f"{dist}: {rel} not found in the venv; delete {VENV_ROOT} and rerun")
    return path


def load_defs(path, names, namespace, cls=None):
    """Executes only the named top-level defs (or, with cls, the named methods of that class,
    as plain functions) of a file in `namespace`, bodies and decorators unchanged."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    body = tree.body
    if cls:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    nodes = []
    for n in body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names:
            nodes.append(n)
        elif isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id in names for t in n.targets):
            nodes.append(n)
    got = {n.name if not isinstance(n, ast.Assign) else n.targets[0].id for n in nodes}
    missing = set(names) - got
    if missing:
        raise SystemExit(f"{path}: missing {sorted(missing)}")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)
    return namespace


def module(name, path=None, **attrs):
    """A module object in sys.modules: a package shell (path: its real folder, so submodules
    import from the installed files without running the package's __init__) or a namespace."""
    import types

    m = types.ModuleType(name)
    if path is not None:
        m.__path__ = [path]
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def exec_module_without(name, path, drop_from, provided):
    """Imports a real file as module `name`, leaving out its `from X import ...` statements for
    X in drop_from and giving those names from `provided` instead."""
    import types

    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    keep = []
    for n in tree.body:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in drop_from:
            for a in n.names:
                if (a.asname or a.name) not in provided:
                    raise SystemExit(f"{path}: imports {a.name} from {n.module}, which is not provided")
            continue
        keep.append(n)
    m = types.ModuleType(name)
    m.__file__ = path
    m.__package__ = name.rpartition(".")[0]
    m.__dict__.update(provided)
    sys.modules[name] = m
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), m.__dict__)
    return m


def image_size(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return list(im.size)


def conv_by_id(man):
    return {c["id"]: c for c in man["conversations"]}


def count_image_tags(texts):
    return sum(t.count("<image>") for t in texts)


# ---- `export --json` notes


def check_notes(man):
    """The notes `mmloop export --json` reports: llava names its multi-image rows and the system
    prompts it left out, with their counts; every other format reports none."""
    import re

    ck = Check("export-notes")
    want = {"several images": man["multi_image"], "system prompt": man["with_system"]}
    for key, notes in sorted(man["notes"].items()):
        where = f"`export --format {key.split('-')[0]}` ({os.path.basename(man['files'][key])}) --json: notes"
        if notes is not None and (not isinstance(notes, list) or not all(isinstance(n, str) for n in notes)):
            ck.fail(f"{where}: {notes!r} is not a list of strings")
            continue
        if key != "llava":
            ck.eq(where, notes or [], [])
            continue
        if notes is None:
            ck.fail(f"{where}: the report has no `notes`")
            continue
        for topic, count in want.items():
            hits = [n for n in notes if topic in n]
            if len(hits) != 1:
                ck.fail(f"{where}: {len(hits)} notes mention {topic!r}, expected 1: {notes!r}")
                continue
            m = re.match(r"(\d+) rows? ", hits[0])
            ck.eq(f"{where}: the count in {hits[0]!r}", int(m.group(1)) if m else None, count)
        ck.eq(f"{where}: number of notes", len(notes), len(want))
        # Without --json the same notes are warnings on stderr, and the file is the same.
        lines = man["llava_plain_stderr"].splitlines()
        for n in notes:
            if f"warning: {n}" not in lines:
                ck.fail(f"`export --format llava` without --json: no `warning: {n}` line on stderr: {lines!r}")
        with open(man["files"]["llava"], "rb") as a, open(man["files"]["llava-plain"], "rb") as b:
            if a.read() != b.read():
                ck.fail("`export --format llava` wrote a different file with --json and without")
    ck.done(f"llava reports {man['multi_image']} multi-image row(s) and {man['with_system']} dropped system "
            f"prompt(s) (--json notes and stderr warnings); {len(man['notes']) - 1} other exports report no notes")


# ---- Parquet / HF datasets


def check_parquet(man):
    import datasets
    from datasets import Image, load_dataset

    ck = Check("parquet")
    expected = {}
    for c in man["conversations"]:
        multi = len(c["turns"]) > 1
        history = [{"role": "system", "content": c["system"]}] if c["system"] is not None else []
        for t, (q, a) in enumerate(c["turns"]):
            iid = f"{c['id']}#{t}" if multi else c["id"]
            expected[iid] = {"conv": c, "turn": t, "question": q, "answer": a,
                             "context": history[:] if history else None}
            history += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    for key, embedded in (("parquet", False), ("parquet-embedded", True)):
        path = man["files"][key]
        where0 = f"{os.path.basename(path)} (datasets {datasets.__version__})"
        ds = load_dataset("parquet", data_files=path, split="train")
        feat = ds.features.get("images")
        inner = getattr(feat, "feature", None)
        if not isinstance(inner, Image):
            ck.fail(f"{where0}: feature `images` is {feat!r}, expected a list of Image()")
            continue
        ck.eq(f"{where0}: rows", len(ds), man["items"])
        seen = set()
        for i, row in enumerate(ds):
            where = f"{where0} row {i} id={row.get('id')!r}"
            exp = expected.get(row.get("id"))
            if exp is None:
                ck.fail(f"{where}: unexpected id")
                continue
            seen.add(row["id"])
            c = exp["conv"]
            ck.eq(f"{where}: question", row.get("question"), exp["question"])
            ck.eq(f"{where}: answer", row.get("answer"), exp["answer"])
            ck.eq(f"{where}: task", row.get("task"), c["task"])
            ck.eq(f"{where}: turn", row.get("turn"), exp["turn"])
            if row.get("split") not in ("train", "val", "test"):
                ck.fail(f"{where}: split {row.get('split')!r}")
            ctx = row.get("context")
            ck.eq(f"{where}: context", json.loads(ctx) if ctx else None, exp["context"])
            if len(c["turns"]) > 1:
                ck.eq(f"{where}: conversation", row.get("conversation"), c["id"])
            imgs = row["images"]
            if not ck.eq(f"{where}: number of images", len(imgs), len(c["images"])):
                continue
            for k, im in enumerate(imgs):
                ck.eq(f"{where}: images[{k}] size", list(im.size), c["sizes"][k])
            ck.eq(f"{where}: <image> tags in question+context vs images",
                  count_image_tags([exp["question"]] + [m["content"] for m in exp["context"] or []]), len(imgs))
        ck.eq(f"{where0}: ids", sorted(seen), sorted(expected))
        # The stored struct, undecoded: embedded files carry the bytes, plain ones the path.
        raw = ds.cast_column("images", (getattr(datasets, "List", None) or datasets.Sequence)(Image(decode=False)))
        for i, row in enumerate(raw):
            exp = expected.get(row["id"])
            if exp is None:
                continue
            for k, st in enumerate(row["images"]):
                where = f"{where0} row {i} id={row['id']!r} images[{k}]"
                if embedded:
                    if not st.get("bytes"):
                        ck.fail(f"{where}: no bytes in an --embed-images file")
                    else:
                        ck.eq(f"{where}: sha256 of the bytes", hashlib.sha256(st["bytes"]).hexdigest(),
                              exp["conv"]["sha256"][k])
                else:
                    ck.eq(f"{where}: bytes", st.get("bytes"), None)
                    ck.eq(f"{where}: path", st.get("path"), exp["conv"]["images"][k])
    ck.done(f"datasets {datasets.__version__}: {man['items']} items, plain and embedded, images decode")


# ---- ms-swift


def swift_namespace():
    """ms-swift 4.6.0's data-loading modules from the installed wheel (see the docstring)."""
    import contextlib
    import logging
    import types

    import datasets
    import numpy as np
    from filelock import FileLock

    base = os.path.dirname(pkg_file("ms-swift", "swift/__init__.py"))
    scratch = os.path.join(os.environ.get("MODELSCOPE_CACHE") or tempfile.mkdtemp(), "hub")

    def get_cache_dir():  # modelscope.hub.utils.utils.get_cache_dir; only names the map cache
        return scratch

    def get_logger():
        return logging.getLogger("swift")

    env_ns = load_defs(os.path.join(base, "utils/env.py"), ["get_dist_setting", "is_master", "is_local_master",
                                                             "is_dist"], {"os": os, "Tuple": tuple})
    schema = {}
    exec(compile(open(os.path.join(base, "utils/schema_utils.py")).read(), "schema_utils.py", "exec"), schema)
    ddp = load_defs(os.path.join(base, "utils/torch_utils.py"), ["safe_ddp_context"], {
        "contextmanager": contextlib.contextmanager, "Optional": __import__("typing").Optional,
        "_DISABLE_USE_BARRIER": False, "dist": types.SimpleNamespace(is_initialized=lambda: False),
        "os": os, "hashlib": hashlib, "get_cache_dir": get_cache_dir, "FileLock": FileLock, **env_ns})
    import typing

    tns = {"Optional": typing.Optional, "List": typing.List, "Dict": typing.Dict, "Any": typing.Any,
           "History": typing.Any, "Messages": typing.Any, "Union": typing.Union, "Tuple": typing.Tuple}
    load_defs(os.path.join(base, "template/utils.py"), ["history_to_messages"], tns)
    load_defs(os.path.join(base, "template/base.py"), ["MaxLengthError"], tns)
    load_defs(os.path.join(base, "template/template_inputs.py"), ["normalize_openai_tool_calls"], tns)
    dutils = load_defs(os.path.join(base, "dataset/utils.py"), ["sample_dataset"], {
        "np": np, "HfDataset": datasets.Dataset, "Optional": typing.Optional, "logger": get_logger()})

    module("swift", base)
    module("swift.dataset", os.path.join(base, "dataset"))
    module("swift.dataset.preprocessor", os.path.join(base, "dataset/preprocessor"))
    module("swift.dataset.utils", sample_dataset=dutils["sample_dataset"])
    module("swift.template", history_to_messages=tns["history_to_messages"], MaxLengthError=tns["MaxLengthError"])
    module("swift.template.template_inputs", normalize_openai_tool_calls=tns["normalize_openai_tool_calls"])
    module("swift.utils", TOOL_KEYS=schema["TOOL_KEYS"], remove_arrow_padding=schema["remove_arrow_padding"],
           get_logger=get_logger, is_dist=env_ns["is_dist"], is_master=env_ns["is_master"],
           safe_ddp_context=ddp["safe_ddp_context"])
    module("modelscope")
    module("modelscope.hub")
    module("modelscope.hub.utils")
    module("modelscope.hub.utils.utils", get_cache_dir=get_cache_dir)
    import importlib

    core = importlib.import_module("swift.dataset.preprocessor.core")
    # DatasetLoader.__init__ and _load_dataset_path, as functions of a plain class.
    lns = {"os": os, "hf_load_dataset": datasets.load_dataset, "safe_ddp_context": ddp["safe_ddp_context"],
           "get_cache_dir": get_cache_dir, "RowPreprocessor": core.RowPreprocessor, "HfDataset": datasets.Dataset,
           **{k: getattr(typing, k) for k in ("Optional", "Dict", "Literal", "List", "Union")},
           "DatasetMeta": typing.Any}
    load_defs(os.path.join(base, "dataset/loader.py"), ["__init__", "_load_dataset_path"], lns, cls="DatasetLoader")
    return core, type("DatasetLoader", (), {k: lns[k] for k in ("__init__", "_load_dataset_path")})


def check_swift(man, key):
    import importlib.metadata as md
    import types

    core, DatasetLoader = swift_namespace()
    ck = Check("swift")
    path = man["files"][key]
    where0 = f"{os.path.basename(path)} (ms-swift {md.version('ms-swift')})"
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            ids = [json.loads(line).get("id") for line in f if line.strip()]
        else:
            ids = [r.get("id") for r in json.load(f)]
    # As `swift sft --dataset PATH --strict true`: DatasetMeta() for a path has AutoPreprocessor().
    loader = DatasetLoader(num_proc=1, strict=True)
    try:
        ds = loader._load_dataset_path(path, types.SimpleNamespace(preprocess_func=core.AutoPreprocessor()))
    except Exception as e:
        traceback.print_exc()
        ck.fail(f"{where0}: ms-swift's loader raised {type(e).__name__}: {e}")
        ck.done("")
    exp_by_id = conv_by_id(man)
    ck.eq(f"{where0}: rows after preprocessing", len(ds), len(man["conversations"]))
    ck.eq(f"{where0}: columns", sorted(ds.column_names), ["images", "messages"])
    ck.eq(f"{where0}: ids", sorted(map(str, ids)), sorted(exp_by_id))
    for i, (row, rid) in enumerate(zip(ds, ids)):
        where = f"{where0} row {i} id={rid!r}"
        c = exp_by_id.get(rid)
        if c is None:
            continue
        want = ([{"role": "system", "content": c["system"]}] if c["system"] is not None else []) + [
            {"role": r, "content": t} for q, a in c["turns"] for r, t in (("user", q), ("assistant", a))]
        got = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        ck.eq(f"{where}: messages", got, want)
        imgs = row["images"] or []
        if not ck.eq(f"{where}: number of images", len(imgs), len(c["images"])):
            continue
        for k, im in enumerate(imgs):
            if im.get("bytes") is not None:
                ck.fail(f"{where}: images[{k}] carries bytes; expected a path")
            p = im.get("path")
            if not p or not os.path.isfile(p):
                ck.fail(f"{where}: images[{k}] path {p!r} is not a file")
                continue
            ck.eq(f"{where}: images[{k}] path", os.path.realpath(p), os.path.realpath(c["images"][k]))
            ck.eq(f"{where}: images[{k}] size", image_size(p), c["sizes"][k])
        ck.eq(f"{where}: <image> tags vs images",
              count_image_tags([m["content"] for m in got if m["role"] == "user"]), len(imgs))
    ck.done(f"{where0}: {len(ds)} rows through AutoPreprocessor -> MessagesPreprocessor (strict)")


# ---- LLaMA-Factory


def llamafactory_namespace():
    import importlib

    base = os.path.dirname(pkg_file("llamafactory", "llamafactory/__init__.py"))
    module("llamafactory", base)
    module("llamafactory.data", os.path.join(base, "data"))
    module("llamafactory.extras", os.path.join(base, "extras"))
    module("llamafactory.hparams", os.path.join(base, "hparams"))
    # extras/constants.py: everything but its peft/transformers imports, whose values are these
    # (peft.utils.constants and transformers.utils as of peft 0.18 / transformers 4.5x-5.x).
    exec_module_without("llamafactory.extras.constants", os.path.join(base, "extras/constants.py"),
                        {"peft", "transformers"}, {
                            "SAFE_ADAPTER_WEIGHTS_NAME": "adapter_model.safetensors",
                            "ADAPTER_WEIGHTS_NAME": "adapter_model.bin",
                            "SAFE_WEIGHTS_INDEX_NAME": "model.safetensors.index.json",
                            "SAFE_WEIGHTS_NAME": "model.safetensors",
                            "WEIGHTS_INDEX_NAME": "pytorch_model.bin.index.json",
                            "WEIGHTS_NAME": "pytorch_model.bin"})
    misc = load_defs(os.path.join(base, "extras/misc.py"), ["is_env_enabled", "use_modelscope", "use_openmind"],
                     {"os": os})
    module("llamafactory.extras.misc", **{k: misc[k] for k in ("is_env_enabled", "use_modelscope", "use_openmind")})
    parser = importlib.import_module("llamafactory.data.parser")
    converter = importlib.import_module("llamafactory.data.converter")
    data_args = importlib.import_module("llamafactory.hparams.data_args")
    constants = sys.modules["llamafactory.extras.constants"]
    logging_mod = importlib.import_module("llamafactory.extras.logging")
    import numpy as np
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    lns = {"os": os, "np": np, "load_dataset": load_dataset, "Dataset": Dataset, "DatasetDict": DatasetDict,
           "load_from_disk": load_from_disk, "FILEEXT2TYPE": constants.FILEEXT2TYPE,
           "align_dataset": converter.align_dataset, "logger": logging_mod.get_logger("llamafactory.data.loader"),
           "Union": __import__("typing").Union}
    load_defs(os.path.join(base, "data/loader.py"), ["_load_single_dataset"], lns)
    mmp = {"IMAGE_PLACEHOLDER": constants.IMAGE_PLACEHOLDER, "VIDEO_PLACEHOLDER": constants.VIDEO_PLACEHOLDER,
           "AUDIO_PLACEHOLDER": constants.AUDIO_PLACEHOLDER}
    load_defs(os.path.join(base, "data/mm_plugin.py"), ["_validate_messages"], mmp, cls="MMPluginMixin")
    return parser, data_args, lns["_load_single_dataset"], mmp["_validate_messages"]


def check_sharegpt(man, key):
    import importlib.metadata as md
    import types

    parser, data_args_mod, load_single, validate_messages = llamafactory_namespace()
    ck = Check("sharegpt")
    path = man["files"][key]
    where0 = f"{os.path.basename(path)} (llamafactory {md.version('llamafactory')})"
    dataset_dir = os.path.dirname(path)
    info = {"mmloop": {"file_name": os.path.basename(path), "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "images": "images", "system": "system"}}}
    info_path = os.path.join(dataset_dir, "dataset_info.json")
    with open(info_path, "w") as f:
        json.dump(info, f)
    try:
        [attr] = parser.get_dataset_list(["mmloop"], dataset_dir)
        data_args = data_args_mod.DataArguments(dataset="mmloop", dataset_dir=dataset_dir)
        model_args = types.SimpleNamespace(cache_dir=None, hf_hub_token=None)
        training_args = types.SimpleNamespace(local_process_index=0, dataloader_num_workers=0)
        ds = load_single(attr, model_args, data_args, training_args)
    except Exception as e:
        traceback.print_exc()
        ck.fail(f"{where0}: LLaMA-Factory's loader raised {type(e).__name__}: {e}")
        ck.done("")
    finally:
        os.remove(info_path)
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            ids = [json.loads(line).get("id") for line in f if line.strip()]
        else:
            ids = [r.get("id") for r in json.load(f)]
    exp_by_id = conv_by_id(man)
    ck.eq(f"{where0}: rows", len(ds), len(man["conversations"]))
    ck.eq(f"{where0}: ids", sorted(map(str, ids)), sorted(exp_by_id))
    for i, (row, rid) in enumerate(zip(ds, ids)):
        where = f"{where0} row {i} id={rid!r}"
        c = exp_by_id.get(rid)
        if c is None:
            continue
        if not row["_prompt"] or not row["_response"]:
            ck.fail(f"{where}: SharegptDatasetConverter marked the row abnormal (empty _prompt/_response)")
            continue
        msgs = [{"role": r, "content": t} for q, a in c["turns"] for r, t in (("user", q), ("assistant", a))]
        ck.eq(f"{where}: _prompt", [dict(m) for m in row["_prompt"]], msgs[:-1])
        ck.eq(f"{where}: _response", [dict(m) for m in row["_response"]], msgs[-1:])
        ck.eq(f"{where}: _system", row["_system"] or None, c["system"])
        imgs = row["_images"] or []
        if not ck.eq(f"{where}: number of _images", len(imgs), len(c["images"])):
            continue
        for k, p in enumerate(imgs):
            if not isinstance(p, str) or not os.path.isfile(p):
                ck.fail(f"{where}: _images[{k}] {p!r} is not a file")
                continue
            ck.eq(f"{where}: _images[{k}]", os.path.realpath(p), os.path.realpath(c["images"][k]))
            ck.eq(f"{where}: _images[{k}] size", image_size(p), c["sizes"][k])
        try:
            validate_messages(None, row["_prompt"] + row["_response"], imgs, [], [])
        except ValueError as e:
            ck.fail(f"{where}: mm_plugin _validate_messages: {e}")
    ck.done(f"{where0}: {len(ds)} rows through get_dataset_list -> _load_single_dataset -> "
            "SharegptDatasetConverter")


# ---- LLaVA


def llava_namespace():
    import dataclasses
    import importlib
    import types

    import numpy as np

    class T(np.ndarray):
        def clone(self):
            return self.copy()

        def ne(self, v):
            return np.not_equal(self, v)

    def tensor(data, dtype=None):
        return np.asarray(data, dtype=np.int64).view(T)

    def stack(xs, dim=0):
        return np.stack(xs, axis=dim).view(T)

    class Dataset:  # torch.utils.data.Dataset has no behaviour LazySupervisedDataset uses
        pass

    def zeros(*size, **kw):  # torch.zeros(3, h, w): the placeholder image of an image-less row
        return np.zeros(size).view(T)

    torch = types.SimpleNamespace(tensor=tensor, stack=stack, long=np.int64, Tensor=T, zeros=zeros)
    base = os.path.dirname(pkg_file("llava-torch", "llava/__init__.py"))
    module("llava", base)
    constants = importlib.import_module("llava.constants")
    conversation = importlib.import_module("llava.conversation")
    import typing

    ns = {"os": os, "copy": __import__("copy"), "json": json, "torch": torch, "Dataset": Dataset,
          "transformers": types.SimpleNamespace(PreTrainedTokenizer=object), "conversation_lib": conversation,
          "Image": __import__("PIL.Image", fromlist=["Image"]), "IS_TOKENIZER_GREATER_THAN_0_14": True,
          "local_rank": 0, "dataclass": dataclasses.dataclass, "field": dataclasses.field,
          **{k: getattr(typing, k) for k in ("Dict", "Optional", "Sequence", "List")},
          **{k: getattr(constants, k) for k in dir(constants) if k.isupper()}}
    load_defs(pkg_file("llava-torch", "llava/mm_utils.py"), ["tokenizer_image_token"], ns)
    load_defs(pkg_file("llava-torch", "llava/train/train.py"),
              ["rank0_print", "preprocess_multimodal", "preprocess_v1", "preprocess", "LazySupervisedDataset",
               "DataArguments"], ns)
    return ns, conversation, constants


class WordTokenizer:
    """A reversible whitespace tokenizer with a BOS token, in place of LLaVA's LLaMA tokenizer."""

    bos_token_id, pad_token_id, model_max_length, legacy = 1, 0, 4096, False

    def __init__(self, tensor):
        self.vocab, self.words = {}, ["<pad>", "<s>"]
        self.tensor = tensor  # the torch.tensor stand-in, for return_tensors="pt"

    def ids(self, text):
        out = [self.bos_token_id]
        for w in text.split():
            if w not in self.vocab:
                self.vocab[w] = len(self.words)
                self.words.append(w)
            out.append(self.vocab[w])
        return out

    def __call__(self, text, **kw):
        import types

        if isinstance(text, list):
            ids = [self.ids(t) for t in text]
            if kw.get("return_tensors") == "pt":  # padding="longest", as preprocess_v1 asks for image-less rows
                n = max(map(len, ids))
                ids = self.tensor([r + [self.pad_token_id] * (n - len(r)) for r in ids])
            return types.SimpleNamespace(input_ids=ids)
        return types.SimpleNamespace(input_ids=self.ids(text))

    def decode(self, ids):
        return [self.words[i] if i >= 0 else f"<{i}>" for i in ids]


def check_onevision_row(ck, where, row, c, image_folder):
    """A row whose `image` is a list, against the layout LLaVA-NeXT / OneVision's
    LazySupervisedDataset._get_item reads (see the docstring): each path opened as
    os.path.join(image_folder, path), the <image> tags of the first human turn, human/gpt turns."""
    from PIL import Image

    imgs = row["image"]
    if len(imgs) < 2:
        ck.fail(f"{where}: `image` is a list of {len(imgs)}; a one-image row must be a string (LLaVA-1.5)")
    if ck.eq(f"{where}: number of images", len(imgs), len(c["images"])):
        for k, p in enumerate(imgs):
            full = os.path.join(image_folder, p) if isinstance(p, str) else None
            if not full or not os.path.isfile(full):
                ck.fail(f"{where}: image[{k}] {p!r} is not a file")
                continue
            ck.eq(f"{where}: image[{k}]", os.path.realpath(full), os.path.realpath(c["images"][k]))
            with Image.open(full) as im:
                ck.eq(f"{where}: image[{k}] size", list(im.convert("RGB").size), c["sizes"][k])
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv or not all(
            isinstance(m, dict) and isinstance(m.get("value"), str) for m in conv):
        ck.fail(f"{where}: `conversations` is not a non-empty list of {{from, value}}: {conv!r}")
        return
    roles = [m.get("from") for m in conv]
    if not ck.eq(f"{where}: roles (human/gpt alternating)", roles, ["human", "gpt"] * max(1, (len(conv) + 1) // 2)):
        return
    ck.eq(f"{where}: <image> tags in the first human turn", conv[0]["value"].count("<image>"), len(imgs))
    ck.eq(f"{where}: <image> tags in later turns", count_image_tags(m["value"] for m in conv[1:]), 0)
    got = [[conv[j]["value"].replace("<image>", "").strip(), conv[j + 1]["value"].strip()]
           for j in range(0, len(conv), 2)]
    ck.eq(f"{where}: turns (<image> tags left out)", got,
          [[q.replace("<image>", "").strip(), a.strip()] for q, a in c["turns"]])


def check_llava(man):
    import contextlib
    import io

    ns, conversation, constants = llava_namespace()
    from PIL import Image

    ck = Check("llava")
    path = man["files"]["llava"]
    where0 = f"{os.path.basename(path)} (llava-torch 1.2.2.post1, LLaVA-1.5 finetune: --version v1)"
    conversation.default_conversation = conversation.conv_templates["v1"]
    image_folder = os.path.join(man["work"], "llava-image-folder")  # any folder: exports carry absolute paths
    os.makedirs(image_folder, exist_ok=True)

    class Processor:  # the CLIP image processor, minus the resize and normalise
        image_mean = [0.48145466, 0.4578275, 0.40821073]
        crop_size = {"height": 336, "width": 336}

        def preprocess(self, image, return_tensors=None):
            return {"pixel_values": [image]}

    data_args = ns["DataArguments"](data_path=path, lazy_preprocess=True, is_multimodal=True,
                                    image_folder=image_folder, image_aspect_ratio="pad")
    data_args.image_processor = Processor()
    data_args.mm_use_im_start_end = False
    tok = WordTokenizer(ns["torch"].tensor)
    ds = ns["LazySupervisedDataset"](data_path=path, tokenizer=tok, data_args=data_args)
    exp_by_id = conv_by_id(man)
    ck.eq(f"{where0}: rows", len(ds), len(man["conversations"]))
    try:
        ds.lengths, ds.modality_lengths  # --group_by_modality_length True reads these first, for every row
    except Exception as e:
        ck.fail(f"{where0}: LazySupervisedDataset.lengths raised {type(e).__name__}: {e}")
    ids = [r.get("id") for r in ds.list_data_dict]
    ck.eq(f"{where0}: ids", sorted(map(str, ids)), sorted(exp_by_id))
    n15 = n_multi = 0
    for i in range(len(ds)):
        rid = ids[i]
        where = f"{where0} row {i} id={rid!r}"
        c = exp_by_id.get(rid)
        if c is None:
            continue
        row = ds.list_data_dict[i]
        if isinstance(row.get("image"), list):
            # LLaVA-1.5's __getitem__ would raise on it (os.path.join of a list): not given to it.
            n_multi += 1
            check_onevision_row(ck, f"{os.path.basename(path)} (LLaVA-NeXT / OneVision layout) row {i} id={rid!r}",
                                row, c, image_folder)
            continue
        if "image" not in row and c["images"]:
            ck.fail(f"{where}: no `image` field; the source has {len(c['images'])} image(s)")
            continue
        n15 += 1
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # "tokenization mismatch" warnings: toy tokenizer
                item = ds[i]
        except Exception as e:
            ck.fail(f"{where}: LazySupervisedDataset.__getitem__ raised {type(e).__name__}: {e} "
                    f"(image={row.get('image')!r})")
            continue
        im = item["image"]
        input_ids = list(item["input_ids"])
        if "image" not in row:  # image-less: LLaVA gives a zero placeholder and no image token
            ck.eq(f"{where}: placeholder image shape", list(getattr(im, "shape", [])), [3, 336, 336])
            ck.eq(f"{where}: image tokens in input_ids", input_ids.count(constants.IMAGE_TOKEN_INDEX), 0)
        else:
            if not isinstance(im, Image.Image):
                ck.fail(f"{where}: image is {type(im).__name__}")
                continue
            if not ck.eq(f"{where}: images in the source (LLaVA-1.5 takes one per row)", len(c["images"]), 1):
                continue
            w, h = c["sizes"][0]
            side = max(w, h)  # image_aspect_ratio pad: expand2square
            ck.eq(f"{where}: image size after expand2square", list(im.size), [side, side])
            ck.eq(f"{where}: image tokens in input_ids", input_ids.count(constants.IMAGE_TOKEN_INDEX), 1)
        text = " ".join(tok.decode(input_ids))
        words = text.replace("</s>", " </s> ").split()  # vicuna_v1 closes each answer with "</s>"
        for q, a in c["turns"]:
            for part in (q.replace("<image>", "").split(), a.split()):
                if not any(words[k:k + len(part)] == part for k in range(len(words) - len(part) + 1)):
                    ck.fail(f"{where}: {' '.join(part)!r} not in the prompt LLaVA built: {text!r}")
    ck.eq(f"{where0}: rows with an `image` list (LLaVA-NeXT / OneVision layout)", n_multi, man["multi_image"])
    ck.done(f"{where0}: {n15} rows through LazySupervisedDataset.__getitem__ with the vicuna_v1 template; "
            f"{n_multi} multi-image row(s) match the LLaVA-NeXT / OneVision layout (not run through LLaVA code)")


def venv_main(args):
    with open(args.manifest) as f:
        man = json.load(f)
    name = args.run_check
    runs = {
        "parquet": lambda: check_parquet(man),
        "swift": lambda: check_swift(man, "swift"),
        "swift-sharegpt": lambda: check_swift(man, "sharegpt-jsonl"),
        "sharegpt-json": lambda: check_sharegpt(man, "sharegpt-json"),
        "sharegpt-jsonl": lambda: check_sharegpt(man, "sharegpt-jsonl"),
        "llava": lambda: check_llava(man),
        "export-notes": lambda: check_notes(man),
    }
    try:
        runs[name]()
    except Failures as e:
        print(str(e))
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmloop", help="the mmloop binary")
    ap.add_argument("--keep", help="build the project and exports in this (empty) folder and keep it")
    ap.add_argument("--only", help="comma-separated checks: " + ", ".join(sorted({c for _, v in CHECKS for c in v})))
    ap.add_argument("--run-check", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_check:
        venv_main(args)
    else:
        host_main(args)


if __name__ == "__main__":
    main()
