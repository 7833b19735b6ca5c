#!/usr/bin/env python3
"""Tiny random-weight VLM fixtures in the published on-disk layout, plus transformers references.

README
======
What it makes, under ``tests/fixtures/vlm/``::

    images/img{0,1,2}.png          three small deterministic PNGs (lossless: no JPEG decoder drift)
    <family>/config.json           hand-written in the PUBLISHED spelling (see below)
    <family>/generation_config.json
    <family>/preprocessor_config.json (+ processor_config.json for SmolVLM)
    <family>/tokenizer.json, tokenizer_config.json (real chat template, see SOURCES)
    <family>/model.safetensors     bf16 tensors under the published tensor names
    <family>/reference.json        transformers greedy outputs + ln-probs for every case

Families and the published checkpoint each one mirrors:

    qwen2_vl    Qwen/Qwen2-VL-2B-Instruct          flat legacy config, ``model.*``/``visual.*``
    qwen2_5_vl  Qwen/Qwen2.5-VL-3B-Instruct        flat legacy config, ``model.*``/``visual.*``
    qwen3_vl    Qwen/Qwen3-VL-2B-Instruct          nested text_config/vision_config,
                                                   ``model.language_model.*``/``model.visual.*``
    idefics3    HuggingFaceTB/SmolVLM-256M-Instruct Idefics3 layout, ``model.text_model.*``,
                                                   ``model.vision_model.*``, ``model.connector.*``

Run (creates ``tools/.venv-vlm`` on first use; PyPI only; the CPU is enough)::

    python3 tools/make_vlm_fixtures.py                 # all families
    python3 tools/make_vlm_fixtures.py --family qwen3_vl

The script re-executes itself inside the venv (``ensure_venv`` re-executes whichever script
called it, so the companion scripts below reuse it). ``PACKAGES`` pins the versions the committed
references were made with. Output is deterministic for a given torch/transformers version (both
are recorded in every reference.json). Rerunning overwrites.

Companion script (committed weights untouched; it reuses ``run_cases`` / ``run_case``):
``tools/make_vlm_extra_references.py`` (reference_multi.json, adapters/{lora,dora}/,
reference_lora.json, reference_dora.json).

How the references are made (what a Rust parity test must reproduce)
--------------------------------------------------------------------
* The model is built at random, written to disk in the published layout, then LOADED BACK
  from that directory with ``from_pretrained`` (so the published layout is what transformers
  reads) in **float32** (weights are bf16 on disk: compute in f32 on both sides).
* Prompt: the tokenizer's own chat template (``apply_chat_template``, add_generation_prompt)
  for one user message ``[image, text]`` (or text only). No system message: the Qwen2/2.5
  templates then insert their default system prompt themselves.
* Image processor: the PIL backend (``*ImageProcessorPil``) built from the fixture's
  preprocessor_config.json; torchvision is not installed (it would switch the resize path).
* Generation: greedy (``do_sample=False``), ``repetition_penalty=1.0``, no top-k/top-p,
  ``max_new_tokens=8``, EOS from generation_config.json. The checkpoint's sampling defaults
  (e.g. Qwen2.5-VL's repetition_penalty 1.05) are deliberately overridden: engines must do the
  same to reproduce the reference.
* Per step: ``log_softmax`` in float32 over the raw logits (full ``vocab_size`` row, padding
  rows included), natural log. Recorded: chosen id + ln-prob, top-5 ids + ln-probs, and the
  top1-top2 gap. A token flip where the gap is small points at preprocessing, not at the model.
* ``pixel_values`` statistics (shape, sum, mean, abs-sum, first values) and ``image_grid_thw``
  / tile counts let a Rust preprocessing mismatch be found before looking at logits.
* Suggested tolerance: ids exact; ln-probs within 1e-3 (two transformers runs differ ~1e-5).

Tokenizer trade-off (why special-token ids are NOT the published ones)
----------------------------------------------------------------------
Option A, real ids: pad a small BPE vocab with filler entries so ``<|image_pad|>`` sits at
151655 (as ``shared/bench/transformers_vlm.py`` does). Faithful ids, but ``vocab_size`` must
then be >= 151,665, so the embedding alone is 151936 x hidden x 2 bytes (~10 MB at hidden 32)
and tokenizer.json carries ~150k filler entries (~3 MB): over the < 2 MB per model target and
the 20 MB cap for four families.
Option B, chosen: a small byte-level BPE trained on a tiny corpus (same pre-tokenizer /
normalizer / decoder shape as the real tokenizer), followed by ALL the real added tokens in
the real order and with the real ``special`` flags. Every id in config.json /
generation_config.json / tokenizer_config.json is derived from this tokenizer, so the files
are mutually consistent, just shifted. ``vocab_size`` keeps padding rows past the tokenizer,
as the published Qwen configs do (151936 > 151665), with headroom for ids an engine may append
(some engines append ``<|placeholder|>`` at id = len(tokenizer)). Consequence for tests: read
token ids from the fixture files; never hard-code 151655 / 49190. (That also catches code that
hard-codes them.)

Other deliberate deviations from the published files (all forced by "tiny")
--------------------------------------------------------------------------
* Dimensions are tiny; every published key is kept with a tiny value (mrope_section sums to
  head_dim/2, vision head_dim divisible by 4, merger widths consistent, windows/deepstack
  indexes valid for the tiny depth).
* SmolVLM's published vision_config omits num_hidden_layers/intermediate_size (transformers
  defaults 12/3072 apply); the fixture must state them (2/64) or the model would not be tiny.
* One ``model.safetensors`` instead of the published shards + index (the published SmolVLM is
  a single file too). Names and dtypes (bf16) are the published ones; tied ``lm_head`` is
  omitted exactly where the published checkpoint omits it.
* preprocessor min/max pixels (Qwen2/2.5), size (Qwen3-VL), longest edges (SmolVLM) are small
  so that images give 4-64 image tokens; one image exercises the min clamp, one the max clamp.
* Weights are random; init scales are raised (see ``reinit``) and the seed is searched so
  greedy output is not one repeated token and the top1-top2 gaps are comfortable.

SOURCES (chat templates and layouts; the HF repos themselves are not reachable from here)
-----------------------------------------------------------------------------------------
* Qwen2-VL-2B-Instruct tokenizer_config.json / chat_template.json: the template shown for
  both files by the model page mirror https://ai-nexus-293.pages.dev/model/qwen/qwen2-vl-2b-instruct
  (search corpus "pages"); identical to the copies embedded in many GitHub projects
  (e.g. find_string "{% set image_count = namespace(value=0) %}").
* Qwen2.5-VL-3B-Instruct: same template; a pinned record of
  Qwen/Qwen2.5-VL-7B-Instruct@cc594898137f460bfe9f0759e9844b3ce807cfb5 "official_chat_template"
  (search result id 67558377680) holds it verbatim with its sha256 (of the JSON-encoded string),
  which ``main`` re-checks on every run; shared/reference/checkpoints.md
  confirms the default system prompt and file set for the 3B repo.
* Qwen3-VL-2B-Instruct: ``QWEN3VL_INSTRUCT_CHAT_TEMPLATE`` in an NVIDIA TAO dataset module
  (search result id 56436233786), stated "byte-identical to the chat templates shipped with
  Qwen/Qwen3-VL-8B-Instruct"; the Qwen3-VL-30B-A3B-Instruct page on the same mirror shows the
  same opening. Config layout cross-checked with several public copies of Qwen3-VL configs
  (find_string '"deepstack_visual_indexes": [5, 11, 17]').
* SmolVLM-256M-Instruct: ``prepare_processor_dict`` in huggingface/transformers
  tests/models/idefics3/test_processor_idefics3.py, and a hex-verified spec of the 256M
  tokenizer (search result id 70867438365: "length 403"). Config reconstructed from
  shared/bench/transformers_vlm.py and the SmolVLM2 "verbatim from the model card" copy
  (search result id 68306089702): vision_config lists only hidden_size, image_size,
  max_image_size, model_type, num_attention_heads, patch_size, size, tie_word_embeddings,
  use_base_siglip; text_config has no hidden_act. The fixture keeps the published omissions on
  purpose: a loader must apply transformers' defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "tools" / ".venv-vlm"
OUT = ROOT / "tests" / "fixtures" / "vlm"
# Pinned to the versions the committed references were made with (recorded in every reference*.json).
PACKAGES = ["torch==2.15.0", "transformers==5.24.0", "safetensors==0.8.0", "pillow==13.0.0", "tokenizers==0.23.3"]

MAX_NEW_TOKENS = 8
EMB_STD = 1.0
ATTN_GAIN = 0.5
MLP_GAIN = 15.0
FINAL_NORM_GAIN = 1.0
TOP_K = 5
PROMPTS = [
    "What color is the main object? Answer briefly.",
    "Describe this image.",
]


# --------------------------------------------------------------------------- venv bootstrap
def ensure_venv(extra: dict[str, str] | None = None) -> None:
    """Re-exec the running script (sys.argv[0], not necessarily this module) inside
    tools/.venv-vlm, creating it (PyPI only) when missing. ``extra``: {import name: pip
    requirement} also needed by the caller, installed into an existing venv when absent."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {VENV} (pip install {' '.join(PACKAGES)})", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", *PACKAGES])
    for mod, req in (extra or {}).items():
        if subprocess.call([str(py), "-c", f"import {mod}"], stderr=subprocess.DEVNULL) != 0:
            print(f"pip install {req} into {VENV}", flush=True)
            subprocess.check_call([str(py), "-m", "pip", "install", "-q", req])
    script = os.path.abspath(sys.argv[0])
    os.execv(str(py), [str(py), script, *sys.argv[1:]])


