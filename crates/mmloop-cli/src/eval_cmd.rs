//! `mmloop eval`: reads predictions and references (a file, or a project version), scores
//! them through `mmloop-eval`, writes `metrics.json` and `report.html`, and prints a short
//! table. Thin: the reading, scoring and report live in `mmloop-eval`.

use std::path::Path;

use anyhow::{Context, bail};
use mmloop_eval::evaluate::MeteorJar;
use mmloop_eval::report::{ReportOptions, terminal_table, write_outputs};
use mmloop_eval::{EvalOptions, EvalTask, Metric, RefOptions, References, evaluate, read_predictions, read_references};
use mmloop_metrics::compare::BootstrapOptions;
use mmloop_store::{ExportFilter, Store, StoreError, VersionSpec};

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
    let (preds, refs) = match &a.references {
        Some(r) if r.join("mmloop.toml").is_file() => {
            (read_predictions(&a.predictions)?, Some(project_references(r, &a, task).await?))
        }
        Some(r) => {
            let ropts = RefOptions { images_dir: a.images_dir.clone(), annotations: a.annotations.clone(), task };
            // Both files are read in full before anything is scored: one thread each.
            tokio::task::block_in_place(|| {
                std::thread::scope(|s| {
                    let refs = s.spawn(|| read_references(r, &ropts));
                    let preds = read_predictions(&a.predictions);
                    let refs = refs.join().expect("reference reader panicked");
                    anyhow::Ok((preds?, Some(refs?)))
                })
            })?
        }
        None => (read_predictions(&a.predictions)?, None),
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
                a.predictions.display()
            ),
        },
    };
    let compare = a.compare.as_deref().map(read_predictions).transpose()?;
    let ev = tokio::task::block_in_place(|| evaluate(&preds, &refs, compare.as_ref(), &opts))?;
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
