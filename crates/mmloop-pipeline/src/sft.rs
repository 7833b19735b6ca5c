//! LoRA / DoRA fine-tuning runs behind `mmloop sft`, laid out as ms-swift's `swift sft`
//! writes them so its tools (and PEFT, vLLM) read the results:
//!
//! - `OUT/logging.jsonl`: a line per `logging_steps` steps (`loss`, `grad_norm`,
//!   `learning_rate`, `epoch`, `global_step/max_steps` as `"N/M"`, `percentage`,
//!   `elapsed_time`, `remaining_time`, `memory(GiB)`, `train_speed(s/it)`), a line per
//!   validation (`eval_loss`), and a last line naming `last_model_checkpoint`;
//! - `OUT/checkpoint-N/`: the adapter in PEFT's layout (`adapter_config.json`,
//!   `adapter_model.safetensors`), `args.json`, `trainer_state.json` (the log so far) and
//!   `optimizer.safetensors` (AdamW's moments), written to a temporary folder and renamed, so
//!   a killed run leaves whole checkpoints only;
//! - `OUT/report.html`: the train and validation loss curves.
//!
//! Training data is a list of answered questions: a committed version's trusted labels
//! ([`project_examples`]), or a dataset file ([`file_examples`]). Each answered turn is one
//! example, the turns before it its prompt. The data order, the validation split and the
//! dropout masks are functions of the seeds, so `resume_from_checkpoint` continues with the
//! losses the uninterrupted run would have had.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use mmloop_core::RunStatus;
use mmloop_engine::Prompt;
use mmloop_engine::embedded::{Checkpoint, prompt_messages};
pub use mmloop_models::DType;
use mmloop_models::adapter::{AdapterConfig, PeftAdapter, Targets};
pub use mmloop_models::model::Quant;
use mmloop_models::model::{LoadOptions, VlModel};
pub use mmloop_models::train::Schedule;
use mmloop_models::train::{Example, StepReport, TrainOptions, Trainer};
use mmloop_store::{ExportFilter, Store, VersionInfo, VersionSpec};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::infer::{FileQuestion, record_questions};

/// The adapter a run trains.
#[derive(Clone, Debug)]
pub enum AdapterStart {
    /// A new adapter (PEFT's initialisation: B zero).
    New { rank: usize, alpha: f64, use_dora: bool, targets: Vec<String> },
    /// An existing PEFT adapter folder, whose own config decides rank, alpha, DoRA and targets.
    From(PathBuf),
}

/// What `swift sft` calls its training arguments, with its defaults.
#[derive(Clone, Debug)]
pub struct SftOptions {
    /// A checkpoint folder or a Hugging Face repo id.
    pub model: String,
    pub revision: String,
    pub output_dir: PathBuf,
    pub adapter: AdapterStart,
    pub lora_dropout: f64,
    pub num_train_epochs: f64,
    /// Overrides the epochs when set.
    pub max_steps: Option<usize>,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub lr_scheduler_type: Schedule,
    pub warmup_ratio: f64,
    /// Overrides `warmup_ratio` when set.
    pub warmup_steps: Option<usize>,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    /// Examples longer than this many tokens are left out (ms-swift's `delete`); `None`: the
    /// model's context length.
    pub max_length: Option<usize>,
    pub seed: u64,
    pub data_seed: u64,
    pub save_steps: usize,
    pub eval_steps: usize,
    pub logging_steps: usize,
    /// The share of the examples held out for validation (after shuffling with `data_seed`).
    pub split_dataset_ratio: f64,
    pub dataset_shuffle: bool,
    pub train_dataloader_shuffle: bool,
    pub resume_from_checkpoint: Option<PathBuf>,
    /// Image features of the frozen vision tower kept between epochs, in bytes.
    pub feature_cache_bytes: usize,
    /// QLoRA: the frozen language model quantized at load.
    pub quant: Option<Quant>,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping them.
    pub gradient_checkpointing: bool,
    /// Written as `args.json` in every checkpoint (the command's arguments as given).
    pub args_json: Value,
}

