#!/usr/bin/env python3
"""PEFT training references for the tiny VLM fixtures: the losses, gradient norms, learning
rates and final adapter weights of ten LoRA / DoRA steps, as transformers + PEFT + torch's
AdamW compute them, for `mmloop-models`' trainer to match.

README
======
What it writes, for qwen2_vl, qwen2_5_vl, qwen3_vl and idefics3 in ``tests/fixtures/vlm/`` (read from the COMMITTED
checkpoints and adapters, never rewritten)::

    <family>/train/<kind>/reference.json             examples, per-step loss / grad_norm / lr
    <family>/train/<kind>/adapter_model.safetensors  the adapter after the last step (PEFT names)

for ``kind`` in lora, dora (the committed ``<family>/adapters/<kind>`` adapter is the start).

Run (re-executes itself inside ``tools/.venv-vlm``, made by tools/make_vlm_fixtures.py; installs
peft there when missing; PyPI only; a minute on 2 CPU cores)::

    python3 tools/make_train_references.py

How a step is computed (ms-swift's ``swift sft`` with these settings does the same):

* An example is a conversation whose last turn is the assistant's answer. The prompt is the
  checkpoint's chat template with ``add_generation_prompt`` (the processor expands the image
  tokens); then the answer's tokens (tokenized alone, no special tokens) and the end-of-turn
  token (``<|im_end|>``, ``<end_of_utterance>``). Labels: -100 on the prompt, the token ids on
  the answer and the end-of-turn token.
* The loss of a step is the next-token cross-entropy summed over the labelled tokens of the
  step's examples, divided by their number (each example runs through the model on its own: no
  padding, the same sum as a padded batch).
* ``torch.nn.utils.clip_grad_norm_(max_norm=1.0)`` (the recorded ``grad_norm`` is the norm
  before clipping), ``torch.optim.AdamW(lr=LR, betas=(0.9, 0.95), eps=1e-8,
  weight_decay=0.1)`` on every trainable adapter tensor, transformers'
  ``get_cosine_schedule_with_warmup(num_warmup_steps=1, num_training_steps=STEPS)``; the
  recorded ``learning_rate`` is the one the step used. float32, dropout 0, PEFT's DoRA (the
  weight norm detached).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import make_vlm_fixtures as fx

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3"]
KINDS = ["lora", "dora"]
END_OF_TURN = {"qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>",
               "idefics3": "<end_of_utterance>"}
STEPS = 10
LR = 1e-2
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
WARMUP = 1
# (image index or None, prompt, answer); steps take them in pairs, cycling.
EXAMPLES = [
    (0, fx.PROMPTS[0], "The main object is red."),
    (None, "Say something short.", "Something short."),
    (1, fx.PROMPTS[1], "A small square with a blue corner."),
    (2, fx.PROMPTS[0], "Green."),
]


def messages_of(image: int | None, prompt: str) -> list:
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def encode(family: str, tools: dict, images: list[Path], ex: tuple) -> dict:
    """The example's model inputs (torch) and its record (token ids, where labels start)."""
    import torch

    image, prompt, answer = ex
    pil = [fx.load_image(images[image])] if image is not None else []
    _, inputs = fx.prepare_inputs(family, tools, messages_of(image, prompt), pil)
    tok = tools["tokenizer"]
    answer_ids = tok(answer, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids(END_OF_TURN[family])]
    prompt_ids = inputs["input_ids"][0].tolist()
    ids = torch.tensor([prompt_ids + answer_ids])
    model_inputs = {}
    for k, v in inputs.items():
        if k in ("input_ids", "attention_mask"):
            continue
        if v.dim() == 2 and v.shape == inputs["input_ids"].shape:
            # Per-token inputs (the processor's token types): the answer's tokens are text.
            v = torch.cat([v, torch.zeros((1, len(answer_ids)), dtype=v.dtype)], dim=1)
        model_inputs[k] = v
    model_inputs["input_ids"] = ids
    model_inputs["attention_mask"] = torch.ones_like(ids)
    labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
    record = {
        "image": f"../../../images/{images[image].name}" if image is not None else None,
        "prompt": prompt,
        "answer": answer,
        "input_ids": prompt_ids + answer_ids,
        "labels_start": len(prompt_ids),
    }
    return {"inputs": model_inputs, "labels": labels, "record": record}


def token_loss_sum(model, ex: dict):
    import torch

    logits = model(**ex["inputs"]).logits[0, :-1].float()
    target = ex["labels"][0, 1:]
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum"), int((target != -100).sum())


def train(family: str, kind: str, images: list[Path]) -> None:
    import peft
    import safetensors.torch
    import torch
    import transformers
    from peft import PeftModel, get_peft_model_state_dict

    d = fx.OUT / family
    torch.manual_seed(0)
    base = fx.load_model(family, d)
    pm = PeftModel.from_pretrained(base, str(d / "adapters" / kind), is_trainable=True)
    pm.train()
    params = [p for _, p in sorted(pm.named_parameters()) if p.requires_grad]
    names = [n for n, p in sorted(pm.named_parameters()) if p.requires_grad]
    assert names and all(".lora_" in n for n in names), names
    tools = fx.case_tools(family, d)
    examples = [encode(family, tools, images, ex) for ex in EXAMPLES]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    steps = []
    for step in range(STEPS):
        batch = [2 * step % len(examples), (2 * step + 1) % len(examples)]
        opt.zero_grad()
        total, n = None, 0
        for i in batch:
            s, k = token_loss_sum(pm, examples[i])
            total = s if total is None else total + s
            n += k
        loss = total / n
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
        opt.step()
        sched.step()
        steps.append({"examples": batch, "loss": float(loss), "labelled_tokens": n, "grad_norm": grad_norm,
                      "learning_rate": lr})
        print(f"  {family} {kind} step {step + 1}: loss {float(loss):.6f} grad_norm {grad_norm:.6f} lr {lr:.6g}",
              flush=True)
    out_dir = d / "train" / kind
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(pm).items()}
    safetensors.torch.save_file(state, str(out_dir / "adapter_model.safetensors"))
    fx.write_json(out_dir / "reference.json", {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "made_by": "tools/make_train_references.py",
        "start_adapter": f"../../adapters/{kind}",
        "settings": {"steps": STEPS, "learning_rate": LR, "adam_beta1": BETAS[0], "adam_beta2": BETAS[1],
                     "adam_epsilon": EPS, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
                     "warmup_steps": WARMUP, "lr_scheduler_type": "cosine", "lora_dropout": 0.0},
        "trainable": names,
        "examples": [e["record"] for e in examples],
        "steps": steps,
    })


def main() -> None:
    fx.ensure_venv(extra={"peft": "peft==0.21.2"})
    images = sorted((fx.OUT / "images").glob("*.png"))
    for family in FAMILIES:
        for kind in KINDS:
            train(family, kind, images)


if __name__ == "__main__":
    main()
