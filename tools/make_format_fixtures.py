#!/usr/bin/env python3
"""Binary fixtures for the dataset-format tests of ``crates/mmloop-formats``.

The JSON, JSONL and CSV golden files under ``tests/fixtures/formats/`` are written by hand
(see the README there); this script makes the files that cannot be: Parquet written by
Hugging Face ``datasets`` itself (so the tests check the real HF layout: ``Image``
features as ``struct<bytes: binary, path: string>`` and the ``huggingface`` schema
metadata) and the tiny images of the image-folder fixtures.

Run (creates ``tools/.venv-formats`` on first use; PyPI only)::

    python3 tools/make_format_fixtures.py

The output is deterministic for given package versions; the versions used are written to
``tests/fixtures/formats/parquet/VERSIONS.txt``. Tests never run this script: the files
it makes are committed.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "tools" / ".venv-formats"
OUT = ROOT / "tests" / "fixtures" / "formats"
REQUIREMENTS = ["datasets>=4", "pyarrow", "pillow"]


def ensure_venv():
    """Re-executes this script inside its own venv, creating it if needed."""
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS])
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def png(color, size=(8, 6)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def jpeg(color, size=(8, 6)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


@contextlib.contextmanager
def referenced_files(paths):
    """`to_parquet` stats path-only images to size its row groups (it does not embed
    them): run it where those paths exist, as placeholder files."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        for p in paths:
            (Path(tmp) / p).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / p).write_bytes(b"placeholder")
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def hf_parquet():
    """Two files as `datasets` writes them: one `Image` column, and a list of images."""
    import datasets
    from datasets import Dataset, Features, Image, List, Value

    out = OUT / "parquet"
    out.mkdir(parents=True, exist_ok=True)

    features = Features(
        {
            "id": Value("int64"),
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "answers": List(Value("string")),
            "split": Value("string"),
            "source": Value("string"),
            "width": Value("int32"),
        }
    )
    rows = {
        "id": [1, 2, 3, 4],
        "image": [
            {"bytes": png((200, 30, 30)), "path": "bus_0001.png"},
            {"bytes": png((30, 30, 200)), "path": None},
            {"bytes": None, "path": "images/0003.jpg"},
            None,
        ],
        "question": [
            "What color is the bus?",
            "这是什么颜色？",
            'Is the sign "open"?',
            "What is in the picture?",
        ],
        "answer": ["red", "蓝色 🔵", None, "nothing"],
        "answers": [["red", "red", "dark red"], ["蓝色 🔵", "blue"], [], None],
        "split": ["train", "train", "val", None],
        "source": ["synthetic", "synthetic", "synthetic", None],
        "width": [8, 8, 640, None],
    }
    with referenced_files(["images/0003.jpg"]):
        Dataset.from_dict(rows, features=features).to_parquet(str(out / "hf_vqa.parquet"))

    multi = Features(
        {
            "images": List(Image()),
            "question": Value("string"),
            "answer": Value("string"),
        }
    )
    rows = {
        "images": [
            [{"bytes": None, "path": "pairs/a.jpg"}, {"bytes": None, "path": "pairs/b.jpg"}],
            [{"bytes": jpeg((10, 160, 10)), "path": "green.jpg"}],
        ],
        "question": ["<image><image>Which picture is brighter?", "<image>What colour fills the frame?"],
        "answer": ["the first", "green"],
    }
    with referenced_files(["pairs/a.jpg", "pairs/b.jpg"]):
        Dataset.from_dict(rows, features=multi).to_parquet(str(out / "hf_multi_image.parquet"))

    import PIL
    import pyarrow

    (out / "VERSIONS.txt").write_text(
        f"datasets {datasets.__version__}\npyarrow {pyarrow.__version__}\npillow {PIL.__version__}\n"
    )


def image_folders():
    plain = OUT / "folder" / "plain"
    (plain / "street").mkdir(parents=True, exist_ok=True)
    (plain / "a_red.png").write_bytes(png((220, 20, 20)))
    (plain / "b_green.jpg").write_bytes(jpeg((20, 200, 20)))
    (plain / "street" / "c_blue.png").write_bytes(png((20, 20, 220)))
    (plain / "notes.txt").write_text("not an image: the folder reader skips it\n")

    meta = OUT / "folder" / "with_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "0001.png").write_bytes(png((250, 250, 250)))
    (meta / "0002.png").write_bytes(png((5, 5, 5)))
    lines = [
        {"file_name": "0001.png", "question": "Is the picture white?", "answer": "yes"},
        {"file_name": "0002.png", "question": "Is the picture white?", "answer": "no", "license": "CC0"},
    ]
    (meta / "metadata.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))


def main():
    ensure_venv()
    hf_parquet()
    image_folders()
    for p in sorted(OUT.rglob("*")):
        if p.suffix in {".parquet", ".png", ".jpg"}:
            print(f"{p.stat().st_size:6d}  {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