impl SftOptions {
    /// ms-swift 4's defaults for `model`, writing to `output_dir`.
    pub fn new(model: impl Into<String>, output_dir: impl Into<PathBuf>) -> SftOptions {
        SftOptions {
            model: model.into(),
            revision: "main".into(),
            output_dir: output_dir.into(),
            adapter: AdapterStart::New { rank: 8, alpha: 32.0, use_dora: false, targets: vec!["all-linear".into()] },
            lora_dropout: 0.05,
            num_train_epochs: 3.0,
            max_steps: None,
            per_device_train_batch_size: 1,
            per_device_eval_batch_size: 1,
            gradient_accumulation_steps: 16,
            learning_rate: 1e-4,
            lr_scheduler_type: Schedule::Cosine,
            warmup_ratio: 0.0,
            warmup_steps: None,
            weight_decay: 0.1,
            adam_beta1: 0.9,
            adam_beta2: 0.95,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            max_length: None,
            seed: 42,
            data_seed: 42,
            save_steps: 500,
            eval_steps: 500,
            logging_steps: 5,
            split_dataset_ratio: 0.0,
            dataset_shuffle: true,
            train_dataloader_shuffle: true,
            resume_from_checkpoint: None,
            feature_cache_bytes: 1 << 30,
            quant: None,
            gradient_checkpointing: true,
            args_json: Value::Null,
        }
    }
}

/// One line of `logging.jsonl`.
#[derive(Clone, Debug)]
pub struct StepLog {
    pub step: usize,
    pub max_steps: usize,
    pub epoch: f64,
    pub report: StepReport,
    pub seconds_per_step: f64,
}

/// What a run reports while it goes (the CLI draws a progress bar).
pub trait SftProgress: Send + Sync {
    /// The data is ready: examples to train on, held out, left out as too long.
    fn prepared(&self, _train: usize, _val: usize, _too_long: usize, _max_steps: usize, _start_step: usize) {}
    fn step(&self, _log: &StepLog) {}
    fn eval(&self, _step: usize, _loss: f64) {}
    fn saved(&self, _dir: &Path) {}
}

impl SftProgress for () {}

/// How a run went.
#[derive(Clone, Debug, Default)]
pub struct SftReport {
    pub status: Option<RunStatus>,
    pub global_step: usize,
    pub max_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub too_long: usize,
    /// (step, loss) of every logged step.
    pub losses: Vec<(usize, f64)>,
    /// (step, validation loss).
    pub eval_losses: Vec<(usize, f64)>,
    pub last_checkpoint: Option<PathBuf>,
    pub best_checkpoint: Option<PathBuf>,
    /// The checkpoint the model was read from (`repo@sha` or the folder).
    pub model_resolved: String,
    pub seconds: f64,
}

impl SftReport {
    pub fn summary(&self) -> Value {
        json!({
            "global_step": self.global_step,
            "max_steps": self.max_steps,
            "train_examples": self.train_examples,
            "val_examples": self.val_examples,
            "too_long": self.too_long,
            "losses": self.losses,
            "eval_losses": self.eval_losses,
            "last_model_checkpoint": self.last_checkpoint.as_ref().map(|p| p.display().to_string()),
            "best_model_checkpoint": self.best_checkpoint.as_ref().map(|p| p.display().to_string()),
            "model": self.model_resolved,
            "seconds": self.seconds,
        })
    }
}

/// The trusted labels of a committed version (optionally one split) as training examples.
pub async fn project_examples(
    store: &Store,
    version: &str,
    split: Option<&str>,
    system: Option<&str>,
) -> anyhow::Result<(Vec<FileQuestion>, VersionInfo)> {
    let filter = ExportFilter { split: split.map(String::from), ..ExportFilter::default() };
    let (info, rx) = store.export(VersionSpec::Named(version.to_string()), filter).await?;
    let v = info.version.context("a committed version is needed")?;
    let mut records = Vec::new();
    for r in rx {
        records.push(r?);
    }
    let here = store.paths().root.clone();
    let questions: Vec<FileQuestion> = record_questions(records, &here, &here, system)
        .into_iter()
        .filter(|q| q.label.as_deref().is_some_and(|l| !l.trim().is_empty()))
        .collect();
    if questions.is_empty() {
        bail!(
            "{} {}has no trusted labels to train on\n  hint: accept or edit answers in `mmloop review`, then `mmloop commit`",
            v.name(),
            split.map(|s| format!("split {s:?} ")).unwrap_or_default()
        );
    }
    Ok((questions, v))
}

