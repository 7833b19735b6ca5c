//! Parity with Hugging Face transformers 5.24 (+ PEFT 0.21.2 for adapters): greedy
//! `generate` in float32 with the PIL image processors at their default settings (SmolVLM
//! tiling on), on the tiny random-weight checkpoints of `tests/fixtures/vlm/`, made in the
//! published layouts by `tools/make_vlm_fixtures.py` (references:
//! `tools/make_vlm_extra_references.py` for several images, conversations and adapters).
//!
//! For every case: the prompt's token ids identical, the generated ids identical, every
//! chosen token's natural-log probability and the top-5 alternatives within 1e-4.
//!
//! `MMLOOP_TEST_DEVICE=cuda` (a build with `--features cuda`) or `metal` runs the same cases
//! on that GPU, within 1e-3: its matmuls sum in another order than the CPU's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_models::Device;
use mmloop_models::generate::{EngineOptions, GenerationOutput, Request, generate_batch};
use mmloop_models::model::{LoadOptions, VlModel};
use mmloop_models::processor::{ChatMessage, Part};
use mmloop_models::sampling::SamplingParams;
use serde_json::Value;

/// The device the cases run on: the CPU unless `MMLOOP_TEST_DEVICE` names a GPU.
fn device() -> Device {
    match std::env::var("MMLOOP_TEST_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok("cuda") => {
            Device::new_cuda(0).expect("MMLOOP_TEST_DEVICE=cuda: no CUDA device (build with --features cuda)")
        }
        Ok("metal") => {
            Device::new_metal(0).expect("MMLOOP_TEST_DEVICE=metal: no Metal device (build with --features metal)")
        }
        Ok(other) => panic!("MMLOOP_TEST_DEVICE={other:?}: expected cpu, cuda or metal"),
    }
}

/// Largest |Δ ln p| allowed against the reference (and between batched and one-at-a-time runs).
fn tolerance() -> f64 {
    if device().is_cpu() { 1e-4 } else { 1e-3 }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm")
}

fn reference(family: &str, file: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(family).join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(family: &str, adapter: Option<&str>) -> Arc<VlModel> {
    let mut opts = LoadOptions { device: device(), ..LoadOptions::default() };
    if let Some(a) = adapter {
        opts.adapters.push((a.into(), fixtures().join(family).join("adapters").join(a)));
    }
    Arc::new(VlModel::load(&fixtures().join(family), &opts).unwrap_or_else(|e| panic!("loading {family}: {e}")))
}

fn messages(case: &Value) -> Vec<ChatMessage> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage {
            role: m["role"].as_str().unwrap().into(),
            parts: match &m["content"] {
                Value::String(s) => vec![Part::Text(s.clone())],
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| match p["type"].as_str().unwrap() {
                        "image" => Part::Image,
                        _ => Part::Text(p["text"].as_str().unwrap().into()),
                    })
                    .collect(),
                other => panic!("content {other}"),
            },
        })
        .collect()
}

fn request(family: &str, case: &Value, adapter: Option<&str>) -> Request {
    let paths: Vec<String> = match (&case["images"], &case["image"]) {
        (Value::Array(a), _) => a.iter().map(|p| p.as_str().unwrap().to_string()).collect(),
        (_, Value::String(p)) => vec![p.clone()],
        _ => Vec::new(),
    };
    let images = paths
        .iter()
        .map(|p| {
            let path = fixtures().join(family).join(p);
            (p.clone(), image::open(&path).unwrap().into_rgb8())
        })
        .collect();
    let n = case["generated_ids"].as_array().unwrap().len();
    Request {
        messages: messages(case),
        images,
        sampling: SamplingParams::greedy(n),
        adapter: adapter.map(String::from),
    }
}

