//! Scoring a predictions file against references: matching ids, picking metrics,
//! running them through `mmloop-metrics` (and the METEOR jar), calibration when the
//! predictions carry confidences, and the paired bootstrap against a second predictions
//! file. The result, [`Evaluation`], is what `metrics.json` holds.
//!
//! Scores keep the scale the reference implementation reports (official VQA accuracy in
//! percent rounded to 2 decimals, BLEU/CIDEr as pycocoevalcap prints them); per-item
//! scores are on the reference's per-item scale (VQA accuracy in [0, 1], per-image BLEU-4,
//! CIDEr-D, ...). This module reads no files except through the METEOR jar.
//!
//! One module per job: [`metric`] (what can be asked for), [`schema`] (what `metrics.json`
//! holds), `align` (ids), `score` (the metrics), `calibration`, `compare` (the A/B gate);
//! [`evaluate`] ties them together.

mod align;
mod calibration;
mod compare;
pub mod metric;
pub mod schema;
mod score;

use std::collections::BTreeMap;
use std::path::PathBuf;

use mmloop_metrics::compare::BootstrapOptions;
use mmloop_metrics::text::evaluate_squad;
use mmloop_metrics::vqa::VqaVariant;

pub use metric::{Metric, default_metrics};
pub(crate) use schema::source_of;
pub use schema::{
    Calibration, CompareRow, Comparison, Evaluation, Group, ItemResult, MetricResult, Missed, Missing, Part,
    ReliabilityBin, SourceInfo, Unavailable, WORST_MAX, primary_metric, worst_items,
};

use crate::error::EvalError;
use crate::predictions::Predictions;
use crate::references::{EvalTask, References};

/// Where METEOR's jar comes from.
#[derive(Debug, Clone, Default)]
pub enum MeteorJar {
    /// Ask the `python3` on PATH where pycocoevalcap is installed.
    #[default]
    Find,
    /// An explicit `meteor-1.5.jar`.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// `None`: the task's defaults.
    pub metrics: Option<Vec<Metric>>,
    pub vqa_variant: VqaVariant,
    /// Score what matches and report the rest instead of failing.
    pub allow_missing: bool,
    pub meteor: MeteorJar,
    pub bootstrap: BootstrapOptions,
    /// Bins for ECE and the reliability diagram.
    pub ece_bins: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            metrics: None,
            vqa_variant: VqaVariant::Official,
            allow_missing: false,
            meteor: MeteorJar::Find,
            bootstrap: BootstrapOptions { resamples: 1000, alpha: 0.05, seed: 0 },
            ece_bins: 15,
        }
    }
}

