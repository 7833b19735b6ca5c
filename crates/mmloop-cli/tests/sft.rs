//! `mmloop sft` end to end on the tiny Qwen2-VL fixture: a committed version's trusted
//! labels in, ms-swift's layout out (logging.jsonl, checkpoint-N with a PEFT adapter,
//! args.json, report.html), the run recorded and audited, `--resume_from_checkpoint` (also
//! after kill -9) giving the losses of the uninterrupted run, the adapter answering through
//! `mmloop infer --adapters`, and the bad inputs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fails, ok};
use serde_json::Value;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm/qwen2_vl").display().to_string()
}

const QA: [(&str, &str); 6] = [
    ("What colour is the chair?", "red"),
    ("Is the chair red?", "yes"),
    ("How many legs does it have?", "four"),
    ("What material is it?", "wood"),
    ("Is it made of wood?", "yes"),
    ("What is behind it?", "a wall"),
];

/// A swift JSONL of answered questions about `dir/imgs/*`.
fn dataset(root: &Path) -> PathBuf {
    let imgs = common::images(&root.join("imgs"), QA.len());
    let lines: Vec<String> = imgs
        .iter()
        .zip(QA)
        .enumerate()
        .map(|(i, (img, (q, a)))| {
            serde_json::json!({
                "id": format!("q{i}"),
                "messages": [
                    {"role": "user", "content": format!("<image>{q}")},
                    {"role": "assistant", "content": a},
                ],
                "images": [format!("imgs/{img}")],
            })
            .to_string()
        })
        .collect();
    let file = root.join("data.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

/// A project holding the dataset's answers (imported labels are trusted), committed as v1.
fn project(root: &Path) -> String {
    let p = root.join("p").display().to_string();
    ok(&["init", &p]);
    ok(&["import", &p, &dataset(root).display().to_string()]);
    ok(&["commit", &p, "-m", "answers"]);
    p
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--model",
        &fixture(),
        "--output_dir",
        out,
        "--lora_rank",
        "4",
        "--lora_alpha",
        "8",
        "--learning_rate",
        "1e-2",
        "--gradient_accumulation_steps",
        "2",
        "--logging_steps",
        "1",
        "--lora_dropout",
        "0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_ok(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs)
}

fn log_lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("logging.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss) of the training lines.
fn losses(lines: &[Value]) -> Vec<(u64, f64)> {
    lines.iter().filter_map(|l| Some((l["step"].as_u64()?, l["loss"].as_f64()?))).collect()
}

#[test]
fn a_version_trains_into_ms_swift_layout_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path());
    let a = tmp.path().join("a");
    let a_s = a.display().to_string();
    let mut args = vec!["sft".to_string(), p.clone(), "--version".into(), "v1".into()];
    args.extend(train_args(&a_s, &["--max_steps", "4", "--save_steps", "2", "--split_dataset_ratio", "0.34"]));
    run_ok(&args);

    // logging.jsonl: a line per step with ms-swift's keys, validation lines, a last line.
    let lines = log_lines(&a);
    let steps = losses(&lines);
    assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let first = &lines[0];
    for key in ["loss", "grad_norm", "learning_rate", "memory(GiB)", "train_speed(s/it)", "epoch", "elapsed_time"] {
        assert!(first.get(key).is_some(), "{key} missing from {first}");
    }
    assert_eq!(first["global_step/max_steps"], "1/4");
    assert!(lines.iter().filter(|l| l.get("eval_loss").is_some()).count() >= 2, "validation at steps 2 and 4");
    let last = lines.last().unwrap();
    assert!(last["last_model_checkpoint"].as_str().unwrap().ends_with("checkpoint-4"));

    // checkpoint-N: a PEFT adapter with explicit targets and PEFT key names, args.json.
    for n in [2, 4] {
        let c = a.join(format!("checkpoint-{n}"));
        for f in ["adapter_config.json", "adapter_model.safetensors", "args.json", "trainer_state.json"] {
            assert!(c.join(f).is_file(), "{} lacks {f}", c.display());
        }
    }
    let c4 = a.join("checkpoint-4");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(c4.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let targets = cfg["target_modules"].as_array().unwrap();
    assert_eq!(targets.len(), 14, "all-linear: 7 layers in each of the 2 blocks");
    assert!(targets.iter().all(|t| t.as_str().unwrap().starts_with("model.language_model.layers.")));
    let weights = std::fs::read(c4.join("adapter_model.safetensors")).unwrap();
    let header =
        String::from_utf8_lossy(&weights[8..8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize])
            .into_owned();
    assert!(header.contains("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"));
    let args_json: Value = serde_json::from_str(&std::fs::read_to_string(c4.join("args.json")).unwrap()).unwrap();
    assert_eq!(args_json["lora_rank"], 4);
    assert_eq!(args_json["learning_rate"], 1e-2);
    assert!(std::fs::read_to_string(a.join("report.html")).unwrap().contains("<svg"));

    // Resumed from checkpoint-2: steps 3 and 4 exactly as the uninterrupted run had them.
    let b = tmp.path().join("b");
    let b_s = b.display().to_string();
    let ckpt = a.join("checkpoint-2").display().to_string();
    let mut args = vec!["sft".to_string(), p.clone(), "--version".into(), "v1".into()];
    args.extend(train_args(
        &b_s,
        &["--max_steps", "4", "--save_steps", "2", "--split_dataset_ratio", "0.34", "--resume_from_checkpoint", &ckpt],
    ));
    run_ok(&args);
    assert_eq!(losses(&log_lines(&b)), steps, "the resumed run's log");
    assert_eq!(
        std::fs::read(b.join("checkpoint-4/adapter_model.safetensors")).unwrap(),
        weights,
        "the resumed run's final adapter"
    );

    // Recorded: two train runs on v1, in the audit chain.
    let runs: Value = serde_json::from_str(&ok(&["runs", &p, "--kind", "train", "--json"])).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let r = &runs[1];
    assert_eq!(r["status"], "done");
    assert_eq!(r["config"]["version"], "v1");
    assert!(r["version"].as_str().is_some_and(|v| v.len() == 64));
    assert_eq!(r["summary"]["global_step"], 4);
    assert_eq!(r["summary"]["losses"].as_array().unwrap().len(), 4);
    assert!(r["summary"]["adapter_sha256"].as_str().is_some());
    assert!(ok(&["runs", &p]).contains("train"));
    ok(&["audit", "verify", &p]);

    // The adapter answers through the embedded engine.
    let img = tmp.path().join("imgs/img0.png").display().to_string();
    let out = tmp.path().join("answers.jsonl").display().to_string();
    let c4_s = c4.display().to_string();
    ok(&[
        "infer",
        "--model",
        &fixture(),
        "--adapters",
        &c4_s,
        "--images",
        &img,
        "--prompt",
        "What colour is the chair?",
        "--max_new_tokens",
        "3",
        "-o",
        &out,
    ]);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);
}

#[test]
fn kill_9_then_resume_continues_with_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let file = dataset(tmp.path()).display().to_string();
    let full = tmp.path().join("full");
    let full_s = full.display().to_string();
    let mut args = vec!["sft".to_string(), "--dataset".into(), file.clone()];
    args.extend(train_args(&full_s, &["--max_steps", "10", "--save_steps", "2"]));
    run_ok(&args);
    let want = losses(&log_lines(&full));
    assert_eq!(want.len(), 10);

    // The same run, killed as soon as its first checkpoint is whole.
    let cut = tmp.path().join("cut");
    let cut_s = cut.display().to_string();
    let mut args = vec!["sft".to_string(), "--dataset".into(), file.clone()];
    args.extend(train_args(&cut_s, &["--max_steps", "10", "--save_steps", "2"]));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(&args)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !cut.join("checkpoint-2").is_dir() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The newest whole checkpoint (no temporary folder counts).
    let newest = (1..=10).rev().map(|n| cut.join(format!("checkpoint-{n}"))).find(|c| c.is_dir()).unwrap();
    let done: usize = newest.file_name().unwrap().to_str().unwrap()["checkpoint-".len()..].parse().unwrap();
    let resumed = tmp.path().join("resumed");
    let resumed_s = resumed.display().to_string();
    let newest_s = newest.display().to_string();
    let mut args = vec!["sft".to_string(), "--dataset".into(), file];
    args.extend(train_args(
        &resumed_s,
        &["--max_steps", "10", "--save_steps", "2", "--resume_from_checkpoint", &newest_s],
    ));
    run_ok(&args);
    let got = losses(&log_lines(&resumed));
    assert_eq!(got, want, "resumed after step {done}");
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o").display().to_string();
    // A version without trusted labels.
    let p = tmp.path().join("q").display().to_string();
    ok(&["init", &p]);
    let imgs = common::images(&tmp.path().join("imgs"), 1);
    let file = tmp.path().join("unanswered.jsonl");
    std::fs::write(
        &file,
        serde_json::json!({"messages": [{"role": "user", "content": "<image>What is it?"}], "images": [format!("imgs/{}", imgs[0])]})
            .to_string(),
    )
    .unwrap();
    ok(&["import", &p, &file.display().to_string()]);
    ok(&["commit", &p, "-m", "questions only"]);
    let e = fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out]);
    assert!(e.contains("no trusted labels"), "{e}");
    // An unknown flag names the nearest known one.
    let e = fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out, "--lora_rnak", "8"]);
    assert!(e.contains("--lora_rank"), "{e}");
    // A flag that disagrees with the adapter's own config.
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm/qwen2_vl/adapters/lora");
    let adapter_s = adapter.display().to_string();
    let e =
        fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out, "--adapters", &adapter_s, "--lora_rank", "16"]);
    assert!(e.contains("disagrees"), "{e}");
    let e = fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out, "--quant_bits", "3"]);
    assert!(e.contains("possible values: 4, 8"), "{e}");
    let e =
        fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out, "--quant_bits", "4", "--quant_method", "hqq"]);
    assert!(e.contains("block formats"), "{e}");
    // A file without answers; both a project and a file.
    let e = fails(&["sft", "--dataset", &file.display().to_string(), "--model", &fixture(), "--output_dir", &out]);
    assert!(e.contains("no record has an answer"), "{e}");
    let e = fails(&["sft", &p, "--dataset", &file.display().to_string(), "--model", &fixture(), "--output_dir", &out]);
    assert!(e.contains("not both"), "{e}");
}

