//! `mmloop infer`: picks the backend (embedded engine or `--api` server), settles the
//! generation settings and rules, and runs the project or file pipeline with a progress
//! bar (images/s and ETA).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use console::style;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use mmloop_engine::openai::{OpenAiBackend, OpenAiOptions};
use mmloop_engine::{Annotator, AnnotatorOptions, Backend, GenOverrides, GenParams, RuleSet, RulesConfig};
use mmloop_pipeline::infer::{self, FileInfer, InferProgress, InferReport, ProjectInfer};
use mmloop_store::{PendingFilter, Store};
use serde_json::json;

use crate::cli::InferArgs;
use crate::ui;

struct Bar(ProgressBar);

impl InferProgress for Bar {
    fn start(&self, total: u64, already: u64) {
        self.0.set_length(total);
        if already > 0 {
            self.0.println(format!("{} already answered with these settings: skipped", ui::count(already)));
        }
    }
    fn advance(&self, answered: u64, failed: u64) {
        self.0.set_position(answered + failed);
        if failed > 0 {
            self.0.set_message(format!("answering ({failed} failed)"));
        }
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/{human_len} {rate} eta {eta}")
            .expect("valid template")
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.2} images/s", s.per_sec());
            })
            .progress_chars("=> "),
    );
    pb.set_message("answering");
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn rules_from(table: Option<&toml::Value>, origin: &str) -> anyhow::Result<RulesConfig> {
    match table {
        None => Ok(RulesConfig::default()),
        Some(t) => t.clone().try_into().with_context(|| format!("{origin}: bad [rules] section")),
    }
}

async fn backend(a: &InferArgs) -> anyhow::Result<Arc<dyn Backend>> {
    let wants_server = a
        .infer_backend
        .as_deref()
        .map(|b| b.to_ascii_lowercase())
        .filter(|b| matches!(b.as_str(), "vllm" | "sglang" | "lmdeploy" | "openai" | "api" | "server"));
    if let Some(b) = &a.infer_backend {
        let known =
            ["vllm", "sglang", "lmdeploy", "openai", "api", "server", "transformers", "pt", "mmloop", "embedded"];
        if !known.contains(&b.to_ascii_lowercase().as_str()) {
            bail!(
                "unknown --infer_backend {b:?}\n  hint: transformers/pt/mmloop (embedded engine) or vllm/sglang/lmdeploy/openai (with --api URL)"
            );
        }
    }
    if let Some(url) = &a.api {
        let mut o = OpenAiOptions::new(url.clone(), a.model.clone().unwrap_or_default());
        o.api_key = a.api_key.clone();
        o.concurrency = a.concurrency;
        o.timeout = Duration::from_secs(a.timeout.max(1));
        o.max_retries = a.retries;
        o.logprobs = a.logprobs;
        let b = OpenAiBackend::connect(o).await?;
        return Ok(Arc::new(b));
    }
    if let Some(b) = wants_server {
        bail!(
            "--infer_backend {b} answers through a server\n  hint: start it (e.g. `vllm serve MODEL`) and pass --api http://127.0.0.1:8000/v1"
        );
    }
    embedded(a).await
}

async fn embedded(a: &InferArgs) -> anyhow::Result<Arc<dyn Backend>> {
    let Some(model) = a.model.clone() else {
        bail!(
            "which model?\n  hint: pass --model with a Hugging Face repo id (e.g. HuggingFaceTB/SmolVLM-256M-Instruct) or a checkpoint folder, or --api URL for a server"
        );
    };
    let mut o = engine_options(&model, &a.revision, &a.device, &a.dtype, a.quant.clone(), a.max_batch_size)?;
    o.merge_adapters = a.merge_lora;
    o.adapters = adapter_list(&a.adapters);
    Ok(Arc::new(load_embedded(o).await?))
}

/// `--adapters`: `name=DIR` names an adapter; a bare folder is named `adapter<i>`.
pub(crate) fn adapter_list(given: &[String]) -> Vec<(String, std::path::PathBuf)> {
    given
        .iter()
        .enumerate()
        .map(|(i, dir)| match dir.split_once('=') {
            Some((n, p)) if !n.is_empty() && !std::path::Path::new(dir).exists() => (n.to_string(), p.into()),
            _ => (format!("adapter{i}"), std::path::PathBuf::from(dir)),
        })
        .collect()
}

