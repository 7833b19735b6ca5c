//! `mmloop sft` (LoRA / DoRA fine-tuning, ms-swift's flags) and `mmloop runs`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use mmloop_pipeline::sft::{self, AdapterStart, Quant, SftOptions, SftProgress, SftReport, StepLog};
use mmloop_store::Store;

use crate::cli::{ExportModelArgs, RunsArgs, SftArgs};
use crate::ui;

/// The progress bar: steps, loss, learning rate, s/it and ETA.
struct Bar(ProgressBar);

impl Bar {
    /// A line above the bar (also when stderr is not a terminal and the bar is hidden).
    fn say(&self, line: String) {
        self.0.suspend(|| eprintln!("{line}"));
    }
}

impl SftProgress for Bar {
    fn prepared(&self, train: usize, val: usize, too_long: usize, max_steps: usize, start: usize) {
        self.0.set_length(max_steps as u64);
        self.0.set_position(start as u64);
        let line = format!(
            "{} examples to train on, {} held out for validation{}; {} steps{}",
            ui::count(train as u64),
            ui::count(val as u64),
            if too_long > 0 { format!(", {too_long} left out as longer than --max_length") } else { String::new() },
            max_steps,
            if start > 0 { format!(", resuming after step {start}") } else { String::new() },
        );
        self.say(line);
    }

    fn step(&self, log: &StepLog) {
        self.0.set_position(log.step as u64);
        self.0.set_message(format!(
            "loss {:.4} lr {:.2e} {:.2} s/it",
            log.report.loss, log.report.learning_rate, log.seconds_per_step
        ));
    }

    fn eval(&self, step: usize, loss: f64) {
        self.say(format!("step {step}: validation loss {loss:.4}"));
    }

    fn saved(&self, dir: &Path) {
        self.say(format!("saved {}", dir.display()));
    }
}

/// A flag Ctrl-C sets: the run stops after the step in flight (ms-swift's process is ended).
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    stop
}

fn bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// The run's options from the flags, refusing what this engine does not do.
fn options(a: &SftArgs) -> anyhow::Result<SftOptions> {
    if !a.freeze_vit || !a.freeze_aligner {
        bail!(
            "training the vision tower or the connector (--freeze_vit false / --freeze_aligner false) is not supported: adapters go on the language model\n  hint: hand large or full training to ms-swift (`swift sft`) on an exported version"
        );
    }
    let quant = match (a.quant_bits, a.quant_method.as_deref()) {
        (None, None) => None,
        (None, Some(m)) => bail!("--quant_method {m} needs --quant_bits 4 or 8"),
        (Some(bits), None | Some("bnb")) => Some(if bits == 4 { Quant::Q4K } else { Quant::Q8_0 }),
        (Some(_), Some(m)) => bail!(
            "--quant_method {m}: the embedded trainer quantizes with its own block formats (q8_0, q4k), as --quant_method bnb asks\n  hint: --quant_method bnb, or hand the run to ms-swift (--engine swift)"
        ),
    };
    if !matches!(a.torch_dtype.to_ascii_lowercase().as_str(), "float32" | "fp32" | "f32" | "auto") {
        bail!("--torch_dtype {}: training runs in float32\n  hint: leave out --torch_dtype", a.torch_dtype);
    }
    if !(0.0..1.0).contains(&a.split_dataset_ratio) {
        bail!("--split_dataset_ratio {} must be in [0, 1)", a.split_dataset_ratio);
    }
    if !(0.0..1.0).contains(&a.lora_dropout) {
        bail!("--lora_dropout {} must be in [0, 1)", a.lora_dropout);
    }
    if a.per_device_train_batch_size == 0 || a.per_device_eval_batch_size == 0 {
        bail!("batch sizes must be at least 1");
    }
    let adapter = match &a.adapters {
        Some(dir) => {
            // As ms-swift: the adapter's own config decides; a flag that disagrees is an error.
            let (r, alpha, dora) = sft::adapter_settings(dir)?;
            let clash = |flag: &str, given: String, own: String| {
                anyhow::anyhow!(
                    "--{flag} {given} disagrees with the adapter {} ({flag} {own} in its adapter_config.json)\n  hint: leave out --{flag}: the adapter's config decides",
                    dir.display()
                )
            };
            if let Some(g) = a.lora_rank.filter(|g| *g != r) {
                return Err(clash("lora_rank", g.to_string(), r.to_string()));
            }
            if let Some(g) = a.lora_alpha.filter(|g| *g != alpha) {
                return Err(clash("lora_alpha", g.to_string(), alpha.to_string()));
            }
            if let Some(g) = a.use_dora.filter(|g| *g != dora) {
                return Err(clash("use_dora", g.to_string(), dora.to_string()));
            }
            if !a.target_modules.is_empty() {
                bail!("--target_modules goes with a new adapter; --adapters {} names its own", dir.display());
            }
            AdapterStart::From(dir.clone())
        }
        None => AdapterStart::New {
            rank: a.lora_rank.unwrap_or(8),
            alpha: a.lora_alpha.unwrap_or(32.0),
            use_dora: a.use_dora.unwrap_or(false),
            targets: if a.target_modules.is_empty() { vec!["all-linear".into()] } else { a.target_modules.clone() },
        },
    };
    let mut o = SftOptions::new(a.model.clone(), a.output_dir.clone());
    o.revision = a.model_revision.clone();
    o.adapter = adapter;
    o.lora_dropout = a.lora_dropout;
    o.num_train_epochs = a.num_train_epochs;
    o.max_steps = usize::try_from(a.max_steps).ok().filter(|s| *s > 0);
    o.per_device_train_batch_size = a.per_device_train_batch_size;
    o.per_device_eval_batch_size = a.per_device_eval_batch_size;
    o.gradient_accumulation_steps =
        a.gradient_accumulation_steps.unwrap_or_else(|| 16usize.div_ceil(a.per_device_train_batch_size)).max(1);
    o.learning_rate = a.learning_rate;
    o.lr_scheduler_type = a.lr_scheduler_type.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    o.warmup_ratio = a.warmup_ratio;
    o.warmup_steps = a.warmup_steps;
    o.weight_decay = a.weight_decay;
    o.adam_beta1 = a.adam_beta1;
    o.adam_beta2 = a.adam_beta2;
    o.adam_epsilon = a.adam_epsilon;
    o.max_grad_norm = a.max_grad_norm;
    o.max_length = a.max_length;
    o.seed = a.seed;
    o.data_seed = a.data_seed.unwrap_or(a.seed);
    o.save_steps = a.save_steps.max(1);
    o.eval_steps = a.eval_steps.unwrap_or(a.save_steps).max(1);
    o.logging_steps = a.logging_steps.max(1);
    o.split_dataset_ratio = a.split_dataset_ratio;
    o.dataset_shuffle = a.dataset_shuffle;
    o.train_dataloader_shuffle = a.train_dataloader_shuffle;
    o.resume_from_checkpoint = a.resume_from_checkpoint.clone();
    o.feature_cache_bytes = a.feature_cache_mb << 20;
    o.quant = quant;
    o.gradient_checkpointing = a.gradient_checkpointing;
    o.args_json = serde_json::to_value(a)?;
    Ok(o)
}