/// The answered questions of a dataset file; unanswered ones are counted and left out.
pub fn file_examples(
    file: &Path,
    format: Option<mmloop_formats::Format>,
    read: &mmloop_formats::ReadOptions,
    system: Option<&str>,
) -> anyhow::Result<(Vec<FileQuestion>, usize)> {
    let all = crate::infer::dataset_questions(file, format, read, system)?;
    let n = all.len();
    let answered: Vec<FileQuestion> =
        all.into_iter().filter(|q| q.label.as_deref().is_some_and(|l| !l.trim().is_empty())).collect();
    if answered.is_empty() {
        bail!("{}: no record has an answer to train on", file.display());
    }
    let unanswered = n - answered.len();
    Ok((answered, unanswered))
}

/// The model's example for one answered question.
fn example_of(model: &VlModel, q: &FileQuestion) -> anyhow::Result<Example> {
    let inputs = q
        .question
        .images
        .iter()
        .map(|i| i.load())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("example {}", q.id))?;
    let images = inputs
        .iter()
        .map(|i| Ok((i.name.clone(), i.decode()?.into_rgb8())))
        .collect::<Result<Vec<_>, mmloop_engine::EngineError>>()
        .with_context(|| format!("example {}", q.id))?;
    let messages = prompt_messages(&Prompt {
        system: q.question.system.clone(),
        context: q.question.context.clone(),
        text: q.question.text.clone(),
        images: inputs,
    });
    let answer = q.label.as_deref().unwrap_or_default();
    model.example(&messages, &images, answer).map_err(|e| anyhow::anyhow!("example {}: {e}", q.id))
}

/// ms-swift's time format: `1h 2m 3s`, `2m 5s`, `33s`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

