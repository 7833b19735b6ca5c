//! `mmloop eval`: reads predictions and references (a file, or a project version), scores
//! them through `mmloop-eval`, writes `metrics.json` and `report.html`, and prints a short
//! table. Thin: the reading, scoring and report live in `mmloop-eval`.

use std::path::Path;

use anyhow::{Context, bail};
use mmloop_eval::evaluate::MeteorJar;
use mmloop_eval::report::{ReportOptions, terminal_table, write_outputs};
use mmloop_eval::{
    EvalOptions, EvalTask, Metric, Predictions, RefOptions, References, evaluate, read_predictions, read_references,
};
use mmloop_metrics::compare::BootstrapOptions;
use mmloop_store::{ExportFilter, Store, StoreError, VersionSpec};

use std::sync::Arc;

use mmloop_core::ImageSource;
use mmloop_engine::{Annotator, AnnotatorOptions, Backend, GenOverrides, GenParams, RuleSet, RulesConfig};
use mmloop_pipeline::infer::{FileInfer, FileQuestion, ImageIn, InferProgress, Question, infer_file};

use crate::cli::EvalArgs;
use crate::ui;

pub async fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let task: Option<EvalTask> = a.task.as_deref().map(str::parse).transpose()?;
    let vqa_variant = a.vqa_variant.parse().map_err(|e: mmloop_metrics::vqa::VqaError| anyhow::anyhow!("{e}"))?;
    let metrics = a.metrics.as_deref().map(Metric::parse_list).transpose()?;
    let opts = EvalOptions {
        metrics,
        vqa_variant,
        allow_missing: a.allow_missing,
        meteor: a.meteor_jar.clone().map_or(MeteorJar::Find, MeteorJar::Path),
        bootstrap: BootstrapOptions { resamples: a.resamples, alpha: 0.05, seed: a.seed },
        ece_bins: a.ece_bins,
    };
    if a.project.is_some() && a.references.is_some() {
        bail!("name the project once: as the first argument or as --references, not both");
    }
    let references = a.project.as_ref().or(a.references.as_ref());
    if let Some(model) = &a.model {
        return eval_model(&a, model, references, task, &opts).await;
    }
    let Some(predictions) = a.predictions.as_ref() else {
        bail!(
            "nothing to score
  hint: pass --predictions FILE, or --model M (with a project) to answer its questions first"
        );
    };
    if a.project.is_some() {
        bail!("a project as the first argument goes with --model; with --predictions pass it as --references");
    }
    let (preds, refs) = match &a.references {
        Some(r) if r.join("mmloop.toml").is_file() => {
            (read_predictions(predictions)?, Some(project_references(r, &a, task).await?))
        }
        Some(r) => {
            let ropts = RefOptions { images_dir: a.images_dir.clone(), annotations: a.annotations.clone(), task };
            // Both files are read in full before anything is scored: one thread each.
            tokio::task::block_in_place(|| {
                std::thread::scope(|s| {
                    let refs = s.spawn(|| read_references(r, &ropts));
                    let preds = read_predictions(predictions);
                    let refs = refs.join().expect("reference reader panicked");
                    anyhow::Ok((preds?, Some(refs?)))
                })
            })?
        }
        None => (read_predictions(predictions)?, None),
    };
    let refs = match refs {
        Some(r) => r,
        None => match preds.inline_references() {
            Some(mut r) => {
                if let Some(t) = task {
                    r.task = t;
                }
                r
            }
            None => bail!(
                "{} does not carry its references\n  hint: pass --references (a COCO/VQAv2/TextVQA/JSONL file, or a project folder)",
                predictions.display()
            ),
        },
    };
    let compare = a.compare.as_deref().map(read_predictions).transpose()?;
    finish(&a, preds, refs, compare, &opts)
}

/// Scores, writes metrics.json and report.html, prints the table.
fn finish(
    a: &EvalArgs,
    preds: Predictions,
    refs: References,
    compare: Option<Predictions>,
    opts: &EvalOptions,
) -> anyhow::Result<()> {
    let ev = tokio::task::block_in_place(|| evaluate(&preds, &refs, compare.as_ref(), opts))?;
    let report = ReportOptions { worst: a.worst, ..ReportOptions::default() };
    let (json_path, html_path) = tokio::task::block_in_place(|| write_outputs(&ev, &a.output, &report))?;
    if a.json {
        let mut v = serde_json::to_value(&ev)?;
        if let Some(o) = v.as_object_mut() {
            o.shift_remove("items");
        }
        return ui::json(&v);
    }
    print!("{}", terminal_table(&ev));
    for u in &ev.unavailable {
        ui::warn(format!("{} unavailable: {}", u.metric, u.reason));
    }
    for n in &ev.notes {
        ui::warn(n);
    }
    if let Some(first) = ev.missing.empty_predictions.first() {
        ui::warn(format!(
            "{} empty answers scored as given (wrong, as the official scripts score them); first: id {} at {}",
            ev.missing.empty_predictions.len(),
            first.id,
            first.at
        ));
    }
    ui::ok(format!("wrote {} and {}", json_path.display(), html_path.display()));
    // Freeing a large evaluation item by item takes a tenth of a second; the process ends here.
    std::mem::forget((ev, preds, refs, compare));
    Ok(())
}