pub async fn sft(a: SftArgs, actor: &str) -> anyhow::Result<()> {
    match (&a.project, &a.dataset) {
        (Some(_), Some(_)) => bail!(
            "train either on a project's version or on a file, not both\n  hint: import the file first (`mmloop import`), or leave out the project"
        ),
        (None, None) => bail!(
            "nothing to train on\n  hint: name a project (`mmloop sft my-project --model ... --version v3 --output_dir runs/a`) or give --dataset FILE"
        ),
        _ => {}
    }
    if let Some(ckpt) = &a.resume_from_checkpoint
        && !ckpt.join("trainer_state.json").is_file()
    {
        bail!(
            "--resume_from_checkpoint {}: not a checkpoint (no trainer_state.json)\n  hint: name OUT/checkpoint-N of an earlier run",
            ckpt.display()
        );
    }
    if a.engine == "swift" {
        return sft_swift(&a, actor).await;
    }
    if a.deepspeed.is_some() {
        bail!("--deepspeed goes with --engine swift (the embedded trainer runs on one device)");
    }
    let opts = options(&a)?;
    let stop = stop_on_ctrl_c();
    let pb = bar();
    let progress: Arc<dyn SftProgress> = Arc::new(Bar(pb.clone()));
    let (report, run) = match &a.project {
        Some(p) => {
            let store = Store::open(p).await?;
            let r = sft::sft_project(
                &store,
                &a.version,
                a.split.as_deref(),
                a.system.as_deref(),
                opts,
                actor,
                progress,
                stop,
            )
            .await;
            store.close();
            let (r, run) = r?;
            (r, Some(run))
        }
        None => {
            let file = a.dataset.as_ref().expect("checked");
            let read = mmloop_formats::ReadOptions {
                task: None,
                question: None,
                prompt: None,
                images_dir: a.images_dir.clone(),
                annotations: None,
            };
            let format = a.format.as_deref().map(str::parse).transpose()?;
            let (data, unanswered) = sft::file_examples(file, format, &read, a.system.as_deref())?;
            if unanswered > 0 {
                pb.suspend(|| eprintln!("{unanswered} records without an answer are left out"));
            }
            (sft::sft(data, opts, progress, stop).await?, None)
        }
    };
    pb.finish_and_clear();
    print_report(&report, &a, run);
    Ok(())
}