# --------------------------------------------------------------------------- chat templates
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# sha256 of json.dumps(template) as recorded for the Qwen2.5-VL-7B official template (source above).
QWEN2_VL_TEMPLATE_SHA256 = "4df95d05455c2a6f762616492bba63d0f9bef904ef47daabad35f5715d6d2e4e"

QWEN3_VL_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n"
    "        {%- if messages[0].content is string %}\n            {{- messages[0].content }}\n"
    "        {%- else %}\n            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n                    {{- content.text }}\n"
    "                {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '\\n\\n' }}\n    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n        {{- '<|im_start|>system\\n' }}\n"
    "        {%- if messages[0].content is string %}\n            {{- messages[0].content }}\n"
    "        {%- else %}\n            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n                    {{- content.text }}\n"
    "                {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- set image_count = namespace(value=0) %}\n{%- set video_count = namespace(value=0) %}\n"
    "{%- for message in messages %}\n    {%- if message.role == \"user\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n        {%- if message.content is string %}\n"
    "            {{- message.content }}\n        {%- else %}\n            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n                    {{- content.text }}\n"
    "                {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n        {%- if message.content is string %}\n"
    "            {{- message.content }}\n        {%- else %}\n"
    "            {%- for content_item in message.content %}\n                {%- if 'text' in content_item %}\n"
    "                    {{- content_item.text }}\n                {%- endif %}\n            {%- endfor %}\n"
    "        {%- endif %}\n        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and message.content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n                {%- endif %}\n                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {%- if message.content is string %}\n            {{- message.content }}\n        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n                    {{- content.text }}\n"
    "                {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# --------------------------------------------------------------------------- tokenizers