/// Loads the embedded engine with a spinner.
pub(crate) async fn load_embedded(
    o: mmloop_engine::embedded::EmbeddedOptions,
) -> anyhow::Result<mmloop_engine::embedded::EmbeddedBackend> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("loading {}", o.model));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let device = format!("{:?}", o.device).to_lowercase();
    let b = mmloop_engine::embedded::EmbeddedBackend::load(o).await;
    spinner.finish_and_clear();
    let b = b?;
    ui::ok(format!("loaded {} ({}, {device})", b.info().resolved, b.info().family.as_deref().unwrap_or("?")));
    Ok(b)
}

/// The `[rules]` of a TOML file (`--rules`).
pub(crate) fn rules_file(f: &std::path::Path) -> anyhow::Result<RulesConfig> {
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    let t: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not TOML", f.display()))?;
    rules_from(t.get("rules"), &f.display().to_string())
}

fn overrides(a: &InferArgs) -> GenOverrides {
    GenOverrides {
        max_new_tokens: a.max_new_tokens,
        min_new_tokens: a.min_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        repetition_penalty: a.repetition_penalty,
        top_logprobs: a.top_logprobs,
        seed: a.seed,
    }
}

pub async fn infer(a: InferArgs, actor: &str) -> anyhow::Result<()> {
    let file_mode = !a.images.is_empty() || a.dataset.is_some();
    if file_mode && a.project.is_some() {
        bail!(
            "answer either a project or files, not both\n  hint: import the files first (`mmloop import`), or leave out the project for file mode"
        );
    }
    if !file_mode && a.project.is_none() {
        bail!(
            "nothing to answer\n  hint: name a project (`mmloop infer my-project --model ...`) or give --images/--dataset with --output"
        );
    }
    if !a.images.is_empty() && a.dataset.is_some() {
        bail!("--images and --dataset do not go together: pick one");
    }
    let confidence = a.confidence.parse()?;
    // Settle what can be checked before a long model load.
    let store = match &a.project {
        Some(p) => Some(Store::open(p).await?),
        None => None,
    };
    let rules = match (&store, &a.rules) {
        (Some(_), Some(_)) => bail!("--rules is for file mode; a project's rules are in its mmloop.toml"),
        (Some(s), None) => rules_from(s.config().raw.get("rules"), &s.paths().config.display().to_string())?,
        (None, Some(f)) => rules_file(f)?,
        (None, None) => RulesConfig::default(),
    };
    let rules = RuleSet::new(rules)?;
    let task: Option<mmloop_core::Task> = a.task.as_deref().map(str::parse).transpose()?;
    let questions = if file_mode {
        let Some(out) = &a.output else {
            bail!("file mode writes a JSONL file\n  hint: add --output answers.jsonl (ms-swift: --result_path)");
        };
        if out.is_dir() {
            bail!("--output {} is a folder; name a .jsonl file", out.display());
        }
        Some(if a.images.is_empty() {
            let file = a.dataset.as_ref().expect("checked");
            let read = mmloop_formats::ReadOptions {
                task,
                question: a.prompt.clone(),
                prompt: a.prompt.clone(),
                images_dir: a.images_dir.clone(),
                annotations: None,
            };
            let format = a.format.as_deref().map(str::parse).transpose()?;
            infer::dataset_questions(file, format, &read, a.system.as_deref())?
        } else {
            let Some(prompt) = &a.prompt else {
                bail!("--images needs the question to ask\n  hint: add --prompt \"What is in this picture?\"");
            };
            let images = infer::expand_images(&a.images)?;
            infer::image_questions(&images, prompt, a.system.as_deref(), task == Some(mmloop_core::Task::Caption))
        })
    } else {
        None
    };

    let backend = backend(&a).await?;
    let params = GenParams::resolve(&backend.defaults(), &overrides(&a))?;
    let mut opts = AnnotatorOptions::new(params);
    opts.samples = a.samples;
    opts.sample_temperature = a.sample_temperature;
    opts.confidence = confidence;
    let annotator = Arc::new(Annotator::new(backend, rules, opts));
    let pb = bar();
    let progress = Bar(pb);
    let report = match (store, questions) {
        (Some(store), _) => {
            let filter = PendingFilter { all: a.all, split: a.split.clone(), task, retry_errors: a.retry_errors };
            let config = json!({
                "command": mmloop_core::redact::command_line(&std::env::args().collect::<Vec<_>>()),
                "model": a.model,
                "api": a.api,
                "system": a.system,
                "filter": {"all": a.all, "split": a.split, "task": a.task, "retry_errors": a.retry_errors, "limit": a.limit},
                "generation": annotator.options().params,
                "samples": a.samples,
                "confidence": a.confidence,
                "device": a.device,
                "dtype": a.dtype,
                "quant": a.quant,
                "adapters": a.adapters,
                "merge_lora": a.merge_lora,
                "max_batch_size": a.max_batch_size,
                "concurrency": a.concurrency,
            });
            let opts =
                ProjectInfer { filter, limit: a.limit, system: a.system.clone(), actor: actor.to_string(), config };
            let r = infer::infer_project(&store, annotator, opts, &progress, ctrl_c()).await;
            store.close();
            r?
        }
        (None, Some(questions)) => {
            let opts = FileInfer {
                output: a.output.clone().expect("checked"),
                overwrite: a.overwrite,
                retry_errors: a.retry_errors,
            };
            infer::infer_file(annotator, questions, &opts, &progress, ctrl_c()).await?
        }
        (None, None) => unreachable!("one mode is chosen above"),
    };
    if a.json {
        ui::json(&report)?;
    } else {
        print_report(&report, a.project.as_deref());
    }
    if let Some(why) = &report.stopped {
        bail!(
            "the run stopped early: {why}\n  hint: fix the cause and run the same command again: finished questions are kept"
        );
    }
    Ok(())
}

