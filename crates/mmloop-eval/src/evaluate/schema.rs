//! What `metrics.json` holds: the [`Evaluation`] and its parts, and the items the report
//! lists as the lowest-scoring.

use std::collections::BTreeMap;

use mmloop_metrics::compare::McNemar;
use serde::Serialize;

use super::Metric;
use crate::predictions::{Prediction, Predictions};
use crate::references::{EvalTask, Reference};

/// A part of a metric (BLEU-1..4, MME perception/cognition).
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: String,
    pub value: f64,
}

/// A breakdown entry: a question type, answer type, category or subtask.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// `question_type`, `answer_type`, `category`, `mme_task`.
    pub kind: String,
    pub name: String,
    pub value: f64,
    pub count: usize,
}

/// One metric's corpus score as its reference reports it.
#[derive(Debug, Clone, Serialize)]
pub struct MetricResult {
    /// Written as `name` (`"vqa_acc"`).
    #[serde(rename = "name")]
    pub metric: Metric,
    /// The headline number.
    pub value: f64,
    /// `percent`, `fraction` or `points`.
    pub unit: &'static str,
    /// Which reference implementation (and variant) this reproduces.
    pub reference: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Per matched item, in item order, on the reference's per-item scale.
    #[serde(skip)]
    pub per_item: Vec<f64>,
    /// More per-item scores under their own names (BLEU-1..4; the metric's own per-item score is BLEU-4).
    #[serde(skip)]
    pub item_parts: Vec<(&'static str, Vec<f64>)>,
}

impl MetricResult {
    /// A short name of the reference for tables.
    pub fn short_reference(&self) -> &str {
        self.reference.split(':').next().unwrap_or(&self.reference)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    pub metric: Metric,
    pub reason: String,
}

/// An id and where it was.
#[derive(Debug, Clone, Serialize)]
pub struct Missed {
    pub id: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Missing {
    pub references_without_prediction: Vec<Missed>,
    pub predictions_without_reference: Vec<Missed>,
    /// Scored as empty answers.
    pub empty_predictions: Vec<Missed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub file: String,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A project version, when the references come from a project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_confidence: Option<f64>,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// What counts as a correct answer for ECE and Brier.
    pub correct_when: String,
    pub bins: usize,
    pub ece_equal_width: f64,
    pub ece_equal_mass: f64,
    pub brier: f64,
    /// Equal-width bins.
    pub reliability: Vec<ReliabilityBin>,
    #[serde(skip)]
    pub confidence: Vec<f64>,
    #[serde(skip)]
    pub correct: Vec<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub metric: Metric,
    /// Means of the per-item scores over the common items.
    pub mean_a: f64,
    pub mean_b: f64,
    pub delta: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: f64,
    /// McNemar's exact test, for metrics scored right/wrong per item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcnemar: Option<McNemar>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub predictions_b: SourceInfo,
    /// B's corpus scores, as A's.
    pub metrics_b: Vec<MetricResult>,
    pub items: usize,
    pub method: String,
    pub resamples: usize,
    pub alpha: f64,
    pub seed: u64,
    pub rows: Vec<CompareRow>,
}

/// One scored item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    pub prediction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    pub scores: BTreeMap<&'static str, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_type: Option<String>,
    /// The image path (or `inline` for embedded bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The prediction's line in the predictions file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub tool: String,
    pub task: EvalTask,
    pub predictions: SourceInfo,
    pub references: SourceInfo,
    pub scored: usize,
    pub missing: Missing,
    pub metrics: Vec<MetricResult>,
    pub unavailable: Vec<Unavailable>,
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    pub items: Vec<ItemResult>,
    /// The references of the report's lowest-scoring items (answers, image, options), by
    /// item index: copying every reference would cost more than scoring VQA accuracy.
    #[serde(skip)]
    pub worst_refs: Vec<(usize, Reference)>,
}

pub(crate) fn source_of(p: &Predictions) -> SourceInfo {
    SourceInfo {
        file: p.file.display().to_string(),
        format: p.format.to_string(),
        model: p.model.clone(),
        version: None,
        count: p.items.len(),
    }
}

/// The most items the report can list as the lowest-scoring.
pub const WORST_MAX: usize = 100;

/// The metric the report ranks items by: CIDEr-D for captions (what caption work usually
/// ranks by), else the first metric with per-item scores (never Brier, lower is better).
pub fn primary_metric(metrics: &[MetricResult]) -> Option<&MetricResult> {
    let scored = |m: &&MetricResult| !m.per_item.is_empty() && !m.metric.lower_is_better();
    metrics.iter().filter(scored).find(|m| m.metric == Metric::Cider).or_else(|| metrics.iter().find(scored))
}

/// Indices of the lowest-scoring items by `m`, lowest first, ties in item order.
pub fn worst_items(m: &MetricResult, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..m.per_item.len()).collect();
    let n = n.min(order.len());
    if n == 0 {
        return Vec::new();
    }
    let key = |&i: &usize| (m.per_item[i], i);
    order.select_nth_unstable_by(n - 1, |a, b| key(a).0.total_cmp(&key(b).0).then(a.cmp(b)));
    order.truncate(n);
    order.sort_by(|a, b| key(a).0.total_cmp(&key(b).0).then(a.cmp(b)));
    order
}

impl Evaluation {
    pub(super) fn with_worst_refs(mut self, pairs: &[(&Reference, &Prediction)]) -> Self {
        if let Some(p) = primary_metric(&self.metrics) {
            self.worst_refs = worst_items(p, WORST_MAX).into_iter().map(|i| (i, pairs[i].0.clone())).collect();
        }
        self
    }
}