fn print_report(r: &SftReport, a: &SftArgs, run: Option<i64>) {
    let loss = r.losses.last().map_or("–".to_string(), |(_, l)| format!("{l:.4}"));
    let done = r.status == Some(mmloop_core::RunStatus::Done);
    let msg = format!(
        "{} {} of {} steps, last loss {loss}{}",
        if done { "trained" } else { "stopped after" },
        r.global_step,
        r.max_steps,
        r.eval_losses.last().map(|(_, l)| format!(", validation loss {l:.4}")).unwrap_or_default()
    );
    if done {
        ui::ok(msg)
    } else {
        ui::warn(msg)
    }
    if let Some(c) = &r.last_checkpoint {
        eprintln!("  adapter: {}", c.display());
        let html = a.output_dir.join("report.html");
        if html.is_file() {
            eprintln!("  report:  {}", html.display());
        }
        if let Some(run) = run {
            eprintln!(
                "  recorded as run {run} (`mmloop runs {}`)",
                a.project.as_deref().unwrap_or(Path::new(".")).display()
            );
        }
        ui::hint(format!("answer with it: mmloop infer ... --model {} --adapters {}", a.model, c.display()));
        if !done {
            ui::hint(format!("continue: the same command with --resume_from_checkpoint {}", c.display()));
        }
    }
}

pub async fn runs(a: RunsArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let runs = store.runs(a.kind.as_deref()).await;
    store.close();
    let runs = runs?;
    if a.json {
        let v: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "kind": r.kind, "actor": r.actor, "status": r.status.as_str(),
                    "started_at": r.started_at, "finished_at": r.finished_at, "version": r.version,
                    "config": r.config, "summary": r.summary,
                })
            })
            .collect();
        return ui::json(&v);
    }
    if runs.is_empty() {
        eprintln!("no runs recorded");
        return Ok(());
    }
    for r in &runs {
        let what = match r.kind.as_str() {
            "train" => {
                let s = r.summary.as_ref();
                let steps = s.and_then(|s| s["global_step"].as_u64()).map(|n| format!("{n} steps")).unwrap_or_default();
                let loss = s
                    .and_then(|s| s["losses"].as_array()?.last()?.get(1)?.as_f64())
                    .map(|l| format!(", loss {l:.4}"))
                    .unwrap_or_default();
                format!(
                    "{} on {}{} {steps}{loss}",
                    r.config["model"].as_str().unwrap_or("?"),
                    r.config["version"].as_str().unwrap_or("?"),
                    r.config["split"].as_str().map(|s| format!(" ({s})")).unwrap_or_default(),
                )
            }
            _ => r.config["model"].as_str().map(String::from).unwrap_or_default(),
        };
        println!("{:>4}  {:<6} {:<11} {}  {}  {what}", r.id, r.kind, r.status.as_str(), r.started_at, r.actor);
    }
    Ok(())
}

pub async fn export_model(a: ExportModelArgs) -> anyhow::Result<()> {
    if !a.merge {
        bail!(
            "export-model folds the adapter into the weights; --merge false leaves nothing to do\n  hint: the adapter folder itself is what PEFT and vLLM load unmerged"
        );
    }
    let out = match &a.output {
        Some(o) => o.clone(),
        None => {
            let name =
                a.adapters.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
            a.adapters.with_file_name(format!("{name}-merged"))
        }
    };
    let dtype = match a.torch_dtype.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("auto") => None,
        Some("float32" | "fp32" | "f32") => Some(sft::DType::F32),
        Some("bfloat16" | "bf16") => Some(sft::DType::BF16),
        Some("float16" | "fp16" | "f16") => Some(sft::DType::F16),
        Some(other) => bail!("--torch_dtype {other:?}: expected float32, bfloat16 or float16"),
    };
    let report = sft::merge(&a.model, &a.model_revision, &a.adapters, &out, dtype).await?;
    ui::ok(format!(
        "merged {} into {} weights: {} ({} files)",
        a.adapters.display(),
        report.merged,
        out.display(),
        report.files
    ));
    Ok(())
}

