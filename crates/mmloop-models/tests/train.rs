//! LoRA / DoRA training steps (ten, with clipping and a cosine schedule) against PEFT 0.21.2 +
//! transformers 5.24 + torch 2.15's AdamW on the tiny fixtures of every family (`tools/make_train_references.py`): the examples' token ids and label
//! starts identical, every step's loss, gradient norm and learning rate, and the adapter after
//! the last step within 1e-4; the saved folder loads back with PEFT's key names.

use std::path::{Path, PathBuf};

use mmloop_models::adapter::{AdapterConfig, PeftAdapter, Targets};
use mmloop_models::model::{LoadOptions, VlModel};
use mmloop_models::processor::{ChatMessage, Part};
use mmloop_models::train::{Example, Schedule, TrainOptions, Trainer};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm")
}

fn close(got: f64, want: f64, what: &str) {
    let tol = TOLERANCE * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: {got} against PEFT's {want}");
}

fn examples(model: &VlModel, dir: &Path, reference: &Value) -> Vec<Example> {
    reference["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut parts = Vec::new();
            let mut images = Vec::new();
            if let Some(p) = e["image"].as_str() {
                parts.push(Part::Image);
                images.push((p.to_string(), image::open(dir.join(p)).unwrap().into_rgb8()));
            }
            parts.push(Part::Text(e["prompt"].as_str().unwrap().into()));
            let messages = [ChatMessage { role: "user".into(), parts }];
            let ex = model.example(&messages, &images, e["answer"].as_str().unwrap()).unwrap();
            let want: Vec<u32> =
                e["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(ex.input_ids, want, "token ids of {:?}", e["prompt"]);
            assert_eq!(ex.labels_start as u64, e["labels_start"].as_u64().unwrap());
            ex
        })
        .collect()
}