/// Resolves at Ctrl-C, with the reason a stopped run records.
async fn ctrl_c() -> String {
    match tokio::signal::ctrl_c().await {
        Ok(()) => "interrupted (Ctrl-C)".into(),
        // No signal handler: never interrupt.
        Err(_) => std::future::pending().await,
    }
}

fn print_report(r: &InferReport, project: Option<&Path>) {
    let mut parts = vec![format!("{} answered", ui::count(r.answered))];
    if r.failed > 0 {
        parts.push(format!("{} failed", ui::count(r.failed)));
    }
    if r.already_done > 0 {
        parts.push(format!("{} already done", ui::count(r.already_done)));
    }
    parts.push(format!("{} flagged", ui::count(r.flagged)));
    if let Some(c) = r.mean_confidence {
        parts.push(format!("mean confidence {c:.2}"));
    }
    parts.push(format!("{:.1}s, {:.2} images/s", r.seconds, r.per_second));
    ui::ok(format!(
        "{} with {}: {}",
        match project {
            Some(p) => format!("pre-annotated {}", p.display()),
            None => "answered".to_string(),
        },
        r.model,
        parts.join(", ")
    ));
    if !r.flags.is_empty() {
        let f: Vec<String> = r.flags.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("  flags: {}", f.join(", "));
    }
    for e in &r.errors {
        ui::warn(e.lines().next().unwrap_or(e));
    }
    if let Some(o) = &r.output {
        eprintln!("  wrote {}", style(o.display()).bold());
    } else if let (Some(p), Some(run)) = (project, r.run_id) {
        eprintln!("  run {run}; review the riskiest first: {}", style(format!("mmloop review {}", p.display())).bold());
    }
}

/// The embedded engine's options from the model flags `infer` and `serve` share.
pub(crate) fn engine_options(
    model: &str,
    revision: &str,
    device: &str,
    dtype: &str,
    quant: Option<String>,
    max_batch: usize,
) -> anyhow::Result<mmloop_engine::embedded::EmbeddedOptions> {
    let mut o = mmloop_engine::embedded::EmbeddedOptions::new(model.to_string());
    o.revision = revision.to_string();
    o.device = device.parse()?;
    o.dtype = dtype.parse()?;
    o.quant = quant;
    o.max_batch = max_batch;
    Ok(o)
}