/// Peak resident memory of this process (Linux: VmHWM), in GiB; 0 where unknown.
fn peak_memory_gib() -> f64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0.0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0))
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The micro-batches (indices into the training examples) of every optimizer step of the
/// run, in order: each epoch a permutation drawn from `seed` and the epoch (or the examples
/// in order), cut into micro-batches, `accumulation` of them to a step; the last step of an
/// epoch takes what is left.
fn plan(n: usize, opts: &SftOptions) -> Vec<Vec<Vec<usize>>> {
    let bs = opts.per_device_train_batch_size.max(1);
    let acc = opts.gradient_accumulation_steps.max(1);
    let micro_per_epoch = n.div_ceil(bs);
    let steps_per_epoch = micro_per_epoch.div_ceil(acc).max(1);
    let max_steps = opts.max_steps.unwrap_or_else(|| (opts.num_train_epochs * steps_per_epoch as f64).ceil() as usize);
    let mut steps = Vec::with_capacity(max_steps);
    let mut epoch = 0u64;
    while steps.len() < max_steps {
        let mut order: Vec<usize> = (0..n).collect();
        if opts.train_dataloader_shuffle {
            order
                .shuffle(&mut rand::rngs::StdRng::seed_from_u64(opts.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
        let micro: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
        for group in micro.chunks(acc) {
            if steps.len() == max_steps {
                break;
            }
            steps.push(group.to_vec());
        }
        epoch += 1;
    }
    steps
}

/// Appends lines to `logging.jsonl`.
struct Log {
    file: std::fs::File,
    history: Vec<Value>,
}

impl Log {
    fn open(dir: &Path, history: Vec<Value>) -> anyhow::Result<Log> {
        let path = dir.join("logging.jsonl");
        let mut file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        for line in &history {
            writeln!(file, "{line}")?;
        }
        Ok(Log { file, history })
    }

    fn push(&mut self, line: Value) -> anyhow::Result<()> {
        writeln!(self.file, "{line}")?;
        self.file.flush()?;
        self.history.push(line);
        Ok(())
    }
}

/// Fine-tunes `opts.model` on `data` (blocking; minutes to hours). `stop` ends the run after
/// the step in flight, with a checkpoint of where it got.
pub fn train(
    model_dir: &Path,
    model_resolved: &str,
    data: &[FileQuestion],
    opts: &SftOptions,
    progress: &dyn SftProgress,
    stop: &AtomicBool,
) -> anyhow::Result<SftReport> {
    let started = Instant::now();
    let out = &opts.output_dir;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let load = LoadOptions { quant: opts.quant, ..LoadOptions::default() };
    let model = VlModel::load(model_dir, &load).map_err(|e| anyhow::anyhow!("{e}"))?;

    // The adapter: resumed, given, or new.
    let (adapter, config) = match (&opts.resume_from_checkpoint, &opts.adapter) {
        (Some(ckpt), _) => {
            let a = PeftAdapter::read(ckpt).map_err(|e| anyhow::anyhow!("{e}"))?;
            let c = a.config.clone();
            (a, c)
        }
        (None, AdapterStart::From(dir)) => {
            let a = PeftAdapter::read(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            let c = a.config.clone();
            (a, c)
        }
        (None, AdapterStart::New { rank, alpha, use_dora, targets }) => {
            let mut c = AdapterConfig::new(*rank, *alpha, *use_dora);
            c.lora_dropout = opts.lora_dropout;
            let a = PeftAdapter::init(model.text.linears(), &c, &Targets::parse(targets), opts.seed)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (a, c)
        }
    };
    let slot = model.add_adapter("train", &adapter).map_err(|e| anyhow::anyhow!("{e}"))?;

    // The examples: built, the too long left out, shuffled, split.
    let max_length = opts.max_length.or_else(|| {
        let c = &model.config;
        c["text_config"]["max_position_embeddings"]
            .as_u64()
            .or_else(|| c["max_position_embeddings"].as_u64())
            .map(|n| n as usize)
    });
    let mut examples = Vec::with_capacity(data.len());
    let mut too_long = 0;
    for q in data {
        let ex = example_of(&model, q)?;
        if max_length.is_some_and(|m| ex.input_ids.len() > m) {
            too_long += 1;
            continue;
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        bail!(
            "every one of the {} examples is longer than --max_length {}\n  hint: raise --max_length",
            data.len(),
            max_length.unwrap_or_default()
        );
    }
    if opts.dataset_shuffle {
        examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(opts.data_seed));
    }
    let n_val = if opts.split_dataset_ratio > 0.0 {
        ((examples.len() as f64 * opts.split_dataset_ratio).round() as usize).clamp(1, examples.len().saturating_sub(1))
    } else {
        0
    };
    let mut val: Vec<Example> = examples.split_off(examples.len() - n_val);
    let mut train = examples;
    let steps = plan(train.len(), opts);
    let max_steps = steps.len();
    let warmup = opts.warmup_steps.unwrap_or_else(|| (opts.warmup_ratio * max_steps as f64).ceil() as usize);
    let topts = TrainOptions {
        learning_rate: opts.learning_rate,
        adam_beta1: opts.adam_beta1,
        adam_beta2: opts.adam_beta2,
        adam_epsilon: opts.adam_epsilon,
        weight_decay: opts.weight_decay,
        max_grad_norm: opts.max_grad_norm,
        schedule: opts.lr_scheduler_type,
        warmup_steps: warmup,
        total_steps: max_steps,
        lora_dropout: opts.lora_dropout,
        seed: opts.seed,
        gradient_checkpointing: opts.gradient_checkpointing,
    };
    let mut trainer = Trainer::new(&model, slot, topts).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Resuming: the optimizer's moments and the log so far.
    let mut history = Vec::new();
    let mut report = SftReport {
        max_steps,
        train_examples: train.len(),
        val_examples: val.len(),
        too_long,
        model_resolved: model_resolved.to_string(),
        ..SftReport::default()
    };
    if let Some(ckpt) = &opts.resume_from_checkpoint {
        let state_path = ckpt.join("trainer_state.json");
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(&state_path).with_context(|| state_path.display().to_string())?,
        )
        .with_context(|| format!("{}: not a trainer state", state_path.display()))?;
        let done = state["global_step"].as_u64().context("trainer_state.json has no global_step")? as usize;
        if state["max_steps"].as_u64() != Some(max_steps as u64) {
            bail!(
                "{}: the checkpoint's run had {} steps, this one {max_steps}\n  hint: resume with the same data and arguments",
                ckpt.display(),
                state["max_steps"]
            );
        }
        trainer.load_state(&ckpt.join("optimizer.safetensors"), done).map_err(|e| anyhow::anyhow!("{e}"))?;
        history = state["log_history"].as_array().cloned().unwrap_or_default();
        for line in &history {
            if let (Some(s), Some(l)) = (line["step"].as_u64(), line["loss"].as_f64()) {
                report.losses.push((s as usize, l));
            }
            if let (Some(s), Some(l)) = (line["step"].as_u64(), line["eval_loss"].as_f64()) {
                report.eval_losses.push((s as usize, l));
            }
        }
    }
    let start = trainer.steps();
    report.global_step = start;
    progress.prepared(train.len(), val.len(), too_long, max_steps, start);
    let mut log = Log::open(out, history)?;

    // Frozen vision features, kept while they fit the budget.
    let mut cached = 0usize;
    for ex in train.iter_mut().chain(val.iter_mut()) {
        if cached >= opts.feature_cache_bytes {
            break;
        }
        cached += trainer.encode(ex).map_err(|e| anyhow::anyhow!("{e}"))?;
    }

    let steps_per_epoch = train
        .len()
        .div_ceil(opts.per_device_train_batch_size.max(1))
        .div_ceil(opts.gradient_accumulation_steps.max(1))
        .max(1);
    let mut best: Option<(f64, PathBuf)> = None;
    let loop_started = Instant::now();
    let mut since = Instant::now();
    let mut since_steps = 0usize;
    for (i, micro) in steps.iter().enumerate().skip(start) {
        let batches: Vec<Vec<&Example>> = micro.iter().map(|b| b.iter().map(|&k| &train[k]).collect()).collect();
        let refs: Vec<&[&Example]> = batches.iter().map(Vec::as_slice).collect();
        let r = trainer.step_accumulated(&refs).map_err(|e| anyhow::anyhow!("step {}: {e}", i + 1))?;
        let step = i + 1;
        since_steps += 1;
        report.global_step = step;
        let epoch = step as f64 / steps_per_epoch as f64;
        let last = step == max_steps;
        if step % opts.logging_steps.max(1) == 0 || last || step == 1 {
            let per_step = since.elapsed().as_secs_f64() / since_steps as f64;
            let elapsed = loop_started.elapsed().as_secs_f64();
            let done_here = step - start;
            let remaining = elapsed / done_here as f64 * (max_steps - step) as f64;
            let s = StepLog { step, max_steps, epoch, report: r, seconds_per_step: per_step };
            progress.step(&s);
            log.push(json!({
                "loss": round(r.loss, 8),
                "grad_norm": round(r.grad_norm, 8),
                "learning_rate": r.learning_rate,
                "epoch": round(epoch, 4),
                "step": step,
                "global_step/max_steps": format!("{step}/{max_steps}"),
                "percentage": format!("{:.2}%", 100.0 * step as f64 / max_steps as f64),
                "elapsed_time": clock(elapsed),
                "remaining_time": clock(remaining),
                "memory(GiB)": round(peak_memory_gib(), 2),
                "train_speed(s/it)": round(per_step, 6),
            }))?;
            report.losses.push((step, r.loss));
            since = Instant::now();
            since_steps = 0;
        }
        let interrupted = stop.load(Ordering::Relaxed);
        let mut eval_loss = None;
        if !val.is_empty() && (step % opts.eval_steps.max(1) == 0 || last) {
            let mut sum = 0f64;
            let mut n = 0usize;
            for chunk in val.chunks(opts.per_device_eval_batch_size.max(1)) {
                let refs: Vec<&Example> = chunk.iter().collect();
                let (mean, k) = trainer.eval_loss(&refs).map_err(|e| anyhow::anyhow!("validation: {e}"))?;
                sum += mean * k as f64;
                n += k;
            }
            let l = sum / n.max(1) as f64;
            progress.eval(step, l);
            log.push(json!({
                "eval_loss": round(l, 8),
                "epoch": round(epoch, 4),
                "step": step,
                "global_step/max_steps": format!("{step}/{max_steps}"),
            }))?;
            report.eval_losses.push((step, l));
            eval_loss = Some(l);
        }
        if step % opts.save_steps.max(1) == 0 || last || interrupted {
            let dir = save_checkpoint(&trainer, &config, opts, out, step, max_steps, epoch, &log.history)?;
            progress.saved(&dir);
            if let Some(l) = eval_loss
                && best.as_ref().is_none_or(|(b, _)| l < *b)
            {
                best = Some((l, dir.clone()));
            }
            report.last_checkpoint = Some(dir);
        }
        if interrupted {
            report.status = Some(RunStatus::Interrupted);
            break;
        }
    }
    if report.status.is_none() {
        report.status = Some(RunStatus::Done);
    }
    report.best_checkpoint = best.map(|(_, d)| d);
    report.seconds = started.elapsed().as_secs_f64();
    log.push(json!({
        "last_model_checkpoint": report.last_checkpoint.as_ref().map(|p| p.display().to_string()),
        "best_model_checkpoint": report.best_checkpoint.as_ref().map(|p| p.display().to_string()),
        "best_metric": report.eval_losses.iter().map(|(_, l)| *l).reduce(f64::min),
        "global_step": report.global_step,
        "memory(GiB)": round(peak_memory_gib(), 2),
        "train_runtime": round(report.seconds, 3),
    }))?;
    write_report(out, &report, &opts.model)?;
    Ok(report)
}

/// Writes `checkpoint-{step}` whole (a temporary folder renamed into place).
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    trainer: &Trainer,
    config: &AdapterConfig,
    opts: &SftOptions,
    out: &Path,
    step: usize,
    max_steps: usize,
    epoch: f64,
    history: &[Value],
) -> anyhow::Result<PathBuf> {
    let dir = out.join(format!("checkpoint-{step}"));
    let tmp = out.join(format!(".checkpoint-{step}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    trainer.save(&tmp, config, &opts.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    trainer.save_state(&tmp.join("optimizer.safetensors")).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(tmp.join("args.json"), serde_json::to_string_pretty(&opts.args_json)?)?;
    let state = json!({
        "global_step": step,
        "max_steps": max_steps,
        "epoch": epoch,
        "num_train_epochs": opts.num_train_epochs,
        "train_batch_size": opts.per_device_train_batch_size,
        "log_history": history,
    });
    std::fs::write(tmp.join("trainer_state.json"), serde_json::to_string_pretty(&state)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}

/// `report.html`: the run's numbers and its loss curves.
fn write_report(out: &Path, r: &SftReport, model: &str) -> anyhow::Result<()> {
    let plot = loss_plot(&r.losses, &r.eval_losses).unwrap_or_else(|e| format!("<p>plot failed: {e}</p>"));
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mmloop sft: {model}</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#374151}}td{{padding:0 1em 0 0}}</style></head><body>\
         <h1>Fine-tuning {model}</h1><table>\
         <tr><td>steps</td><td>{step} / {max}</td></tr>\
         <tr><td>examples</td><td>{train} train, {val} validation, {long} left out as too long</td></tr>\
         <tr><td>last loss</td><td>{loss}</td></tr><tr><td>last validation loss</td><td>{eval}</td></tr>\
         <tr><td>last checkpoint</td><td>{ckpt}</td></tr><tr><td>time</td><td>{time}</td></tr></table>{plot}</body></html>",
        model = esc(model),
        step = r.global_step,
        max = r.max_steps,
        train = r.train_examples,
        val = r.val_examples,
        long = r.too_long,
        loss = r.losses.last().map_or("–".into(), |(_, l)| format!("{l:.4}")),
        eval = r.eval_losses.last().map_or("–".into(), |(_, l)| format!("{l:.4}")),
        ckpt = esc(&r.last_checkpoint.as_ref().map_or("–".into(), |p| p.display().to_string())),
        time = clock(r.seconds),
    );
    let path = out.join("report.html");
    std::fs::write(&path, html).with_context(|| path.display().to_string())
}

fn loss_plot(train: &[(usize, f64)], eval: &[(usize, f64)]) -> Result<String, String> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let max_step = train.iter().chain(eval).map(|(s, _)| *s).max().unwrap_or(1).max(1);
    let (lo, hi) = train
        .iter()
        .chain(eval)
        .map(|(_, l)| *l)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| (a.min(l), b.max(l)));
    let (lo, hi) = if lo.is_finite() { (lo.min(hi) * 0.95, hi * 1.05 + 1e-9) } else { (0.0, 1.0) };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..max_step as f64, lo..hi)
            .map_err(|x| e(&x))?;
        chart.configure_mesh().x_desc("step").y_desc("cross-entropy").draw().map_err(|x| e(&x))?;
        let blue = RGBColor(0x25, 0x63, 0xeb);
        let red = RGBColor(0xdc, 0x26, 0x26);
        chart
            .draw_series(LineSeries::new(train.iter().map(|(s, l)| (*s as f64, *l)), blue.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("train")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue));
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval.iter().map(|(s, l)| (*s as f64, *l)), red.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label("validation")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], red));
        }
        chart.configure_series_labels().border_style(BLACK).draw().map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(buf)
}