/// The truth labels of a project version (trusted labels only), as references.
async fn project_references(dir: &Path, a: &EvalArgs, task: Option<EvalTask>) -> anyhow::Result<References> {
    let store = Store::open(dir).await?;
    let version: VersionSpec = a.version.parse().expect("infallible");
    let filter = ExportFilter { split: a.split.clone(), include_unreviewed: false, task: None, candidates: false };
    let (info, rx) = match store.export(version, filter).await {
        Err(StoreError::NoVersions) => bail!(
            "{} has no committed version\n  hint: run `mmloop commit {} -m \"...\"` first, or pass --version working",
            dir.display(),
            dir.display()
        ),
        other => other?,
    };
    let records = tokio::task::block_in_place(|| rx.into_iter().collect::<Result<Vec<_>, _>>())?;
    store.close();
    if records.is_empty() {
        bail!(
            "no labelled items in {}{}\n  hint: only trusted labels (imported, accepted, edited) are references; check --version and --split",
            dir.display(),
            a.split.as_deref().map(|s| format!(" split {s}")).unwrap_or_default()
        );
    }
    let version = info.version.as_ref().map(|v| format!("{} ({})", v.name(), v.id.short()));
    let source = format!(
        "{}@{}{}",
        dir.display(),
        version.clone().unwrap_or_else(|| "working".into()),
        a.split.as_deref().map(|s| format!(" split {s}")).unwrap_or_default()
    );
    let mut refs = References::from_records(records, dir, task, source, "project")
        .with_context(|| format!("reading the labels of {}", dir.display()))?;
    refs.version = Some(version.unwrap_or_else(|| "working".into()));
    Ok(refs)
}

/// `--model`: answers the project's reference questions (greedy) with the model and its
/// adapter, and with `--compare_base` with the base model too, then scores them.
async fn eval_model(
    a: &EvalArgs,
    model: &str,
    references: Option<&std::path::PathBuf>,
    task: Option<EvalTask>,
    opts: &EvalOptions,
) -> anyhow::Result<()> {
    let Some(dir) = references.filter(|r| r.join("mmloop.toml").is_file()) else {
        bail!(
            "--model answers a project's questions\n  hint: name the project (`mmloop eval DIR --model M --version v3 --split test`)"
        );
    };
    if a.predictions.is_some() {
        bail!("--model answers the questions itself; leave out --predictions");
    }
    let refs = project_references(dir, a, task).await?;
    let caption_prompt = "Describe this image.";
    let questions: Vec<FileQuestion> = refs
        .items
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let images = r
                .image
                .iter()
                .map(|s| match s {
                    ImageSource::Path(p) => ImageIn::Path(p.into()),
                    other => ImageIn::Unusable { name: other.describe(), why: "not a file".into() },
                })
                .collect();
            FileQuestion {
                id: r.id.clone(),
                question: Question {
                    key: i as u64,
                    system: None,
                    context: Vec::new(),
                    text: r.question.clone().unwrap_or_else(|| caption_prompt.into()),
                    images,
                    is_caption: refs.task == EvalTask::Caption,
                    answer_type: r.answer_type.clone(),
                },
                label: None,
                image_refs: Vec::new(),
            }
        })
        .collect();
    std::fs::create_dir_all(&a.output).with_context(|| a.output.display().to_string())?;
    let out = a.output.join("predictions.jsonl");
    answer_all(a, model, a.adapters.as_deref(), questions.clone(), &out).await?;
    let preds = read_predictions(&out)?;
    let compare = if a.compare_base {
        let base = a.output.join("predictions_base.jsonl");
        answer_all(a, model, None, questions, &base).await?;
        Some(read_predictions(&base)?)
    } else {
        None
    };
    finish(a, preds, refs, compare, opts)
}

/// Greedy answers of `model` (with `adapter`) to `questions`, written to `out`.
async fn answer_all(
    a: &EvalArgs,
    model: &str,
    adapter: Option<&Path>,
    questions: Vec<FileQuestion>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut o = crate::infer_cmd::engine_options(model, &a.model_revision, "cpu", "auto", None, 16)?;
    o.adapters = adapter.map(|p| vec![("adapter".to_string(), p.to_path_buf())]).unwrap_or_default();
    let backend: Arc<dyn Backend> = Arc::new(crate::infer_cmd::load_embedded(o).await?);
    let overrides =
        GenOverrides { temperature: Some(0.0), max_new_tokens: a.max_new_tokens, ..GenOverrides::default() };
    let params = GenParams::resolve(&backend.defaults(), &overrides)?;
    let annotator =
        Arc::new(Annotator::new(backend, RuleSet::new(RulesConfig::default())?, AnnotatorOptions::new(params)));
    let what = match adapter {
        Some(p) => format!("answering with {}", p.display()),
        None => "answering with the base model".into(),
    };
    let pb = ui::bar(&what, questions.len() as u64);
    let progress = Progress(pb.clone());
    let opts = FileInfer { output: out.to_path_buf(), overwrite: true, retry_errors: false };
    let report = infer_file(annotator, questions, &opts, &progress, std::future::pending()).await?;
    pb.finish_and_clear();
    if report.failed > 0 {
        ui::warn(format!("{} questions failed (their rows in {} say why)", report.failed, out.display()));
    }
    Ok(())
}

struct Progress(indicatif::ProgressBar);

impl InferProgress for Progress {
    fn advance(&self, answered: u64, failed: u64) {
        self.0.set_position(answered + failed);
    }
}
