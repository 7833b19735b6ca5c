#!/usr/bin/env python3
"""Random-weight VLM checkpoints of REAL size, in the published on-disk layout, for the
`mmloop infer` CPU benchmark (docs/benchmarks.md). Not committed: gigabytes.

    tools/.venv-vlm/bin/python tools/bench/make_vlm_bench_models.py --out target/bench-vlm
        -> target/bench-vlm/smolvlm-256m/   SmolVLM-256M-Instruct shape   (~0.5 GB, bf16)
           target/bench-vlm/qwen2.5-vl-3b/  Qwen2.5-VL-3B-Instruct shape  (~7.5 GB, bf16)
           target/bench-vlm/images/img{0..7}.jpg  the 640x480 JPEGs of the transformers anchor

The shapes, tokenizers (tiny BPEs padded so every special token sits at its real id) and
processor settings are those of ``/work/shared/bench/transformers_vlm.py`` (imported from
there, or from --anchor), so mmloop and transformers see the same prompt lengths: 13 tiles x
64 image tokens for SmolVLM, 391 image tokens for Qwen2.5-VL at max_pixels 640x480. The
files are written the way the published repos spell them (flat legacy Qwen config with
``model.*``/``visual.*`` tensor names; SmolVLM's config with the published omissions), reusing
tools/make_vlm_fixtures.py's writers. Weights: transformers' default random init, seed 0,
stored bf16.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import make_vlm_fixtures as fx  # noqa: E402


def load_anchor(path: Path):
    spec = importlib.util.spec_from_file_location("transformers_vlm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_json(p: Path, obj) -> None:
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_published(family: str, model, d: Path, tied: bool) -> None:
    """Published tensor names, bf16, one file (no extra copies: the 3B model is large)."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out[fx.published_name(family, name)] = t.detach().to(torch.bfloat16).contiguous()
    save_file(dict(sorted(out.items())), str(d / "model.safetensors"), metadata={"format": "pt"})


def smolvlm(anchor, d: Path) -> None:
    import torch
    from transformers import Idefics3ForConditionalGeneration

    d.mkdir(parents=True, exist_ok=True)
    fast = anchor.smolvlm_tokenizer()
    tok = fast.backend_tokenizer
    tok.save(str(d / "tokenizer.json"))
    write_json(d / "tokenizer_config.json", fx.tokenizer_files("smol", tok, fx.SMOLVLM_TEMPLATE))
    cfg = anchor.smolvlm_config()
    t = cfg.text_config
    # The published config.json: vision_config without num_hidden_layers / intermediate_size /
    # hidden_act / layer_norm_eps / num_channels (transformers' defaults apply), text without hidden_act.
    config = {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": 49190,
        "model_type": "idefics3",
        "pad_token_id": 128002,
        "scale_factor": 4,
        "text_config": {
            "architectures": ["VLlama3ForCausalLM"],  # as the published checkpoint (llama.cpp picks its class by it)
            "head_dim": 64, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
            "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "rms_norm_eps": 1e-05,
            "rope_theta": 100000, "torch_dtype": "bfloat16", "vocab_size": 49280,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vision_config": {
            "hidden_size": 768, "image_size": 512, "max_image_size": {"longest_edge": 512},
            "model_type": "idefics3", "num_attention_heads": 12, "patch_size": 16,
            "size": {"longest_edge": 2048}, "tie_word_embeddings": False, "use_base_siglip": False,
        },
        "vocab_size": 49280,
    }
    write_json(d / "config.json", config)
    write_json(d / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 49279, "pad_token_id": 2})
    write_json(d / "preprocessor_config.json", {
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics3ImageProcessor", "max_image_size": {"longest_edge": 512},
        "processor_class": "Idefics3Processor", "resample": 1, "rescale_factor": 1 / 255,
        "size": {"longest_edge": 2048},
    })
    write_json(d / "processor_config.json", {"image_seq_len": 64, "processor_class": "Idefics3Processor"})
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    save_published("idefics3", model, d, tied=False)


def qwen25(anchor, d: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    d.mkdir(parents=True, exist_ok=True)
    fast = anchor.qwen_tokenizer()
    tok = fast.backend_tokenizer
    tok.save(str(d / "tokenizer.json"))
    write_json(d / "tokenizer_config.json", fx.tokenizer_files("qwen25", tok, fx.QWEN2_VL_TEMPLATE))
    vision = dict(
        depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
        out_hidden_size=2048, patch_size=14, spatial_merge_size=2, spatial_patch_size=14, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, temporal_patch_size=2,
    )
    config = {  # Qwen/Qwen2.5-VL-3B-Instruct config.json, flat legacy layout
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
        "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 11008, "max_position_embeddings": 128000, "max_window_layers": 70,
        "model_type": "qwen2_5_vl", "num_attention_heads": 16, "num_hidden_layers": 36,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
        "use_cache": True, "use_sliding_window": False, "vision_config": vision,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936,
    }
    write_json(d / "config.json", config)
    write_json(d / "generation_config.json", {
        "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001,
    })
    write_json(d / "preprocessor_config.json", {
        "min_pixels": 3136, "max_pixels": 640 * 480, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    })
    cfg = Qwen2_5_VLConfig.from_pretrained(str(d))
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
    save_published("qwen2_5_vl", model, d, tied=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-vlm"))
    ap.add_argument("--anchor", default="/work/shared/bench/transformers_vlm.py")
    ap.add_argument("--which", default="smolvlm,qwen")
    args = ap.parse_args()
    out = Path(args.out)
    anchor = load_anchor(Path(args.anchor))
    anchor.make_images(str(out / "images"))
    which = args.which.split(",")
    if "smolvlm" in which:
        smolvlm(anchor, out / "smolvlm-256m")
        print("wrote", out / "smolvlm-256m", flush=True)
    if "qwen" in which:
        qwen25(anchor, out / "qwen2.5-vl-3b")
        print("wrote", out / "qwen2.5-vl-3b", flush=True)


if __name__ == "__main__":
    main()