/// Scores `preds` against `refs`; with `compare`, also scores a second predictions file and
/// runs the paired bootstrap on every metric's per-item scores.
pub fn evaluate(
    preds: &Predictions,
    refs: &References,
    compare: Option<&Predictions>,
    opts: &EvalOptions,
) -> Result<Evaluation, EvalError> {
    let task = match (refs.format.as_str(), preds.task) {
        ("rows", Some(t)) => t,
        _ => refs.task,
    };
    let metrics = match &opts.metrics {
        Some(m) if !m.is_empty() => m.clone(),
        _ => default_metrics(task, refs),
    };
    for m in &metrics {
        if !m.applies_to(task) {
            return Err(EvalError::usage(
                format!("metric `{}` does not apply to {} references ({})", m.name(), task.name(), refs.source),
                format!(
                    "metrics for {}: {}",
                    task.name(),
                    Metric::ALL.iter().filter(|x| x.applies_to(task)).map(|x| x.name()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let a = align::align(preds, refs, opts.allow_missing)?;
    let mut scored = score::score(task, &a.pairs, &metrics, opts)?;
    let mut notes = std::mem::take(&mut scored.notes);

    // Calibration whenever every matched prediction has a confidence.
    let with_conf = a.pairs.iter().filter(|(_, p)| p.confidence.is_some()).count();
    let mut calib = None;
    if task != EvalTask::Caption && with_conf == a.pairs.len() {
        let correct = match scored.correct.clone() {
            Some(c) => c,
            None => evaluate_squad(a.pairs.iter().map(|(r, p)| (p.answer.as_str(), r.answers.as_slice())))
                .exact_match
                .iter()
                .map(|&x| x == 1.0)
                .collect(),
        };
        let mut c = calibration::calibration(&a.pairs, &correct, opts.ece_bins)?;
        c.correct_when = calibration::correct_when(task).to_string();
        // Named metrics decide; by default both come whenever confidences do.
        let named = opts.metrics.as_ref().is_some_and(|m| !m.is_empty());
        if !named || metrics.contains(&Metric::Ece) {
            scored.metrics.push(MetricResult {
                metric: Metric::Ece,
                value: c.ece_equal_width,
                unit: "fraction",
                reference: format!(
                    "ECE: {} equal-width bins (scikit-learn calibration_curve binning), Guo et al. 2017; correct = {}",
                    opts.ece_bins,
                    calibration::correct_when(task)
                ),
                parts: vec![Part { name: "ece_equal_mass".into(), value: c.ece_equal_mass }],
                groups: Vec::new(),
                per_item: Vec::new(),
                item_parts: Vec::new(),
            });
        }
        if !named || metrics.contains(&Metric::Brier) {
            scored.metrics.push(calibration::brier_metric(&c.confidence, &correct, c.brier));
        }
        calib = Some(c);
    } else {
        for m in [Metric::Ece, Metric::Brier] {
            if metrics.contains(&m) {
                let reason = if task == EvalTask::Caption {
                    "calibration is not defined for captions".to_string()
                } else {
                    format!(
                        "{} of {} predictions have no confidence; write `confidence` in [0, 1] on every row",
                        a.pairs.len() - with_conf,
                        a.pairs.len()
                    )
                };
                scored.unavailable.push(Unavailable { metric: m, reason });
            }
        }
        if with_conf > 0 && with_conf < a.pairs.len() {
            notes.push(format!(
                "calibration skipped: only {with_conf} of {} predictions have a confidence",
                a.pairs.len()
            ));
        }
    }

    // The offline A/B test.
    let comparison = match compare {
        Some(b) => Some(compare::compare_with(task, &a, b, refs, &metrics, &scored.metrics, opts)?),
        None => None,
    };

    let items = a
        .pairs
        .iter()
        .enumerate()
        .map(|(i, (r, p))| {
            let mut scores = BTreeMap::new();
            for m in &scored.metrics {
                if let Some(&v) = m.per_item.get(i) {
                    scores.insert(m.metric.name(), v);
                }
                for (name, values) in &m.item_parts {
                    if let Some(&v) = values.get(i) {
                        scores.insert(*name, v);
                    }
                }
            }
            ItemResult {
                id: r.id.clone(),
                question: r.question.clone(),
                prediction: p.answer.clone(),
                confidence: p.confidence,
                scores,
                question_type: r.question_type.clone(),
                answer_type: r.answer_type.clone(),
                image: r.image.as_ref().map(|s| match s {
                    mmloop_core::ImageSource::Bytes(_) => "inline".to_string(),
                    other => other.describe(),
                }),
                line: p.at.line,
            }
        })
        .collect();
    Ok(Evaluation {
        tool: format!("mmloop {}", env!("CARGO_PKG_VERSION")),
        task,
        predictions: source_of(preds),
        references: SourceInfo {
            file: refs.source.clone(),
            format: refs.format.clone(),
            model: None,
            version: refs.version.clone(),
            count: refs.items.len(),
        },
        scored: a.pairs.len(),
        missing: a.missing,
        metrics: scored.metrics,
        unavailable: scored.unavailable,
        notes,
        calibration: calib,
        comparison,
        items,
        worst_refs: Vec::new(),
    }
    .with_worst_refs(&a.pairs))
}