CORPUS = [
    *PROMPTS,
    "You are a helpful assistant.",
    "The main object is red. It is blue. The object is green. The color is yellow.",
    "A red circle, a blue square and a green triangle on a white background.",
    "There is a small orange rectangle next to a purple ellipse in this picture.",
    "The image shows shapes and colors. Answer the question briefly, in one word.",
    "system user assistant tool think Picture Video Describe describe color colour",
    "0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14",
    "The quick brown fox jumps over the lazy dog. What is in this image?",
    "Es un círculo rojo. C'est un carré bleu. 这是一个红色的圆。",
]

QWEN_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN_ADDED = [  # (content, special) in the published order, ids 151643.. in the real tokenizer
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]
QWEN3_EXTRA = [("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False)]

SMOL_BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0,1,2 in SmolLM2
SMOL_ADDED = (
    [("<global-img>", True)]
    + [(f"<row_{r}_col_{c}>", True) for r in range(1, 7) for c in range(1, 7)]
    + [("<fake_token_around_image>", True), ("<image>", True)]
    + [(f"<|reserved_special_token_{i}|>", True) for i in range(88)]
    + [("<end_of_utterance>", True)]
)


def build_tokenizer(kind: str, bpe_size: int):
    """Small byte-level BPE with the real pre-tokenizer shape, then the real added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if kind == "qwen":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        base_specials: list[str] = []
    else:  # smollm2
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        base_specials = SMOL_BASE_SPECIALS
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, special_tokens=base_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    # Base specials are part of the vocab (as in SmolLM2); mark them special explicitly.
    if base_specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in base_specials])
    added = QWEN_ADDED + (QWEN3_EXTRA if kind == "qwen3" else []) if kind.startswith("qwen") else SMOL_ADDED
    for content, special in added:
        at = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        if special:
            tok.add_special_tokens([at])
        else:
            tok.add_tokens([at])
    return tok


def tokenizer_files(kind: str, tok, chat_template: str) -> dict:
    """tokenizer_config.json in the published spelling (ids from this small tokenizer)."""
    spec = json.loads(tok.to_str())
    decoder = {}
    for a in spec["added_tokens"]:
        decoder[str(a["id"])] = {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
    if kind.startswith("qwen"):
        cfg = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": [
                "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
            ],
            "bos_token": None,
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 32768 if kind == "qwen2" else (131072 if kind == "qwen25" else 262144),
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }
    else:
        cfg = {
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
            "bos_token": "<|im_start|>",
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<end_of_utterance>",
            "legacy": False,
            "model_max_length": 8192,
            "pad_token": "<|im_end|>",
            "processor_class": "Idefics3Processor",
            "tokenizer_class": "GPT2Tokenizer",
            "truncation_side": "left",
            "unk_token": "<|endoftext|>",
            "vocab_size": 49152,
        }
    return cfg


# --------------------------------------------------------------------------- images
def make_images(d: Path) -> list[Path]:
    """Three PNGs: 48x36 (below min pixels: upscaled), 224x64 (wide: SmolVLM splits it 1x2),
    320x240 (above max pixels: downscaled; SmolVLM 2x2)."""
    from PIL import Image, ImageDraw

    d.mkdir(parents=True, exist_ok=True)
    specs = [
        (48, 36, (250, 250, 245), [("ellipse", (6, 4, 30, 30), (220, 30, 30))]),
        (224, 64, (30, 40, 120), [("rectangle", (20, 8, 110, 56), (240, 200, 20)),
                                  ("polygon", [(120, 60), (160, 5), (215, 60)], (20, 190, 60))]),
        (320, 240, (200, 200, 200), [("ellipse", (40, 30, 200, 190), (30, 90, 220)),
                                     ("rectangle", (180, 120, 310, 230), (250, 120, 30)),
                                     ("line", (0, 0, 319, 239), (10, 10, 10))]),
    ]
    paths = []
    for i, (w, h, bg, shapes) in enumerate(specs):
        im = Image.new("RGB", (w, h), bg)
        dr = ImageDraw.Draw(im)
        for kind, xy, col in shapes:
            if kind == "ellipse":
                dr.ellipse(xy, fill=col)
            elif kind == "rectangle":
                dr.rectangle(xy, fill=col)
            elif kind == "polygon":
                dr.polygon(xy, fill=col)
            else:
                dr.line(xy, fill=col, width=3)
        # a deterministic gradient stripe so resampling filters matter
        for x in range(w):
            for y in range(h - 4, h):
                im.putpixel((x, y), (x * 255 // max(w - 1, 1), 128, 255 - x * 255 // max(w - 1, 1)))
        p = d / f"img{i}.png"
        im.save(p, optimize=False)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- families
def round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def qwen_ids(tok) -> dict:
    t = tok.token_to_id
    return dict(
        bos=t("<|endoftext|>"), eos=t("<|im_end|>"), pad=t("<|endoftext|>"),
        vision_start=t("<|vision_start|>"), vision_end=t("<|vision_end|>"), vision_pad=t("<|vision_pad|>"),
        image=t("<|image_pad|>"), video=t("<|video_pad|>"),
    )


def family_qwen2_vl(tok) -> dict:
    ids = qwen_ids(tok)
    vocab = round_up(len(tok.get_vocab()) + 16, 64)
    config = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "vision_start_token_id": ids["vision_start"],
        "vision_end_token_id": ids["vision_end"],
        "vision_token_id": ids["vision_pad"],
        "image_token_id": ids["image"],
        "video_token_id": ids["video"],
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "model_type": "qwen2_vl",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "mlp_ratio": 4,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": vocab,
    }
    gen = {
        "bos_token_id": ids["bos"], "pad_token_id": ids["pad"], "do_sample": True,
        "eos_token_id": [ids["eos"], ids["bos"]], "repetition_penalty": 1.05, "temperature": 0.01,
        "top_k": 1, "top_p": 0.001, "transformers_version": "4.45.0.dev0",
    }
    pre = {
        "min_pixels": 3136, "max_pixels": 50176, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
    }
    return dict(config=config, generation_config=gen, preprocessor_config=pre)


def family_qwen2_5_vl(tok) -> dict:
    ids = qwen_ids(tok)
    vocab = round_up(len(tok.get_vocab()) + 16, 64)
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "vision_start_token_id": ids["vision_start"],
        "vision_end_token_id": ids["vision_end"],
        "vision_token_id": ids["vision_pad"],
        "image_token_id": ids["image"],
        "video_token_id": ids["video"],
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 128000,
        "max_window_layers": 2,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 2,
            "hidden_act": "silu",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_chans": 3,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": vocab,
    }
    gen = {
        "bos_token_id": ids["bos"], "pad_token_id": ids["pad"], "do_sample": True,
        "eos_token_id": [ids["eos"], ids["bos"]], "repetition_penalty": 1.05, "temperature": 0.1,
        "top_k": 1, "top_p": 0.001, "transformers_version": "4.49.0.dev0",
    }
    pre = {
        "min_pixels": 3136, "max_pixels": 50176, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }
    return dict(config=config, generation_config=gen, preprocessor_config=pre)


def family_qwen3_vl(tok) -> dict:
    ids = qwen_ids(tok)
    vocab = round_up(len(tok.get_vocab()) + 16, 64)
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": ids["image"],
        "model_type": "qwen3_vl",
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": ids["bos"],
            "dtype": "bfloat16",
            "eos_token_id": ids["eos"],
            "head_dim": 16,
            "hidden_act": "silu",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "max_position_embeddings": 262144,
            "model_type": "qwen3_vl_text",
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"},
            "rope_theta": 5000000,
            "tie_word_embeddings": True,
            "use_cache": True,
            "vocab_size": vocab,
        },
        "tie_word_embeddings": True,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": ids["video"],
        "vision_config": {
            "deepstack_visual_indexes": [0, 1],
            "depth": 3,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 32,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "model_type": "qwen3_vl",
            "num_heads": 2,
            "num_position_embeddings": 64,
            "out_hidden_size": 32,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": ids["vision_end"],
        "vision_start_token_id": ids["vision_start"],
    }
    gen = {
        "bos_token_id": ids["bos"], "pad_token_id": ids["pad"], "do_sample": True,
        "eos_token_id": [ids["eos"], ids["bos"]], "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0,
        "temperature": 0.7, "transformers_version": "4.56.0",
    }
    pre = {
        "size": {"longest_edge": 65536, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
    }
    return dict(config=config, generation_config=gen, preprocessor_config=pre)


def family_idefics3(tok) -> dict:
    t = tok.token_to_id
    vocab = len(tok.get_vocab())  # SmolVLM: vocab_size == tokenizer size (49280), no padding rows
    image_size, patch, scale = 64, 16, 2
    seq_len = (image_size // patch) ** 2 // scale**2
    config = {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": t("<image>"),
        "model_type": "idefics3",
        "pad_token_id": 128002,  # published value, out of vocabulary range there too
        "scale_factor": scale,
        "text_config": {
            "_flash_attn_2_enabled": True,
            "_name_or_path": "None",
            "architectures": ["VLlama3ForCausalLM"],
            "head_dim": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "is_llama_config": True,
            "max_position_embeddings": 8192,
            "model_type": "llama",
            "neftune_noise_alpha": 0.0,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "pad_token_id": t("<|im_end|>"),
            "pixel_shuffle_factor": scale,
            "qk_layer_norms": False,
            "rms_norm_eps": 1e-05,
            "rope_interleaved": False,
            "rope_theta": 100000,
            "torch_dtype": "bfloat16",
            "use_resampler": False,
            "vocab_size": vocab,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vision_config": {
            "hidden_size": 32,
            "image_size": image_size,
            "intermediate_size": 64,  # omitted in the published file (default 3072): needed to stay tiny
            "max_image_size": {"longest_edge": image_size},
            "model_type": "idefics3",
            "num_attention_heads": 2,
            "num_hidden_layers": 2,  # omitted in the published file (default 12): needed to stay tiny
            "patch_size": patch,
            "size": {"longest_edge": 2 * image_size},
            "tie_word_embeddings": False,
            "use_base_siglip": False,
        },
        "vocab_size": vocab,
    }
    gen = {
        "_from_model_config": True, "bos_token_id": t("<|endoftext|>"), "eos_token_id": t("<end_of_utterance>"),
        "pad_token_id": t("<|im_end|>"), "transformers_version": "4.46.0",
    }
    pre = {
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics3ImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": image_size}, "processor_class": "Idefics3Processor", "resample": 1,
        "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2 * image_size},
    }
    proc = {"image_seq_len": seq_len, "processor_class": "Idefics3Processor"}
    return dict(config=config, generation_config=gen, preprocessor_config=pre, processor_config=proc)


FAMILIES = {
    # name: (tokenizer kind, bpe size, template, spec fn, mirrors)
    "qwen2_vl": ("qwen2", 600, QWEN2_VL_TEMPLATE, family_qwen2_vl, "Qwen/Qwen2-VL-2B-Instruct"),
    "qwen2_5_vl": ("qwen25", 600, QWEN2_VL_TEMPLATE, family_qwen2_5_vl, "Qwen/Qwen2.5-VL-3B-Instruct"),
    "qwen3_vl": ("qwen3", 600, QWEN3_VL_TEMPLATE, family_qwen3_vl, "Qwen/Qwen3-VL-2B-Instruct"),
    "idefics3": ("smol", 600, SMOLVLM_TEMPLATE, family_idefics3, "HuggingFaceTB/SmolVLM-256M-Instruct"),
}


# --------------------------------------------------------------------------- model build
def model_class(family: str):
    import transformers as tf

    return {
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
        "idefics3": tf.Idefics3ForConditionalGeneration,
    }[family]


def reinit(model, seed: int, emb_std: float, head_std: float, n_base: int, n_tok: int,
           attn_gain: float = ATTN_GAIN, mlp_gain: float = MLP_GAIN,
           final_norm: float = FINAL_NORM_GAIN) -> None:
    """Re-draw every weight at a scale that keeps a 2-layer tiny model lively.

    Linear/conv weights ~ N(0, 1/fan_in) (unit-variance activations), biases ~ N(0, 0.1),
    token embeddings ~ N(0, emb_std), untied lm_head ~ N(0, head_std), norms stay at 1.
    Rows of added/special tokens and of the vocab padding past the tokenizer (as in the
    published Qwen checkpoints) are shrunk so greedy decoding rarely lands on them. The final
    text norm weight is ``final_norm`` (not 1): it scales the logits only, so top1-top2 gaps
    grow without changing the dynamics inside the network.
    Residual-branch outputs (o_proj, down_proj) get ``out_gain`` so the residual stream drifts
    away from the input embedding: with tied embeddings the input token otherwise stays its
    own argmax and greedy decoding repeats one token. The default std 0.02 gives near-uniform
    logits, which is no better."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or "ln_q" in name or "layernorm" in name:
                if name.endswith("weight"):
                    final = name.endswith("language_model.norm.weight") or name.endswith("text_model.norm.weight")
                    p.fill_(final_norm if final else 1.0)
                else:
                    p.zero_()
                continue
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * emb_std)
                p[n_base:] *= 0.3  # added/special tokens: rarely argmax
                p[n_tok:] *= 0.3  # padding rows past the tokenizer: never inputs, rarely argmax
            elif name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=g) * head_std)
                p[n_base:] *= 0.3
                p[n_tok:] *= 0.3
            elif "position_embedding" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                fan_in = math.prod(p.shape[1:])
                is_text = "language_model" in name or "text_model" in name
                gain = (attn_gain if "o_proj" in name else mlp_gain if "down_proj" in name else 1.0) if is_text else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(fan_in))
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()