/// Examples longer than `--max_length` are left out (all of them: an error saying so), and an
/// image that is gone since the import is named.
#[test]
fn too_long_examples_and_missing_images_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path());
    let out = tmp.path().join("o").display().to_string();
    let e = fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out, "--max_length", "8"]);
    assert!(e.contains("longer than --max_length 8"), "{e}");
    let gone = std::fs::read_dir(tmp.path().join("imgs")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&gone).unwrap();
    let e = fails(&["sft", &p, "--model", &fixture(), "--output_dir", &out]);
    let name = gone.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name), "the missing image is named: {e}");
}

/// `--quant_bits 4 --quant_method bnb` (ms-swift's QLoRA flags): the base is quantized, the
/// losses stay near the full-precision run's without equalling them, and the run records it.
#[test]
fn qlora_trains_on_a_quantized_base() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path());
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let out_s = out.display().to_string();
        let mut args = vec!["sft".to_string(), p.clone()];
        let mut flags = vec!["--max_steps", "3", "--save_steps", "3"];
        flags.extend(extra);
        args.extend(train_args(&out_s, &flags));
        run_ok(&args);
        (losses(&log_lines(&out)), out)
    };
    let (full, _) = run("f32", &[]);
    let (quant, out) = run("q4", &["--quant_bits", "4", "--quant_method", "bnb"]);
    assert_eq!(quant.len(), 3);
    for ((_, q), (_, f)) in quant.iter().zip(&full) {
        assert!(q != f && (q - f).abs() < 0.05 * f, "QLoRA loss {q} against {f} in f32");
    }
    let args: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint-3/args.json")).unwrap()).unwrap();
    assert_eq!(args["quant_bits"], 4);
    assert!(out.join("checkpoint-3/adapter_model.safetensors").is_file());
}