/// Folds the adapter in `adapters` into `model`'s weights and writes the checkpoint to `out`
/// in its published layout ([`mmloop_models::adapter::merge_checkpoint`]).
pub async fn merge(
    model: &str,
    revision: &str,
    adapters: &Path,
    out: &Path,
    dtype: Option<mmloop_models::DType>,
) -> anyhow::Result<mmloop_models::adapter::MergeReport> {
    let checkpoint = Checkpoint::locate(model, revision).await?;
    let (adapters, out) = (adapters.to_path_buf(), out.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let adapter = PeftAdapter::read(&adapters).map_err(|e| anyhow::anyhow!("{e}"))?;
        mmloop_models::adapter::merge_checkpoint(&checkpoint.dir, &adapter, &out, dtype)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
    .context("the merge thread panicked")?
}

/// Rank, alpha and DoRA of an adapter folder (for checking flags against it).
pub fn adapter_settings(dir: &Path) -> anyhow::Result<(usize, f64, bool)> {
    let a = PeftAdapter::read(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((a.config.r, a.config.lora_alpha, a.config.use_dora))
}

/// Finds the model (folder or hub id) and trains on `data` off the async runtime.
pub async fn sft(
    data: Vec<FileQuestion>,
    opts: SftOptions,
    progress: Arc<dyn SftProgress>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SftReport> {
    let checkpoint = Checkpoint::locate(&opts.model, &opts.revision).await?;
    tokio::task::spawn_blocking(move || train(&checkpoint.dir, &checkpoint.resolved, &data, &opts, &*progress, &stop))
        .await
        .context("the training thread panicked")?
}

/// [`sft`] on a committed version's trusted labels, recorded in the project: a `train` run
/// (audited) with the version id, split, model, every argument, the per-step losses, the
/// validation results and the checkpoints.
#[allow(clippy::too_many_arguments)]
pub async fn sft_project(
    store: &Store,
    version: &str,
    split: Option<&str>,
    system: Option<&str>,
    opts: SftOptions,
    actor: &str,
    progress: Arc<dyn SftProgress>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(SftReport, i64)> {
    let (data, v) = project_examples(store, version, split, system).await?;
    let config = json!({
        "version": v.name(),
        "version_id": v.id.to_hex(),
        "split": split,
        "examples": data.len(),
        "model": opts.model,
        "revision": opts.revision,
        "output_dir": opts.output_dir.display().to_string(),
        "args": opts.args_json,
    });
    let run = store.start_run_on("train", actor, config, Some(v.id.to_hex())).await?;
    let result = sft(data, opts, progress, stop).await;
    match &result {
        Ok(r) => {
            let mut summary = r.summary();
            if let Some(dir) = &r.last_checkpoint {
                let weights = dir.join("adapter_model.safetensors");
                if let Ok(bytes) = std::fs::read(&weights) {
                    summary["adapter_sha256"] = json!(mmloop_core::Digest::of(&bytes).to_hex());
                }
            }
            store.finish_run(run, actor, r.status.unwrap_or(RunStatus::Done), summary).await?;
        }
        Err(e) => {
            store.finish_run(run, actor, RunStatus::Failed, json!({"error": format!("{e:#}")})).await?;
        }
    }
    Ok((result?, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_cuts_epochs_into_accumulated_steps() {
        let mut o = SftOptions::new("m", "out");
        o.per_device_train_batch_size = 2;
        o.gradient_accumulation_steps = 2;
        o.num_train_epochs = 2.0;
        o.train_dataloader_shuffle = false;
        // 5 examples: micro-batches [0,1] [2,3] [4]; steps [[0,1],[2,3]] and [[4]] per epoch.
        let p = plan(5, &o);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(p[1], vec![vec![4]]);
        assert_eq!(p[2], p[0]);
        o.max_steps = Some(3);
        assert_eq!(plan(5, &o).len(), 3);
        o.train_dataloader_shuffle = true;
        let (a, b) = (plan(5, &o), plan(5, &o));
        assert_eq!(a, b, "the order is a function of the seed");
        let mut seen: Vec<usize> = a[..2].iter().flatten().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4], "an epoch sees every example once");
    }

    #[test]
    fn times_read_as_ms_swift_writes_them() {
        assert_eq!(clock(33.2), "33s");
        assert_eq!(clock(125.0), "2m 5s");
        assert_eq!(clock(3723.0), "1h 2m 3s");
    }
}
