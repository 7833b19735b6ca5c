//! LoRA / DoRA training steps against PEFT 0.21.2 + transformers 5.24 + torch 2.15's AdamW on
//! the tiny fixtures (`tools/make_train_references.py`): the examples' token ids and label
//! starts identical, every step's loss, gradient norm and learning rate, and the adapter after
//! the last step within 1e-4; the saved folder loads back with PEFT's key names.

use std::path::{Path, PathBuf};

use mmloop_models::adapter::PeftAdapter;
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
    trainer.save(out.path(), &cfg).unwrap();
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