/// Greedy answers and their log-probabilities of `mmloop infer` for `images`.
fn answers(model: &str, adapters: Option<&str>, images: &str, out: &Path) -> Vec<(String, Vec<f64>)> {
    let out_s = out.display().to_string();
    let mut args = vec![
        "infer",
        "--model",
        model,
        "--images",
        images,
        "--prompt",
        "What colour is the chair?",
        "--max_new_tokens",
        "6",
        "--temperature",
        "0",
        "-o",
        &out_s,
    ];
    if let Some(a) = adapters {
        args.extend(["--adapters", a]);
    }
    ok(&args);
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let lp =
                v["logprobs"]["content"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            (v["response"].as_str().unwrap().to_string(), lp)
        })
        .collect()
}

#[test]
fn a_merged_checkpoint_answers_as_the_adapter_does() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    common::images(&imgs, 2);
    let images = imgs.display().to_string();
    for (family, kind) in [("qwen2_vl", "lora"), ("qwen2_vl", "dora"), ("idefics3", "dora")] {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm").join(family);
        let model_s = model.display().to_string();
        let adapter = model.join("adapters").join(kind).display().to_string();
        let merged = tmp.path().join(format!("{family}-{kind}"));
        let merged_s = merged.display().to_string();
        ok(&["export-model", "--model", &model_s, "--adapters", &adapter, "--merge_lora", "true", "-o", &merged_s]);
        // The published layout: the same files, the same tensor names, shapes and dtypes.
        // The checkpoint's files (the fixture's sub-folders of adapters are not part of it).
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&merged), names(&model));
        let header = |p: &Path| {
            let b = std::fs::read(p).unwrap();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let mut h: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
            let meta = h.remove("__metadata__");
            let shapes: Vec<(String, Value, Value)> =
                h.into_iter().map(|(k, v)| (k, v["dtype"].clone(), v["shape"].clone())).collect();
            (shapes, meta)
        };
        let (got, meta) = header(&merged.join("model.safetensors"));
        let (want, _) = header(&model.join("model.safetensors"));
        let sorted = |mut v: Vec<(String, Value, Value)>| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(sorted(got), sorted(want), "{family} {kind}: tensor names, dtypes and shapes");
        assert_eq!(meta.unwrap()["format"], "pt");
        // Merged in float32 (the fixture is bf16, which rounds the merged weights): the same
        // greedy answers and log-probabilities as the unmerged adapter.
        let exact = tmp.path().join(format!("{family}-{kind}-f32"));
        let exact_s = exact.display().to_string();
        ok(&["export-model", "--model", &model_s, "--adapters", &adapter, "--torch_dtype", "float32", "-o", &exact_s]);
        let config: Value = serde_json::from_str(&std::fs::read_to_string(exact.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], "float32");
        let a = answers(&exact_s, None, &images, &tmp.path().join(format!("{family}-{kind}-merged.jsonl")));
        let b = answers(&model_s, Some(&adapter), &images, &tmp.path().join(format!("{family}-{kind}-adapter.jsonl")));
        assert_eq!(a.len(), 2);
        for ((ra, la), (rb, lb)) in a.iter().zip(&b) {
            assert_eq!(ra, rb, "{family} {kind}");
            assert_eq!(la.len(), lb.len());
            for (x, y) in la.iter().zip(lb) {
                assert!((x - y).abs() < 1e-4, "{family} {kind}: ln p {x} merged against {y}");
            }
        }
    }
    // Into an existing folder: refused, nothing touched.
    let model = fixture();
    let adapter = Path::new(&model).join("adapters/lora").display().to_string();
    let existing = tmp.path().join("imgs").display().to_string();
    let e = fails(&["export-model", "--model", &model, "--adapters", &adapter, "-o", &existing]);
    assert!(e.contains("already exists"), "{e}");
}