def published_name(family: str, name: str) -> str | None:
    """transformers-5 parameter name -> published tensor name (None: not stored)."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        if name.startswith("model.language_model."):
            return "model." + name[len("model.language_model."):]
        if name.startswith("model.visual."):
            return "visual." + name[len("model.visual."):]
    return name


def save_weights(family: str, model, d: Path, tied: bool) -> dict:
    import torch
    from safetensors.torch import save_file

    out = {}
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        pub = published_name(family, name)
        out[pub] = t.detach().to(torch.bfloat16).contiguous().clone()
    save_file(dict(sorted(out.items())), str(d / "model.safetensors"), metadata={"format": "pt"})
    return out


# --------------------------------------------------------------------------- processors
def build_processor(family: str, d: Path, tokenizer):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if family == "idefics3":
        from transformers import Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        pre = json.loads((d / "preprocessor_config.json").read_text())
        proc_cfg = json.loads((d / "processor_config.json").read_text())
        ip = Idefics3ImageProcessorPil(**{k: v for k, v in pre.items() if k not in ("image_processor_type", "processor_class")})
        return Idefics3Processor(image_processor=ip, tokenizer=tokenizer, image_seq_len=proc_cfg["image_seq_len"])

    pre = json.loads((d / "preprocessor_config.json").read_text())
    ip = Qwen2VLImageProcessorPil(**{k: v for k, v in pre.items() if k not in ("image_processor_type", "processor_class")})
    import transformers as tf

    base = {"qwen2_vl": tf.Qwen2VLProcessor, "qwen2_5_vl": tf.Qwen2_5_VLProcessor, "qwen3_vl": tf.Qwen3VLProcessor}[family]

    class ImageOnly(base):
        # Without torchvision the video-processor class check raises even for None.
        def check_argument_for_proper_class(self, name, arg):
            if arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    return ImageOnly(image_processor=ip, tokenizer=tokenizer, video_processor=None)


# --------------------------------------------------------------------------- reference run
def load_model(family: str, d: Path):
    """The checkpoint in ``d`` loaded back with ``from_pretrained`` in float32, eval mode;
    fails unless the loading info is clean (no missing / unexpected / mismatched keys)."""
    import torch

    cls = model_class(family)
    model, info = cls.from_pretrained(str(d), dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{family}: loading info not clean: {bad}"
    model.eval()
    return model


def case_tools(family: str, d: Path) -> dict:
    """Tokenizer, processor and generation settings shared by every case of one fixture."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(d))
    processor = build_processor(family, d, tokenizer)
    gen_cfg = json.loads((d / "generation_config.json").read_text())
    eos = gen_cfg["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    special_ids = set(tokenizer.all_special_ids) | {
        int(k) for k, v in json.loads((d / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()
    }
    return {"tokenizer": tokenizer, "processor": processor, "gen_cfg": gen_cfg, "eos": eos,
            "special_ids": special_ids, "n_tok": len(tokenizer)}


def load_image(p: Path):
    from PIL import Image

    im = Image.open(p)
    im.load()
    return im.convert("RGB")


def prepare_inputs(family: str, tools: dict, messages: list, pil_images: list) -> tuple[str, dict]:
    """Chat template (add_generation_prompt) + tokenizer (text only) or processor (images, in
    message order; one sample)."""
    tokenizer, processor = tools["tokenizer"], tools["processor"]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not pil_images:
        inputs = tokenizer([prompt_text], return_tensors="pt", add_special_tokens=False)
    else:
        kwargs = {"add_special_tokens": False} if family == "idefics3" else {}
        inputs = processor(text=[prompt_text], images=[list(pil_images)] if family == "idefics3" else list(pil_images),
                           return_tensors="pt", **kwargs)
    return prompt_text, inputs


def run_case(family: str, model, tools: dict, messages: list, pil_images: list) -> dict:
    """Greedy generation for one conversation; the recorded fields from ``prompt_text`` on."""
    import torch

    tokenizer, gen_cfg, eos = tools["tokenizer"], tools["gen_cfg"], tools["eos"]
    prompt_text, inputs = prepare_inputs(family, tools, messages, pil_images)
    input_ids = inputs["input_ids"][0].tolist()
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, repetition_penalty=1.0,
            temperature=None, top_k=None, top_p=None, num_beams=1, eos_token_id=eos,
            pad_token_id=gen_cfg.get("pad_token_id"), output_logits=True, return_dict_in_generate=True,
        )
    gen_ids = out.sequences[0, len(input_ids):].tolist()
    steps = []
    for s, logits in enumerate(out.logits):
        lp = torch.log_softmax(logits[0].float(), dim=-1)
        top = torch.topk(lp, TOP_K)
        chosen = gen_ids[s]
        assert chosen == int(top.indices[0]), "greedy token is not the argmax"
        steps.append({
            "token_id": chosen,
            "logprob": float(lp[chosen]),
            "top_ids": [int(i) for i in top.indices],
            "top_logprobs": [float(v) for v in top.values],
            "gap_top1_top2": float(top.values[0] - top.values[1]),
        })
    case = {
        "prompt_text": prompt_text,
        "input_ids": input_ids,
        "num_input_tokens": len(input_ids),
        "generated_ids": gen_ids,
        "text": tokenizer.decode(gen_ids, skip_special_tokens=True),
        "text_with_special": tokenizer.decode(gen_ids, skip_special_tokens=False),
        "stopped_on_eos": bool(gen_ids and gen_ids[-1] in eos),
        "steps": steps,
    }
    if pil_images:
        image_token_id = model.config.image_token_id
        pv = inputs["pixel_values"].double()
        case["num_image_tokens"] = int(sum(1 for t in input_ids if t == image_token_id))
        case["pixel_values"] = {
            "shape": list(inputs["pixel_values"].shape),
            "sum": float(pv.sum()),
            "mean": float(pv.mean()),
            "abs_sum": float(pv.abs().sum()),
            "first8": [float(v) for v in inputs["pixel_values"].flatten()[:8]],
        }
        for key in ("image_grid_thw",):
            if key in inputs:
                case[key] = inputs[key].tolist()
        if "pixel_attention_mask" in inputs:
            case["pixel_attention_mask_sum"] = int(inputs["pixel_attention_mask"].sum())
        if "rows" in inputs:
            case["rows"], case["cols"] = inputs["rows"], inputs["cols"]
    return case


def run_cases(family: str, d: Path, images: list[Path], seed: int, model=None) -> dict:
    """The reference cases for the fixture in ``d``. ``model``: run these instead of the
    checkpoint loaded from ``d`` (e.g. a PEFT-wrapped one); tokenizer/processor still come from ``d``."""
    if model is None:
        model = load_model(family, d)
    tools = case_tools(family, d)
    special_ids, n_tok = tools["special_ids"], tools["n_tok"]

    cases = []
    for img_idx in [None, 0, 1, 2]:
        for p_idx, prompt in enumerate(PROMPTS):
            if img_idx is None and p_idx == 1:
                continue  # one text-only case is enough
            content = ([{"type": "image"}] if img_idx is not None else []) + [{"type": "text", "text": prompt}]
            messages = [{"role": "user", "content": content}]
            pil_images = [] if img_idx is None else [load_image(images[img_idx])]
            case = {
                "name": f"{'text' if img_idx is None else f'img{img_idx}'}_p{p_idx}",
                "image": None if img_idx is None else f"../images/{images[img_idx].name}",
                "prompt": prompt,
                "messages": messages,
                **run_case(family, model, tools, messages, pil_images),
            }
            cases.append(case)

    # quality checks used by the seed search
    all_steps = [s for c in cases for s in c["steps"]]
    distinct = [len(set(c["generated_ids"])) for c in cases]
    image_texts = {tuple(c["generated_ids"]) for c in cases if c["image"]}
    quality = {
        "min_gap_top1_top2": min(s["gap_top1_top2"] for s in all_steps),
        "min_distinct_tokens_per_case": min(distinct),
        "cases_stopped_early": sum(1 for c in cases if len(c["generated_ids"]) < MAX_NEW_TOKENS),
        "generated_special_or_padding_ids": sum(
            1 for c in cases for t in c["generated_ids"] if t in special_ids or t >= n_tok),
        "distinct_outputs_over_image_cases": len(image_texts),
    }
    return {"cases": cases, "quality": quality, "tokenizer_len": n_tok}


def score(q: dict) -> tuple:
    """Seed ranking: valid first (no special/padding ids, full length, >= 3 distinct ids per
    case), then images matter (>= 3 distinct outputs over the 6 image cases), then variety,
    then the smallest top1-top2 gap (capped: past 0.1 nat it does not matter)."""
    ok = (q["generated_special_or_padding_ids"] == 0 and q["cases_stopped_early"] == 0
          and q["min_distinct_tokens_per_case"] >= 3)
    return (ok, q["distinct_outputs_over_image_cases"] >= 3, min(q["min_distinct_tokens_per_case"], 5),
            round(min(q["min_gap_top1_top2"], 0.1), 3))


def good_enough(sc: tuple) -> bool:
    return sc[0] and sc[1] and sc[2] >= 4 and sc[3] >= 0.05


def write_json(p: Path, obj) -> None:
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def make_family(family: str, images: list[Path], seeds: list[int]) -> dict:
    import torch
    import transformers

    kind, bpe, template, spec_fn, mirrors = FAMILIES[family]
    d = OUT / family
    d.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(kind, bpe)
    tok.save(str(d / "tokenizer.json"))
    write_json(d / "tokenizer_config.json", tokenizer_files(kind, tok, template))
    spec = spec_fn(tok)
    write_json(d / "config.json", spec["config"])
    write_json(d / "generation_config.json", spec["generation_config"])
    write_json(d / "preprocessor_config.json", spec["preprocessor_config"])
    if "processor_config" in spec:
        write_json(d / "processor_config.json", spec["processor_config"])

    cfg = spec["config"]
    tied = bool(cfg.get("tie_word_embeddings", False))
    n_tok = len(tok.get_vocab())
    n_base = min(a["id"] for a in json.loads(tok.to_str())["added_tokens"]
                 if a["content"] not in SMOL_BASE_SPECIALS)
    best = None
    for seed in seeds:
        torch.manual_seed(seed)
        tcfg = transformers.AutoConfig.from_pretrained(str(d))
        model = model_class(family)(tcfg)
        reinit(model, seed, emb_std=EMB_STD, head_std=EMB_STD, n_base=n_base, n_tok=n_tok)
        save_weights(family, model, d, tied)
        res = run_cases(family, d, images, seed)
        sc = score(res["quality"])
        print(f"  {family} seed {seed}: {res['quality']} -> {sc}", flush=True)
        if best is None or sc > best[0]:
            best = (sc, seed, res)
        if good_enough(sc):
            break
    sc, seed, res = best
    # Re-make the chosen seed's weights (the last loop iteration may have been another seed).
    torch.manual_seed(seed)
    model = model_class(family)(transformers.AutoConfig.from_pretrained(str(d)))
    reinit(model, seed, emb_std=EMB_STD, head_std=EMB_STD, n_base=n_base, n_tok=n_tok)
    saved = save_weights(family, model, d, tied)
    res = run_cases(family, d, images, seed)

    from PIL import Image as _I
    import safetensors
    import tokenizers

    ref = {
        "family": family,
        "mirrors": mirrors,
        "generator": "tools/make_vlm_fixtures.py",
        "reference": f"transformers {transformers.__version__} {model_class(family).__name__}.generate, "
                     "greedy, float32, PIL image processor",
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__, "pillow": _I.__version__ if hasattr(_I, "__version__") else None,
        },
        "seed": seed,
        "compute_dtype": "float32",
        "weights_dtype": "bfloat16",
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "generation": {
            "do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": MAX_NEW_TOKENS,
            "eos_token_id": spec["generation_config"]["eos_token_id"],
            "note": "overrides the sampling defaults in generation_config.json",
        },
        "logprobs": "natural log, float32 log_softmax of the raw logits over the full vocab_size row",
        "tolerance": {"token_ids": "exact", "logprob_abs": 1e-3},
        "tokenizer_len": res["tokenizer_len"],
        "vocab_size": cfg.get("vocab_size", cfg.get("text_config", {}).get("vocab_size")),
        "num_tensors": len(saved),
        "tensor_names_sample": sorted(saved)[:5],
        "quality": res["quality"],
        "cases": res["cases"],
    }
    from PIL import __version__ as pil_version
    ref["versions"]["pillow"] = pil_version
    write_json(d / "reference.json", ref)
    return ref["quality"]


def main() -> None:
    ensure_venv()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), help="default: all")
    ap.add_argument("--seeds", default=",".join(str(i) for i in range(40)),
                    help="seeds tried in order; the first good enough one (else the best) is kept")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    images = make_images(OUT / "images")
    seeds = [int(s) for s in args.seeds.split(",")]
    for family in args.family or ["qwen2_5_vl", "qwen3_vl", "idefics3", "qwen2_vl"]:
        print(f"== {family}", flush=True)
        q = make_family(family, images, seeds)
        print(f"   quality: {q}", flush=True)
    assert hashlib.sha256(json.dumps(QWEN2_VL_TEMPLATE).encode()).hexdigest() == QWEN2_VL_TEMPLATE_SHA256, \
        "Qwen2/2.5-VL chat template differs from the recorded official one"
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}  {p.stat().st_size:,d} B")


if __name__ == "__main__":
    main()