/// The ms-swift flags of a run, as given or at their defaults (so `run.sh` says everything).
fn swift_flags(a: &SftArgs) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| f.push((k.to_string(), v));
    if let Some(t) = &a.model_type {
        add("model_type", t.clone());
    }
    if let Some(t) = &a.template {
        add("template", t.clone());
    }
    add("model_revision", a.model_revision.clone());
    add("tuner_type", a.tuner_type.clone());
    if let Some(dir) = &a.adapters {
        add("adapters", dir.display().to_string());
    } else {
        add("use_dora", a.use_dora.unwrap_or(false).to_string());
        add("lora_rank", a.lora_rank.unwrap_or(8).to_string());
        add("lora_alpha", a.lora_alpha.unwrap_or(32.0).to_string());
        let targets = if a.target_modules.is_empty() { "all-linear".to_string() } else { a.target_modules.join(" ") };
        add("target_modules", targets);
    }
    add("lora_dropout", a.lora_dropout.to_string());
    add("freeze_vit", a.freeze_vit.to_string());
    add("freeze_aligner", a.freeze_aligner.to_string());
    add("num_train_epochs", a.num_train_epochs.to_string());
    add("max_steps", a.max_steps.to_string());
    add("per_device_train_batch_size", a.per_device_train_batch_size.to_string());
    add("per_device_eval_batch_size", a.per_device_eval_batch_size.to_string());
    if let Some(g) = a.gradient_accumulation_steps {
        add("gradient_accumulation_steps", g.to_string());
    }
    add("learning_rate", a.learning_rate.to_string());
    add("lr_scheduler_type", a.lr_scheduler_type.clone());
    match a.warmup_steps {
        Some(w) => add("warmup_steps", w.to_string()),
        None => add("warmup_ratio", a.warmup_ratio.to_string()),
    }
    add("weight_decay", a.weight_decay.to_string());
    add("adam_beta1", a.adam_beta1.to_string());
    add("adam_beta2", a.adam_beta2.to_string());
    add("adam_epsilon", a.adam_epsilon.to_string());
    add("max_grad_norm", a.max_grad_norm.to_string());
    if let Some(m) = a.max_length {
        add("max_length", m.to_string());
    }
    add("seed", a.seed.to_string());
    add("data_seed", a.data_seed.unwrap_or(a.seed).to_string());
    add("save_steps", a.save_steps.to_string());
    add("eval_steps", a.eval_steps.unwrap_or(a.save_steps).to_string());
    add("logging_steps", a.logging_steps.to_string());
    add("split_dataset_ratio", a.split_dataset_ratio.to_string());
    add("dataset_shuffle", a.dataset_shuffle.to_string());
    add("train_dataloader_shuffle", a.train_dataloader_shuffle.to_string());
    add("torch_dtype", a.torch_dtype.clone());
    add("gradient_checkpointing", a.gradient_checkpointing.to_string());
    if let Some(b) = a.quant_bits {
        // ms-swift quantizes only with a --quant_method; bitsandbytes is its QLoRA default.
        add("quant_method", a.quant_method.clone().unwrap_or_else(|| "bnb".into()));
        add("quant_bits", b.to_string());
    }
    if let Some(r) = &a.resume_from_checkpoint {
        add("resume_from_checkpoint", r.display().to_string());
    }
    if let Some(d) = &a.deepspeed {
        add("deepspeed", d.clone());
    }
    if let Some(s) = &a.system {
        add("system", s.clone());
    }
    f
}

/// `--engine swift`: the version exported, `OUT/run.sh`, and the run itself when `swift` is
/// on the PATH, followed and recorded.
async fn sft_swift(a: &SftArgs, actor: &str) -> anyhow::Result<()> {
    let Some(project) = &a.project else {
        bail!(
            "--engine swift trains on a project's version\n  hint: a dataset file goes to ms-swift as it is: `swift sft --dataset {}`",
            a.dataset.as_deref().unwrap_or(Path::new("FILE")).display()
        );
    };
    let store = Store::open(project).await?;
    let stop = stop_on_ctrl_c();
    let pb = bar();
    let progress: Arc<dyn SftProgress> = Arc::new(Bar(pb.clone()));
    let result = mmloop_pipeline::swift::sft_swift(
        &store,
        &a.version,
        a.split.as_deref(),
        &a.model,
        &swift_flags(a),
        &a.output_dir,
        actor,
        progress,
        stop,
    )
    .await;
    store.close();
    pb.finish_and_clear();
    let (prepared, ran) = result?;
    match ran {
        None => {
            ui::ok(format!("exported the training data to {}", prepared.dataset.display()));
            eprintln!("  swift is not on the PATH here; run the training where ms-swift 4 is installed:");
            eprintln!("  {}", prepared.script.display());
            ui::hint(
                "pip install ms-swift; on several nodes set NNODES, NODE_RANK, MASTER_ADDR, NPROC_PER_NODE on each",
            );
        }
        Some((report, run)) => {
            print_report(&report, a, Some(run));
        }
    }
    Ok(())
}