/// The loop closes: trained on a version's labels, the adapter answers them (exact match
/// 100 %) where the base model answers none; `mmloop eval --compare-base` says so, with the
/// paired comparison.
#[test]
fn fine_tuning_on_the_labels_beats_the_base_model_in_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path());
    let out = tmp.path().join("run").display().to_string();
    ok(&[
        "sft",
        &p,
        "--model",
        &fixture(),
        "--output_dir",
        &out,
        "--max_steps",
        "150",
        "--num_train_epochs",
        "100",
        "--save_steps",
        "150",
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--lora_dropout",
        "0",
    ]);
    let ev = tmp.path().join("ev");
    let ev_s = ev.display().to_string();
    let adapter = format!("{out}/checkpoint-150");
    ok(&[
        "eval",
        &p,
        "--model",
        &fixture(),
        "--adapters",
        &adapter,
        "--compare-base",
        "--max_new_tokens",
        "4",
        "-o",
        &ev_s,
    ]);
    let m: Value = serde_json::from_str(&std::fs::read_to_string(ev.join("metrics.json")).unwrap()).unwrap();
    let exact = |list: &Value| {
        list.as_array().unwrap().iter().find(|x| x["name"] == "exact_match").unwrap()["value"].as_f64().unwrap()
    };
    assert_eq!(exact(&m["metrics"]), 100.0, "the adapter answers every trained question");
    assert_eq!(exact(&m["comparison"]["metrics_b"]), 0.0, "the base model answers none");
    assert!(ev.join("predictions.jsonl").is_file() && ev.join("predictions_base.jsonl").is_file());
}