fn check(family: &str, kind: &str) {
    let dir = fixtures().join(family).join("train").join(kind);
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let model = VlModel::load(&fixtures().join(family), &LoadOptions::default()).unwrap();
    let start = fixtures().join(family).join("adapters").join(kind);
    let slot = model.load_adapter("train", &start).unwrap();
    let exs = examples(&model, &dir, &reference);
    let s = &reference["settings"];
    let opts = TrainOptions {
        learning_rate: s["learning_rate"].as_f64().unwrap(),
        adam_beta1: s["adam_beta1"].as_f64().unwrap(),
        adam_beta2: s["adam_beta2"].as_f64().unwrap(),
        adam_epsilon: s["adam_epsilon"].as_f64().unwrap(),
        weight_decay: s["weight_decay"].as_f64().unwrap(),
        max_grad_norm: s["max_grad_norm"].as_f64().unwrap(),
        schedule: Schedule::Cosine,
        warmup_steps: s["warmup_steps"].as_u64().unwrap() as usize,
        total_steps: s["steps"].as_u64().unwrap() as usize,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(&model, slot, opts).unwrap();
    let mut worst_loss = 0f64;
    for (i, want) in reference["steps"].as_array().unwrap().iter().enumerate() {
        let batch: Vec<&Example> =
            want["examples"].as_array().unwrap().iter().map(|k| &exs[k.as_u64().unwrap() as usize]).collect();
        let got = trainer.step(&batch).unwrap();
        let what = format!("{family} {kind} step {}", i + 1);
        assert_eq!(got.labelled_tokens as u64, want["labelled_tokens"].as_u64().unwrap(), "{what}");
        close(got.learning_rate, want["learning_rate"].as_f64().unwrap(), &format!("{what} learning rate"));
        close(got.loss, want["loss"].as_f64().unwrap(), &format!("{what} loss"));
        close(got.grad_norm, want["grad_norm"].as_f64().unwrap(), &format!("{what} grad norm"));
        worst_loss = worst_loss.max((got.loss - want["loss"].as_f64().unwrap()).abs());
        if i == 1 {
            // After two steps every lora_A has moved: no gradient stopped silently behind a
            // fused op (candle's rms_norm, softmax, rope and sdpa have no backward pass).
            let start =
                candle_core::safetensors::load(start.join("adapter_model.safetensors"), &candle_core::Device::Cpu)
                    .unwrap();
            for (k, t) in trainer.tensors().iter().filter(|(k, _)| k.ends_with("lora_A.weight")) {
                let moved = (t - &start[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(moved > 1e-4, "{family} {kind}: {k} has not moved after step 2 ({moved})");
            }
        }
    }
    let want =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let got = trainer.tensors();
    let mut keys: Vec<&String> = got.keys().collect();
    keys.sort();
    let mut want_keys: Vec<&String> = want.keys().collect();
    want_keys.sort();
    assert_eq!(keys, want_keys, "{family} {kind}: PEFT's key names");
    let mut worst = 0f64;
    let mut moved = 0;
    let start_tensors =
        candle_core::safetensors::load(start.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (k, w) in &want {
        let diff = (&got[k] - w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        worst = worst.max(diff);
        let change =
            (w - &start_tensors[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        if change > 100.0 * TOLERANCE {
            moved += 1;
        }
    }
    eprintln!("{family} {kind}: max |Δ loss| {worst_loss:.2e}, max |Δ weight| {worst:.2e}");
    assert!(worst <= TOLERANCE, "{family} {kind}: final weights differ from PEFT's by {worst}");
    assert_eq!(moved, want.len(), "{family} {kind}: every tensor moved well past the tolerance");

    // Saved and read back: the same tensors under PEFT's names, the explicit module list.
    let out = tempfile::tempdir().unwrap();
    let cfg = PeftAdapter::read(&start).unwrap().config;
    trainer.save(out.path(), &cfg, "tests/fixtures").unwrap();
    let back = PeftAdapter::read(out.path()).unwrap();
    assert_eq!(back.modules.len(), PeftAdapter::read(&start).unwrap().modules.len());
    assert!(back.config.target_modules.as_array().is_some_and(|t| t.len() == back.modules.len()));
}

#[test]
fn qwen2_vl_lora_steps_match_peft() {
    check("qwen2_vl", "lora");
}

#[test]
fn qwen2_vl_dora_steps_match_peft() {
    check("qwen2_vl", "dora");
}

#[test]
fn qwen2_5_vl_lora_steps_match_peft() {
    check("qwen2_5_vl", "lora");
}

#[test]
fn qwen2_5_vl_dora_steps_match_peft() {
    check("qwen2_5_vl", "dora");
}

#[test]
fn qwen3_vl_lora_steps_match_peft() {
    check("qwen3_vl", "lora");
}

#[test]
fn qwen3_vl_dora_steps_match_peft() {
    check("qwen3_vl", "dora");
}

#[test]
fn idefics3_lora_steps_match_peft() {
    check("idefics3", "lora");
}

#[test]
fn idefics3_dora_steps_match_peft() {
    check("idefics3", "dora");
}

#[test]
fn schedules_follow_transformers() {
    // transformers 5.24's get_cosine_schedule_with_warmup(2 warmup, 10 total) and the linear
    // one, step by step (the learning rates an SGD optimizer saw at lr 1.0).
    let cos: Vec<f64> = (0..10).map(|s| Schedule::Cosine.factor(s, 2, 10)).collect();
    let lin: Vec<f64> = (0..10).map(|s| Schedule::Linear.factor(s, 2, 10)).collect();
    let want_cos = [
        0.0,
        0.5,
        1.0,
        0.9619397662556434,
        0.8535533905932737,
        0.6913417161825449,
        0.5,
        0.3086582838174551,
        0.14644660940672627,
        0.03806023374435663,
    ];
    let want_lin = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
    for s in 0..10 {
        assert!((cos[s] - want_cos[s]).abs() < 1e-12, "cosine at {s}: {}", cos[s]);
        assert!((lin[s] - want_lin[s]).abs() < 1e-12, "linear at {s}: {}", lin[s]);
    }
    assert_eq!(Schedule::Constant.factor(7, 2, 10), 1.0);
}

fn qwen_examples(model: &VlModel) -> Vec<Example> {
    let family = fixtures().join("qwen2_vl");
    let dir = family.join("train").join("lora");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    examples(model, &dir, &reference)
}

/// Two micro-batches accumulated make the step one packed batch of both makes: the same loss,
/// gradient norm and weights (transformers' `num_items_in_batch` averaging).
#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let family = fixtures().join("qwen2_vl");
    let run = |accumulate: bool| {
        let model = VlModel::load(&family, &LoadOptions::default()).unwrap();
        let slot = model.load_adapter("train", &family.join("adapters").join("dora")).unwrap();
        let exs = qwen_examples(&model);
        let opts = TrainOptions { learning_rate: 1e-2, total_steps: 2, ..TrainOptions::default() };
        let mut t = Trainer::new(&model, slot, opts).unwrap();
        let mut reports = Vec::new();
        for pair in exs.chunks(2).take(2) {
            let r = if accumulate {
                t.step_accumulated(&[&[&pair[0]], &[&pair[1]]]).unwrap()
            } else {
                t.step(&[&pair[0], &pair[1]]).unwrap()
            };
            reports.push((r.loss, r.grad_norm));
        }
        (reports, t.tensors())
    };
    let (a, ta) = run(true);
    let (b, tb) = run(false);
    for ((la, ga), (lb, gb)) in a.iter().zip(&b) {
        assert!((la - lb).abs() < 1e-5 && (ga - gb).abs() < 1e-4, "{la} {ga} against {lb} {gb}");
    }
    for (k, t) in &ta {
        let d = (t - &tb[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{k}: {d}");
    }
}

/// A new adapter starts as the base model (B zero), trains every layer it names, and its
/// dropout masks are a function of the seed: two runs agree exactly, another seed does not.
#[test]
fn a_new_adapter_starts_at_the_base_model_and_dropout_follows_the_seed() {
    let family = fixtures().join("qwen2_vl");
    let run = |seed: u64, dropout: f64| {
        let model = VlModel::load(&family, &LoadOptions::default()).unwrap();
        let mut cfg = AdapterConfig::new(4, 8.0, false);
        cfg.lora_dropout = dropout;
        let targets = Targets::parse(&["q_proj".into(), "v_proj".into()]);
        let adapter = PeftAdapter::init(model.text.linears(), &cfg, &targets, 7).unwrap();
        assert_eq!(adapter.modules.len(), 2 * model.text.num_layers());
        let slot = model.add_adapter("new", &adapter).unwrap();
        let exs = qwen_examples(&model);
        let opts = TrainOptions {
            learning_rate: 1e-2,
            total_steps: 3,
            lora_dropout: dropout,
            seed,
            ..TrainOptions::default()
        };
        let mut t = Trainer::new(&model, slot, opts).unwrap();
        let base = {
            // The loss before any step equals the base model's (no adapter on the rows).
            let (sum, n) = t.eval_loss(&[&exs[0]]).unwrap();
            (sum, n)
        };
        let losses: Vec<f64> = (0..3).map(|i| t.step(&[&exs[i % exs.len()]]).unwrap().loss).collect();
        (base, losses, t.tensors())
    };
    let (base, plain, _) = run(1, 0.0);
    assert!((plain[0] - base.0).abs() < 1e-5, "first loss {} against the base model's {}", plain[0], base.0);
    let (_, a, ta) = run(1, 0.3);
    let (_, b, tb) = run(1, 0.3);
    let (_, c, _) = run(2, 0.3);
    assert_eq!(a, b, "the same seed draws the same masks");
    assert_ne!(a[1..], c[1..], "another seed draws others");
    assert_ne!(a[1..], plain[1..], "dropout changes the steps");
    for (k, t) in &ta {
        assert_eq!(t.to_vec2::<f32>().unwrap(), tb[k].to_vec2::<f32>().unwrap(), "{k}");
    }
}

/// QLoRA: with the base quantized (`q8_0`, and `q4k`, whose rows of 256 the tiny layers do not
/// fill, so they take llama.cpp's `q5_0` fallback), training runs the frozen weights
/// dequantized, forward and backward: the steps equal those of full-precision training on the
/// dequantized weights, for LoRA and DoRA (whose magnitude norm reads the dequantized weight,
/// as PEFT's `dequantize_module_weight`).
#[test]
fn qlora_trains_as_on_the_dequantized_base() {
    use candle_core::quantized::GgmlDType;
    use mmloop_models::model::Quant;
    let family = fixtures().join("qwen2_vl");
    let train = |model: &VlModel, kind: &str| {
        let slot = model.load_adapter(kind, &family.join("adapters").join(kind)).unwrap();
        let exs = qwen_examples(model);
        let opts = TrainOptions { learning_rate: 1e-2, total_steps: 3, ..TrainOptions::default() };
        let mut t = Trainer::new(model, slot, opts).unwrap();
        let losses: Vec<f64> = (0..3).map(|i| t.step(&[&exs[i]]).unwrap().loss).collect();
        (losses, t.tensors())
    };
    let (full, _) = train(&VlModel::load(&family, &LoadOptions::default()).unwrap(), "lora");
    for (quant, format) in [(Quant::Q8_0, GgmlDType::Q8_0), (Quant::Q4K, GgmlDType::Q5_0)] {
        let quantized = VlModel::load(&family, &LoadOptions { quant: Some(quant), ..LoadOptions::default() }).unwrap();
        assert!(quantized.text.linears().iter().all(|l| l.quant_format() == Some(format)));
        let mut dequantized = VlModel::load(&family, &LoadOptions::default()).unwrap();
        for (d, q) in dequantized.text.linears_mut().into_iter().zip(quantized.text.linears()) {
            d.set_weight(q.weight().unwrap()).unwrap();
        }
        for kind in ["lora", "dora"] {
            let (a, ta) = train(&quantized, kind);
            let (b, tb) = train(&dequantized, kind);
            for (la, lb) in a.iter().zip(&b) {
                assert!((la - lb).abs() < 1e-5, "{quant:?} {kind}: loss {la} against {lb}");
            }
            for (k, t) in &ta {
                let d = (t - &tb[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-5, "{quant:?} {kind} {k}: {d}");
            }
            if kind == "lora" {
                assert_ne!(a, full, "{quant:?}: the quantized base changes the losses");
            }
        }
    }
}

/// Gradient checkpointing recomputes each layer in the backward pass from its kept input: the
/// steps equal those with every activation kept, on every family (Qwen3-VL's deepstack rows,
/// Idefics3's tiles), two packed examples per step, LoRA and DoRA with dropout (the recomputed
/// pass draws the same masks).
#[test]
fn gradient_checkpointing_gives_the_same_steps() {
    for family in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3"] {
        let dir = fixtures().join(family);
        for kind in ["lora", "dora"] {
            let run = |checkpointing: bool| {
                let model = VlModel::load(&dir, &LoadOptions::default()).unwrap();
                let slot = model.load_adapter("train", &dir.join("adapters").join(kind)).unwrap();
                let data = dir.join("train").join(kind);
                let reference: Value =
                    serde_json::from_str(&std::fs::read_to_string(data.join("reference.json")).unwrap()).unwrap();
                let exs = examples(&model, &data, &reference);
                let opts = TrainOptions {
                    learning_rate: 1e-2,
                    total_steps: 3,
                    lora_dropout: 0.1,
                    gradient_checkpointing: checkpointing,
                    ..TrainOptions::default()
                };
                let mut t = Trainer::new(&model, slot, opts).unwrap();
                let reports: Vec<(f64, f64)> = (0..3)
                    .map(|i| {
                        let r = t.step(&[&exs[i % exs.len()], &exs[(i + 1) % exs.len()]]).unwrap();
                        (r.loss, r.grad_norm)
                    })
                    .collect();
                (reports, t.tensors())
            };
            let (a, ta) = run(true);
            let (b, tb) = run(false);
            for ((la, ga), (lb, gb)) in a.iter().zip(&b) {
                assert!(
                    (la - lb).abs() < 1e-6 && (ga - gb).abs() < 1e-5 * gb.max(1.0),
                    "{family} {kind}: loss {la} grad norm {ga} against {lb} {gb}"
                );
            }
            for (k, t) in &ta {
                let d = (t - &tb[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-6, "{family} {kind} {k}: {d}");
            }
        }
    }
}