/// Problems of one generation against its reference case, and the largest |Δ ln p|.
fn compare(tag: &str, case: &Value, got: &GenerationOutput, input_ids: &[u32]) -> (Vec<String>, f64) {
    let tolerance = tolerance();
    let mut problems = Vec::new();
    let mut worst = 0.0f64;
    let want_ids: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    if input_ids != want_ids {
        let first =
            input_ids.iter().zip(&want_ids).position(|(a, b)| a != b).unwrap_or(input_ids.len().min(want_ids.len()));
        problems.push(format!(
            "{tag}: input ids differ at {first} (ours {} tokens, reference {})",
            input_ids.len(),
            want_ids.len()
        ));
    }
    let want: Vec<u32> = case["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let ours: Vec<u32> = got.tokens.iter().map(|t| t.id).collect();
    if ours != want {
        problems.push(format!("{tag}: generated {ours:?}, reference {want:?}"));
    }
    for (i, (t, step)) in got.tokens.iter().zip(case["steps"].as_array().unwrap()).enumerate() {
        if t.id != step["token_id"].as_u64().unwrap() as u32 {
            break;
        }
        let d = (t.logprob - step["logprob"].as_f64().unwrap()).abs();
        worst = worst.max(d);
        if d > tolerance {
            problems.push(format!("{tag} step {i}: ln p {} vs {}", t.logprob, step["logprob"]));
        }
        let ids: Vec<u32> = step["top_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let lps: Vec<f64> = step["top_logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (j, (id, lp)) in t.top.iter().take(ids.len()).enumerate() {
            let d = (lp - lps[j]).abs();
            worst = worst.max(d);
            let tied = lps.iter().enumerate().any(|(k, l)| k != j && (l - lps[j]).abs() < tolerance);
            if d > tolerance || (!tied && *id != ids[j]) {
                problems.push(format!("{tag} step {i} top {j}: {id} {lp} vs {} {}", ids[j], lps[j]));
            }
        }
    }
    if ours == want && got.text != case["text"].as_str().unwrap() {
        problems.push(format!("{tag}: text {:?} vs {:?}", got.text, case["text"]));
    }
    (problems, worst)
}

/// Every case of `file`, one at a time and then all in one batch.
fn parity(family: &str, file: &str, adapter: Option<&str>) {
    let model = load(family, adapter);
    let r = reference(family, file);
    let cases = r["cases"].as_array().unwrap();
    let requests: Vec<Request> = cases.iter().map(|c| request(family, c, adapter)).collect();
    let mut problems = Vec::new();
    let mut worst = 0.0f64;
    let one_by_one: Vec<GenerationOutput> = requests
        .iter()
        .map(|req| generate_batch(model.clone(), vec![req.clone()], EngineOptions::default()).pop().unwrap().unwrap())
        .collect();
    let batched = generate_batch(model.clone(), requests.clone(), EngineOptions::default());
    for ((case, req), (alone, together)) in cases.iter().zip(&requests).zip(one_by_one.iter().zip(batched)) {
        let name = case["name"].as_str().unwrap();
        let ids = model.processor.prepare(&req.messages, &req.images).unwrap().input_ids;
        let (p, w) = compare(&format!("{family}/{file}/{name}"), case, alone, &ids);
        problems.extend(p);
        worst = worst.max(w);
        let together = together.unwrap();
        let a: Vec<u32> = alone.tokens.iter().map(|t| t.id).collect();
        let b: Vec<u32> = together.tokens.iter().map(|t| t.id).collect();
        if a != b {
            problems.push(format!("{family}/{file}/{name}: batched {b:?} vs alone {a:?}"));
        }
        for (x, y) in alone.tokens.iter().zip(&together.tokens) {
            if (x.logprob - y.logprob).abs() > tolerance() {
                problems.push(format!("{family}/{file}/{name}: batched ln p {} vs alone {}", y.logprob, x.logprob));
            }
        }
    }
    eprintln!(
        "{family} {file} on {:?}: {} cases, max |Δ ln p| {worst:.2e}; {} problems",
        device(),
        cases.len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn qwen2_vl_matches_transformers() {
    parity("qwen2_vl", "reference.json", None);
    parity("qwen2_vl", "reference_multi.json", None);
}

#[test]
fn qwen2_5_vl_matches_transformers() {
    parity("qwen2_5_vl", "reference.json", None);
    parity("qwen2_5_vl", "reference_multi.json", None);
}

#[test]
fn qwen3_vl_matches_transformers() {
    parity("qwen3_vl", "reference.json", None);
    parity("qwen3_vl", "reference_multi.json", None);
}

#[test]
fn idefics3_with_tiling_matches_transformers() {
    parity("idefics3", "reference.json", None);
    parity("idefics3", "reference_multi.json", None);
}

#[test]
fn lora_and_dora_adapters_match_peft() {
    for family in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3"] {
        parity(family, "reference_lora.json", Some("lora"));
        parity(family, "reference_dora.json", Some("dora"));
    }
}

/// `--quant bf16` (every linear layer and the vision towers' attention products in bfloat16,
/// AMX where the CPU has it): near transformers' float32 answers on every family, and batched
/// output equal to one-at-a-time output — all prompts admitted at once, and one prompt a step
/// beside the others' decoding rows. With AMX, equal to the bit: a decoding row takes the same
/// kernels whatever its step holds.
#[test]
fn bf16_stays_near_float32_on_every_family() {
    use mmloop_models::model::Quant;
    for family in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3"] {
        let opts = LoadOptions { device: device(), quant: Some(Quant::Bf16), ..LoadOptions::default() };
        let mut model = VlModel::load(&fixtures().join(family), &opts).unwrap();
        let layers = model.linears_mut();
        assert!(layers.len() > 8 && layers.iter().all(|l| l.quant_format().is_some()), "{family}: every layer bf16");
        let model = Arc::new(model);
        let r = reference(family, "reference.json");
        let cases = r["cases"].as_array().unwrap();
        let requests: Vec<Request> = cases.iter().map(|c| request(family, c, None)).collect();
        let alone = batch_invariant(&model, &requests, family);
        let mut worst = 0.0f64;
        for (case, alone) in cases.iter().zip(&alone) {
            // The first token sees the same prompt as the float32 reference.
            let d = (alone.tokens[0].logprob - case["steps"][0]["logprob"].as_f64().unwrap()).abs();
            worst = worst.max(d);
        }
        eprintln!("{family}: bf16 first-token max |Δ ln p| against transformers f32 {worst:.2e}");
        // Rounding every operand to 8 mantissa bits moves flat random-weight distributions by a few
        // 1e-2 (docs/benchmarks.md); a wrong layer moves them by whole units.
        assert!(worst < 0.1, "{family}: bf16 drifts {worst} from float32");
        // With a LoRA adapter on every other request (the adapted layers' products unfused, the
        // adapter's own in float32), batched output still equals one-at-a-time output.
        let opts = LoadOptions {
            adapters: vec![("lora".into(), fixtures().join(family).join("adapters").join("lora"))],
            ..opts
        };
        let model = Arc::new(VlModel::load(&fixtures().join(family), &opts).unwrap());
        let requests: Vec<Request> =
            cases.iter().enumerate().map(|(i, c)| request(family, c, (i % 2 == 0).then_some("lora"))).collect();
        batch_invariant(&model, &requests, &format!("{family} with an adapter"));
    }
}

/// Each request alone, and batched output equal to it: all admitted at once, and one admitted
/// a step beside the earlier ones' decoding rows. With AMX equal to the bit (a decoding row
/// takes the same kernels whatever its step holds), elsewhere within the tolerance.
fn batch_invariant(model: &Arc<VlModel>, requests: &[Request], tag: &str) -> Vec<GenerationOutput> {
    let together = generate_batch(model.clone(), requests.to_vec(), EngineOptions::default());
    let staggered = EngineOptions { max_prefill_tokens: 1, ..EngineOptions::default() };
    let staggered = generate_batch(model.clone(), requests.to_vec(), staggered);
    let exact = mmloop_models::amx::available();
    let mut out = Vec::with_capacity(requests.len());
    for (i, ((req, together), staggered)) in requests.iter().zip(together).zip(staggered).enumerate() {
        let alone = generate_batch(model.clone(), vec![req.clone()], EngineOptions::default()).pop().unwrap().unwrap();
        let ids = |o: &GenerationOutput| o.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
        for (how, other) in [("together", together.unwrap()), ("staggered", staggered.unwrap())] {
            assert_eq!(ids(&alone), ids(&other), "{tag}, request {i}: batched ({how}) against alone");
            for (x, y) in alone.tokens.iter().zip(&other.tokens) {
                let d = (x.logprob - y.logprob).abs();
                assert!(
                    if exact { d == 0.0 } else { d < tolerance() },
                    "{tag}, request {i}: batched ({how}) {} alone {}",
                    y.logprob,
                    x.logprob
                );
            }
        }
        out.push(alone);
    }
    out
}

/// `--dtype bf16` (weights and activations stored in bfloat16, candle's kernels): every family
/// runs (the vision rotary embedding turns to float32 and back, as transformers does) and its
/// first token stays near transformers' float32 answer.
#[test]
fn bfloat16_dtype_runs_on_every_family() {
    use mmloop_models::DType;
    for family in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3"] {
        let opts = LoadOptions { device: device(), dtype: DType::BF16, ..LoadOptions::default() };
        let model = Arc::new(VlModel::load(&fixtures().join(family), &opts).unwrap());
        let r = reference(family, "reference.json");
        let cases = r["cases"].as_array().unwrap();
        let requests: Vec<Request> = cases.iter().map(|c| request(family, c, None)).collect();
        let mut worst = 0.0f64;
        for (case, got) in cases.iter().zip(generate_batch(model.clone(), requests, EngineOptions::default())) {
            let got = got.unwrap_or_else(|e| panic!("{family}/{}: {e}", case["name"]));
            let d = (got.tokens[0].logprob - case["steps"][0]["logprob"].as_f64().unwrap()).abs();
            worst = worst.max(d);
        }
        eprintln!("{family}: bfloat16 dtype, first-token max |Δ ln p| against transformers f32 {worst:.2e}");
        assert!(worst < 0.15, "{family}: bfloat16 drifts {worst} from float32");
    }
}