/// `--engine swift`: the version exported as ms-swift JSONL, `run.sh` with the exact command
/// line (and the multi-node variables), and — with a `swift` on the PATH (here a stand-in
/// that writes what ms-swift writes) — the run followed and recorded.
#[test]
fn the_swift_engine_hands_the_version_to_ms_swift() {
    let tmp = tempfile::tempdir().unwrap();
    let p = project(tmp.path());
    let out = tmp.path().join("big");
    let out_s = out.display().to_string();
    let args = [
        "sft",
        &p,
        "--model",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "--engine",
        "swift",
        "--deepspeed",
        "zero3",
        "--lora_rank",
        "16",
        "--output_dir",
        &out_s,
    ];
    // No swift on the PATH: prepared, not run, nothing recorded.
    let out_run = std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(args)
        .env("PATH", "/usr/bin:/bin")
        .env("NNODES", "2")
        .env("NODE_RANK", "0")
        .env("MASTER_ADDR", "10.0.0.1")
        .output()
        .unwrap();
    assert!(out_run.status.success(), "{}", String::from_utf8_lossy(&out_run.stderr));
    let script = std::fs::read_to_string(out.join("run.sh")).unwrap();
    for want in [
        "swift \\\n    sft",
        "--lora_rank \\\n    16",
        "--deepspeed \\\n    zero3",
        "--tuner_type \\\n    lora",
        "--add_version \\\n    false",
        "export NNODES=2",
        "export MASTER_ADDR=10.0.0.1",
    ] {
        assert!(script.contains(want), "run.sh lacks {want:?}:\n{script}");
    }
    let rows = std::fs::read_to_string(out.join("dataset/train.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), QA.len());
    let row: Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert_eq!(row["messages"][1]["role"], "assistant");
    assert!(
        serde_json::from_str::<Value>(&ok(&["runs", &p, "--kind", "train", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A `swift` that logs two steps and writes a checkpoint, as ms-swift does.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("swift");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
out=""
while [ $# -gt 0 ]; do [ "$1" = "--output_dir" ] && out="$2"; shift; done
mkdir -p "$out/checkpoint-2"
echo '{"loss": 1.5, "grad_norm": 2.0, "learning_rate": 0.0001, "epoch": 0.5, "global_step/max_steps": "1/2", "train_speed(s/it)": 0.1}' >> "$out/logging.jsonl"
echo '{"loss": 1.25, "grad_norm": 1.5, "learning_rate": 0.00005, "epoch": 1.0, "global_step/max_steps": "2/2", "train_speed(s/it)": 0.1}' >> "$out/logging.jsonl"
echo "{\"last_model_checkpoint\": \"$out/checkpoint-2\", \"best_model_checkpoint\": null}" >> "$out/logging.jsonl"
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out2 = tmp.path().join("big2").display().to_string();
    let mut args2 = args.to_vec();
    *args2.last_mut().unwrap() = &out2;
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_mmloop")).args(&args2).env("PATH", &path).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let runs: Value = serde_json::from_str(&ok(&["runs", &p, "--kind", "train", "--json"])).unwrap();
    let run = &runs.as_array().unwrap()[0];
    assert_eq!(run["status"], "done");
    assert_eq!(run["config"]["engine"], "swift");
    assert_eq!(run["summary"]["global_step"], 2);
    assert_eq!(run["summary"]["losses"], serde_json::json!([[1, 1.5], [2, 1.25]]));
    assert!(run["summary"]["last_model_checkpoint"].as_str().unwrap().ends_with("swift/checkpoint-2"));
}
