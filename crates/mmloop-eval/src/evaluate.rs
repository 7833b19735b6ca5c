//! Scoring a predictions file against references: matching ids, picking metrics,
//! running them through `mmloop-metrics` (and the METEOR jar), calibration when the
//! predictions carry confidences, and the paired bootstrap against a second predictions
//! file. The result, [`Evaluation`], is what `metrics.json` holds.
//!
//! Scores keep the scale the reference implementation reports (official VQA accuracy in
//! percent rounded to 2 decimals, BLEU/CIDEr as pycocoevalcap prints them); per-item
//! scores are on the reference's per-item scale (VQA accuracy in [0, 1], per-image BLEU-4,
//! CIDEr-D, ...). This module reads no files except through the METEOR jar.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use mmloop_metrics::calibration::{Binning, brier_score, expected_calibration_error, reliability_bins};
use mmloop_metrics::choice::{
    ChoiceItem, MmeQuestion, choice_accuracy, circular_accuracy, mme_parse_answer, mme_scores,
};
use mmloop_metrics::coco::{CaptionImage, score_tokenized, tokenize};
use mmloop_metrics::compare::{BootstrapOptions, McNemar, mcnemar_exact, paired_bootstrap};
use mmloop_metrics::text::{ANLS_THRESHOLD, evaluate_anls, evaluate_squad};
use mmloop_metrics::vqa::{LmmsEvalTask, VqaQuestion, VqaVariant, evaluate_vqa};
use mmloop_metrics::{bleu, cider, rouge};
use serde::Serialize;

use crate::error::EvalError;
use crate::predictions::{Prediction, Predictions};
use crate::references::{EvalTask, Reference, References};

/// A metric the command line can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    VqaAcc,
    ExactMatch,
    F1,
    Anls,
    Bleu,
    Meteor,
    RougeL,
    Cider,
    McAcc,
    Mmbench,
    Mme,
    Ece,
    Brier,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::VqaAcc,
        Metric::ExactMatch,
        Metric::F1,
        Metric::Anls,
        Metric::Bleu,
        Metric::Meteor,
        Metric::RougeL,
        Metric::Cider,
        Metric::McAcc,
        Metric::Mmbench,
        Metric::Mme,
        Metric::Ece,
        Metric::Brier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::VqaAcc => "vqa_acc",
            Metric::ExactMatch => "exact_match",
            Metric::F1 => "f1",
            Metric::Anls => "anls",
            Metric::Bleu => "bleu",
            Metric::Meteor => "meteor",
            Metric::RougeL => "rouge_l",
            Metric::Cider => "cider",
            Metric::McAcc => "mc_acc",
            Metric::Mmbench => "mmbench",
            Metric::Mme => "mme",
            Metric::Ece => "ece",
            Metric::Brier => "brier",
        }
    }

    /// The tasks a metric applies to.
    fn applies_to(self, task: EvalTask) -> bool {
        use EvalTask::*;
        match self {
            Metric::VqaAcc | Metric::ExactMatch | Metric::F1 | Metric::Anls => task == Vqa,
            Metric::Bleu | Metric::Meteor | Metric::RougeL | Metric::Cider => task == Caption,
            Metric::McAcc | Metric::Mmbench => task == Choice,
            Metric::Mme => task == Mme,
            Metric::Ece | Metric::Brier => task != Caption,
        }
    }

    /// Parses `vqa_acc,cider,bleu` (aliases: `vqa`, `em`, `rouge`, `cider_d`, `bleu_4`, ...).
    pub fn parse_list(s: &str) -> Result<Vec<Metric>, EvalError> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let m = name.parse::<Metric>()?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for Metric {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.to_ascii_lowercase().replace('-', "_");
        Ok(match n.as_str() {
            "vqa_acc" | "vqa" | "vqa_accuracy" => Metric::VqaAcc,
            "exact_match" | "em" => Metric::ExactMatch,
            "f1" | "token_f1" => Metric::F1,
            "anls" => Metric::Anls,
            "bleu" | "bleu_4" | "bleu4" => Metric::Bleu,
            "meteor" => Metric::Meteor,
            "rouge_l" | "rouge" | "rougel" => Metric::RougeL,
            "cider" | "cider_d" => Metric::Cider,
            "mc_acc" | "mc" | "choice" | "accuracy" => Metric::McAcc,
            "mmbench" | "circular" => Metric::Mmbench,
            "mme" => Metric::Mme,
            "ece" => Metric::Ece,
            "brier" => Metric::Brier,
            _ => {
                return Err(EvalError::usage(
                    format!("unknown metric `{s}`"),
                    format!("use some of: {}", Metric::ALL.map(Metric::name).join(", ")),
                ));
            }
        })
    }
}

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
    pub name: &'static str,
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
    pub metric: &'static str,
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
    pub metric: String,
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

/// The task's metrics when none are named.
pub fn default_metrics(task: EvalTask, refs: &References) -> Vec<Metric> {
    match task {
        EvalTask::Vqa => {
            // VQA accuracy needs several human answers; with one it is always 0.
            if refs.items.iter().any(|r| r.answers.len() >= 3) {
                vec![Metric::VqaAcc, Metric::ExactMatch, Metric::Anls]
            } else {
                vec![Metric::ExactMatch, Metric::F1, Metric::Anls]
            }
        }
        EvalTask::Caption => vec![Metric::Bleu, Metric::Meteor, Metric::RougeL, Metric::Cider],
        EvalTask::Choice => {
            if refs.items.iter().any(|r| r.id.parse::<u64>().is_ok_and(|i| i >= 1_000_000)) {
                vec![Metric::McAcc, Metric::Mmbench]
            } else {
                vec![Metric::McAcc]
            }
        }
        EvalTask::Mme => vec![Metric::Mme],
    }
}

struct Aligned<'a> {
    pairs: Vec<(&'a Reference, &'a Prediction)>,
    missing: Missing,
}

fn align<'a>(preds: &'a Predictions, refs: &'a References, allow_missing: bool) -> Result<Aligned<'a>, EvalError> {
    let by_id: HashMap<&str, &Prediction> = preds.items.iter().map(|p| (p.id.as_str(), p)).collect();
    let ref_ids: HashSet<&str> = refs.items.iter().map(|r| r.id.as_str()).collect();
    let mut missing = Missing::default();
    let mut pairs = Vec::with_capacity(refs.items.len());
    for r in &refs.items {
        match by_id.get(r.id.as_str()) {
            Some(p) => pairs.push((r, *p)),
            None => missing.references_without_prediction.push(Missed { id: r.id.clone(), at: r.at.to_string() }),
        }
    }
    for p in &preds.items {
        if !ref_ids.contains(p.id.as_str()) {
            missing.predictions_without_reference.push(Missed { id: p.id.clone(), at: p.at.to_string() });
        }
    }
    if !allow_missing {
        let file = preds.file.display();
        if let Some(first) = missing.references_without_prediction.first() {
            return Err(EvalError::Missing {
                what: format!("references have no prediction in {file}"),
                count: missing.references_without_prediction.len(),
                first: format!("id {} at {}", first.id, first.at),
                matched: pairs.len(),
            });
        }
        if let Some(first) = missing.predictions_without_reference.first() {
            return Err(EvalError::Missing {
                what: format!("predictions have no reference in {}", refs.source),
                count: missing.predictions_without_reference.len(),
                first: format!("id {} at {}", first.id, first.at),
                matched: pairs.len(),
            });
        }
    }
    // An empty answer is an answer (a wrong one, usually), as the official VQA, ANLS and
    // SQuAD scripts score it; it is listed in metrics.json and warned about, never refused.
    for (_, p) in &pairs {
        if p.answer.trim().is_empty() {
            missing.empty_predictions.push(Missed { id: p.id.clone(), at: p.at.to_string() });
        }
    }
    if pairs.is_empty() {
        return Err(EvalError::usage(
            format!("no prediction in {} matches a reference in {}", preds.file.display(), refs.source),
            "predictions and references are matched by id (question_id, image_id for captions); are they of the same split?",
        ));
    }
    Ok(Aligned { pairs, missing })
}

fn variant_reference(v: VqaVariant) -> String {
    match v {
        VqaVariant::Official => {
            "VQA official: GT-Vision-Lab/VQA vqaEval.py master a013f00, Python 3 semantics; percent rounded to 2 decimals".into()
        }
        VqaVariant::LmmsEval(LmmsEvalTask::VqaV2) => "lmms-eval: 0.7.3 tasks/vqav2 process_results; fraction".into(),
        VqaVariant::LmmsEval(LmmsEvalTask::TextVqa) => {
            "lmms-eval textvqa: 0.7.3 tasks/textvqa EvalAIAnswerProcessor; fraction".into()
        }
        VqaVariant::VlmEvalKit => "VLMEvalKit: process_line (ms-vlmeval 0.0.20); percent, unrounded".into(),
    }
}

/// The scores of one predictions file on its matched items.
struct Scored {
    metrics: Vec<MetricResult>,
    unavailable: Vec<Unavailable>,
    notes: Vec<String>,
    /// Correctness per item for calibration, when the task has one.
    correct: Option<Vec<bool>>,
}

fn group_mean(
    kind: &str,
    pairs: &[(&Reference, &Prediction)],
    key: impl Fn(&Reference) -> Option<&str>,
    values: &[f64],
) -> Vec<Group> {
    let mut order: Vec<String> = Vec::new();
    let mut acc: HashMap<String, (f64, usize)> = HashMap::new();
    for ((r, _), v) in pairs.iter().zip(values) {
        if let Some(k) = key(r) {
            let e = acc.entry(k.to_string()).or_insert_with(|| {
                order.push(k.to_string());
                (0.0, 0)
            });
            e.0 += v;
            e.1 += 1;
        }
    }
    order
        .into_iter()
        .map(|name| {
            let (sum, count) = acc[&name];
            Group { kind: kind.into(), value: sum / count as f64, name, count }
        })
        .collect()
}

fn score(
    task: EvalTask,
    pairs: &[(&Reference, &Prediction)],
    metrics: &[Metric],
    opts: &EvalOptions,
) -> Result<Scored, EvalError> {
    let mut out = Scored { metrics: Vec::new(), unavailable: Vec::new(), notes: Vec::new(), correct: None };
    let want = |m: Metric| metrics.contains(&m);
    match task {
        EvalTask::Vqa => {
            if let Some((r, _)) = pairs.iter().find(|(r, _)| r.answers.is_empty()) {
                return Err(EvalError::input(
                    r.at.clone(),
                    format!("reference {} has no answers", r.id),
                    "every question needs at least one reference answer",
                ));
            }
            if want(Metric::VqaAcc) {
                let report = evaluate_vqa(
                    pairs.iter().map(|(r, p)| VqaQuestion {
                        prediction: p.answer.as_str(),
                        answers: r.answers.as_slice(),
                        question_type: r.question_type.as_deref(),
                        answer_type: r.answer_type.as_deref(),
                    }),
                    opts.vqa_variant,
                )
                .map_err(|e| EvalError::Metric(e.to_string()))?;
                let few = pairs.iter().filter(|(r, _)| r.answers.len() < 3).count();
                if few > 0 {
                    out.notes.push(format!(
                        "vqa_acc: {few} questions have fewer than 3 reference answers; VQA accuracy needs several human answers (VQAv2 has 10) and scores a lone answer 0: prefer exact_match"
                    ));
                }
                let count = |kind: fn(&Reference) -> Option<&str>, name: &str| {
                    pairs.iter().filter(|(r, _)| kind(r) == Some(name)).count()
                };
                let mut groups = Vec::new();
                for (name, value) in &report.per_question_type {
                    groups.push(Group {
                        kind: "question_type".into(),
                        name: name.clone(),
                        value: *value,
                        count: count(|r| r.question_type.as_deref(), name),
                    });
                }
                for (name, value) in &report.per_answer_type {
                    groups.push(Group {
                        kind: "answer_type".into(),
                        name: name.clone(),
                        value: *value,
                        count: count(|r| r.answer_type.as_deref(), name),
                    });
                }
                let unit = match opts.vqa_variant {
                    VqaVariant::LmmsEval(_) => "fraction",
                    _ => "percent",
                };
                out.metrics.push(MetricResult {
                    name: "vqa_acc",
                    value: report.overall,
                    unit,
                    reference: variant_reference(opts.vqa_variant),
                    parts: Vec::new(),
                    groups,
                    per_item: report.accuracy,
                    item_parts: Vec::new(),
                });
            }
            let squad = (want(Metric::ExactMatch) || want(Metric::F1) || want(Metric::Ece) || want(Metric::Brier))
                .then(|| evaluate_squad(pairs.iter().map(|(r, p)| (p.answer.as_str(), r.answers.as_slice()))));
            if let Some(s) = &squad {
                let qtype = |kind: &str, values: &[f64]| {
                    let mut g = group_mean(kind, pairs, |r| r.answer_type.as_deref(), values);
                    for x in &mut g {
                        x.value *= 100.0;
                    }
                    g
                };
                if want(Metric::ExactMatch) {
                    out.metrics.push(MetricResult {
                        name: "exact_match",
                        value: s.exact_match_percent,
                        unit: "percent",
                        reference: "SQuAD v1.1: evaluate-v1.1.py normalisation, max over reference answers".into(),
                        parts: Vec::new(),
                        groups: qtype("answer_type", &s.exact_match),
                        per_item: s.exact_match.clone(),
                        item_parts: Vec::new(),
                    });
                }
                if want(Metric::F1) {
                    out.metrics.push(MetricResult {
                        name: "f1",
                        value: s.f1_percent,
                        unit: "percent",
                        reference: "SQuAD v1.1: token F1, max over reference answers".into(),
                        parts: Vec::new(),
                        groups: qtype("answer_type", &s.f1),
                        per_item: s.f1.clone(),
                        item_parts: Vec::new(),
                    });
                }
                out.correct = Some(s.exact_match.iter().map(|&x| x == 1.0).collect());
            }
            if want(Metric::Anls) {
                let a =
                    evaluate_anls(pairs.iter().map(|(r, p)| (p.answer.as_str(), r.answers.as_slice())), ANLS_THRESHOLD);
                out.metrics.push(MetricResult {
                    name: "anls",
                    value: a.score,
                    unit: "fraction",
                    reference: "ANLS: DocVQA/InfographicVQA evaluate_method, threshold 0.5".into(),
                    parts: Vec::new(),
                    groups: group_mean("answer_type", pairs, |r| r.answer_type.as_deref(), &a.per_item),
                    per_item: a.per_item,
                    item_parts: Vec::new(),
                });
            }
        }
        EvalTask::Caption => score_captions(pairs, metrics, opts, &mut out)?,
        EvalTask::Choice => {
            let index_of = |i: usize, r: &Reference| r.id.parse::<u64>().unwrap_or(i as u64);
            let items: Vec<ChoiceItem> = pairs
                .iter()
                .enumerate()
                .map(|(i, (r, p))| ChoiceItem {
                    index: index_of(i, r),
                    prediction: p.answer.as_str(),
                    choices: r.choices.iter().map(|(c, t)| (*c, t.as_str())).collect(),
                    answer: r.answers.first().and_then(|a| a.chars().next()).unwrap_or('?'),
                    category: r.category.as_deref(),
                    l2_category: r.l2_category.as_deref(),
                })
                .collect();
            let plain = choice_accuracy(&items);
            let hits: Vec<f64> = plain.hits.iter().map(|&(_, h)| f64::from(u8::from(h))).collect();
            let choice_ref = "VLMEvalKit: can_infer option matching (ms-vlmeval 0.0.20), no LLM judge; fraction";
            let groups_of = |g: &[(String, f64)]| {
                g.iter().map(|(n, v)| Group { kind: "category".into(), name: n.clone(), value: *v, count: 0 }).collect()
            };
            if want(Metric::McAcc) {
                out.metrics.push(MetricResult {
                    name: "mc_acc",
                    value: plain.overall,
                    unit: "fraction",
                    reference: choice_ref.into(),
                    parts: Vec::new(),
                    groups: groups_of(&plain.groups),
                    per_item: hits.clone(),
                    item_parts: Vec::new(),
                });
            }
            if want(Metric::Mmbench) {
                let circ = circular_accuracy(&items);
                let by_main: HashMap<u64, bool> = circ.hits.iter().copied().collect();
                let per_item = items
                    .iter()
                    .map(|it| f64::from(u8::from(by_main.get(&(it.index % 1_000_000)) == Some(&true))))
                    .collect();
                out.metrics.push(MetricResult {
                    name: "mmbench",
                    value: circ.overall,
                    unit: "fraction",
                    reference:
                        "MMBench CircularEval: VLMEvalKit mcq_circular_eval (ms-vlmeval 0.0.20), no LLM judge; fraction"
                            .into(),
                    parts: Vec::new(),
                    groups: groups_of(&circ.groups),
                    per_item,
                    item_parts: Vec::new(),
                });
            }
            out.correct = Some(hits.iter().map(|&h| h == 1.0).collect());
        }
        EvalTask::Mme => {
            let qs: Vec<MmeQuestion> = pairs
                .iter()
                .map(|(r, p)| MmeQuestion {
                    task: r.mme_task.as_deref().unwrap_or("mme"),
                    answer: r.answers.first().map(String::as_str).unwrap_or(""),
                    prediction: p.answer.as_str(),
                })
                .collect();
            let correct: Vec<bool> = qs
                .iter()
                .map(|q| mme_parse_answer(q.prediction) == Some(q.answer.eq_ignore_ascii_case("yes")))
                .collect();
            if want(Metric::Mme) {
                let rep = mme_scores(&qs).map_err(|e| EvalError::Metric(e.to_string()))?;
                out.metrics.push(MetricResult {
                    name: "mme",
                    value: rep.perception + rep.cognition,
                    unit: "points",
                    reference: "MME: eval_tool calculation.py; perception (max 2000) + cognition (max 800)".into(),
                    parts: vec![
                        Part { name: "perception".into(), value: rep.perception },
                        Part { name: "cognition".into(), value: rep.cognition },
                    ],
                    groups: rep
                        .tasks
                        .iter()
                        .map(|t| Group { kind: "mme_task".into(), name: t.task.clone(), value: t.score, count: 0 })
                        .collect(),
                    per_item: correct.iter().map(|&c| f64::from(u8::from(c))).collect(),
                    item_parts: Vec::new(),
                });
            }
            out.correct = Some(correct);
        }
    }
    Ok(out)
}

fn score_captions(
    pairs: &[(&Reference, &Prediction)],
    metrics: &[Metric],
    opts: &EvalOptions,
    out: &mut Scored,
) -> Result<(), EvalError> {
    if let Some((r, _)) = pairs.iter().find(|(r, _)| r.answers.is_empty()) {
        return Err(EvalError::input(
            r.at.clone(),
            format!("image {} has no reference captions", r.id),
            "every image needs at least one reference caption",
        ));
    }
    let want = |m: Metric| metrics.contains(&m);
    let images: Vec<CaptionImage<&str>> = pairs
        .iter()
        .map(|(r, p)| CaptionImage {
            references: r.answers.iter().map(String::as_str).collect(),
            prediction: p.answer.as_str(),
        })
        .collect();
    let tok = tokenize(&images);
    const COCO: &str = "pycocoevalcap 1.2";
    let (b, r, c) = if want(Metric::Bleu) && want(Metric::RougeL) && want(Metric::Cider) {
        let s = score_tokenized(&tok);
        let b = bleu::BleuScores {
            corpus: s.bleu,
            per_image: s.per_image.iter().map(|x| x.bleu).collect(),
            stats: s.bleu_stats,
        };
        let r = rouge::RougeScores { corpus: s.rouge_l, per_image: s.per_image.iter().map(|x| x.rouge_l).collect() };
        let c = cider::CiderScores { corpus: s.cider, per_image: s.per_image.iter().map(|x| x.cider).collect() };
        (Some(b), Some(r), Some(c))
    } else {
        (
            want(Metric::Bleu).then(|| bleu::bleu(&tok.predictions, &tok.references)),
            want(Metric::RougeL).then(|| rouge::rouge_l(&tok.predictions, &tok.references)),
            want(Metric::Cider).then(|| cider::cider_d(&tok.predictions, &tok.references)),
        )
    };
    for m in metrics {
        match m {
            Metric::Bleu => {
                let b = b.as_ref().expect("computed");
                out.metrics.push(MetricResult {
                    name: "bleu",
                    value: b.corpus[3],
                    unit: "fraction",
                    reference: format!(
                        "{COCO}: Bleu(4), closest reference length, PTB tokenizer (CoreNLP 3.4.1, reimplemented)"
                    ),
                    parts: (0..4).map(|k| Part { name: format!("Bleu_{}", k + 1), value: b.corpus[k] }).collect(),
                    groups: Vec::new(),
                    per_item: b.per_image.iter().map(|x| x[3]).collect(),
                    item_parts: ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]
                        .into_iter()
                        .enumerate()
                        .map(|(k, name)| (name, b.per_image.iter().map(|x| x[k]).collect()))
                        .collect(),
                });
            }
            Metric::RougeL => {
                let r = r.as_ref().expect("computed");
                out.metrics.push(MetricResult {
                    name: "rouge_l",
                    value: r.corpus,
                    unit: "fraction",
                    reference: format!("{COCO}: ROUGE_L, beta 1.2"),
                    parts: Vec::new(),
                    groups: Vec::new(),
                    per_item: r.per_image.clone(),
                    item_parts: Vec::new(),
                });
            }
            Metric::Cider => {
                let c = c.as_ref().expect("computed");
                out.metrics.push(MetricResult {
                    name: "cider",
                    value: c.corpus,
                    unit: "points",
                    reference: format!("{COCO}: CIDEr-D, sigma 6, idf over these references"),
                    parts: Vec::new(),
                    groups: Vec::new(),
                    per_item: c.per_image.clone(),
                    item_parts: Vec::new(),
                });
            }
            Metric::Meteor => match run_meteor(&opts.meteor, &tok.predictions, &tok.references) {
                Ok((jar, m)) => out.metrics.push(MetricResult {
                    name: "meteor",
                    value: m.corpus,
                    unit: "fraction",
                    reference: format!(
                        "{COCO}: METEOR 1.5 jar {} (-l en -norm), corpus from summed statistics",
                        jar.display()
                    ),
                    parts: Vec::new(),
                    groups: Vec::new(),
                    per_item: m.per_image,
                    item_parts: Vec::new(),
                }),
                Err(reason) => out.unavailable.push(Unavailable { metric: "meteor", reason }),
            },
            _ => {}
        }
    }
    Ok(())
}

fn run_meteor(
    jar: &MeteorJar,
    hyps: &[String],
    refs: &[Vec<String>],
) -> Result<(PathBuf, crate::meteor_jar::MeteorScores), String> {
    let explicit = match jar {
        MeteorJar::Path(p) => Some(p.as_path()),
        MeteorJar::Find => None,
    };
    let path = crate::meteor_jar::find_jar(explicit).map_err(|e| e.to_string())?;
    let scores = crate::meteor_jar::meteor(&path, hyps, refs).map_err(|e| e.to_string())?;
    Ok((path, scores))
}

fn source_of(p: &Predictions) -> SourceInfo {
    SourceInfo {
        file: p.file.display().to_string(),
        format: p.format.to_string(),
        model: p.model.clone(),
        version: None,
        count: p.items.len(),
    }
}

fn calibration(pairs: &[(&Reference, &Prediction)], correct: &[bool], bins: usize) -> Result<Calibration, EvalError> {
    let conf: Vec<f64> = pairs.iter().map(|(_, p)| p.confidence.unwrap_or(0.0)).collect();
    let err = |e: mmloop_metrics::calibration::CalibrationError| EvalError::Metric(e.to_string());
    let reliability = reliability_bins(&conf, correct, bins, Binning::EqualWidth)
        .map_err(err)?
        .into_iter()
        .map(|b| ReliabilityBin {
            lower: b.lower,
            upper: b.upper,
            count: b.count,
            mean_confidence: (b.count > 0).then_some(b.mean_confidence),
            accuracy: (b.count > 0).then_some(b.accuracy),
        })
        .collect();
    Ok(Calibration {
        correct_when: String::new(),
        bins,
        ece_equal_width: expected_calibration_error(&conf, correct, bins, Binning::EqualWidth).map_err(err)?,
        ece_equal_mass: expected_calibration_error(&conf, correct, bins, Binning::EqualMass).map_err(err)?,
        brier: brier_score(&conf, correct).map_err(err)?,
        reliability,
        confidence: conf,
        correct: correct.to_vec(),
    })
}

fn correct_when(task: EvalTask) -> &'static str {
    match task {
        EvalTask::Vqa => "the answer equals a reference answer after SQuAD normalisation (exact_match)",
        EvalTask::Choice => "the extracted option letter is the answer (mc_acc hit)",
        EvalTask::Mme => "the parsed yes/no equals the ground truth",
        EvalTask::Caption => "not defined for captions",
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
    let a = align(preds, refs, opts.allow_missing)?;
    let mut scored = score(task, &a.pairs, &metrics, opts)?;
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
        let mut c = calibration(&a.pairs, &correct, opts.ece_bins)?;
        c.correct_when = correct_when(task).to_string();
        // Named metrics decide; by default both come whenever confidences do.
        let named = opts.metrics.as_ref().is_some_and(|m| !m.is_empty());
        if !named || metrics.contains(&Metric::Ece) {
            scored.metrics.push(MetricResult {
                name: "ece",
                value: c.ece_equal_width,
                unit: "fraction",
                reference: format!(
                    "ECE: {} equal-width bins (scikit-learn calibration_curve binning), Guo et al. 2017; correct = {}",
                    opts.ece_bins,
                    correct_when(task)
                ),
                parts: vec![Part { name: "ece_equal_mass".into(), value: c.ece_equal_mass }],
                groups: Vec::new(),
                per_item: Vec::new(),
                item_parts: Vec::new(),
            });
        }
        if !named || metrics.contains(&Metric::Brier) {
            scored.metrics.push(brier_metric(&c.confidence, &correct, c.brier));
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
                scored.unavailable.push(Unavailable { metric: m.name(), reason });
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
        Some(b) => Some(compare_with(task, &a, b, refs, &metrics, &scored.metrics, opts)?),
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
                    scores.insert(m.name, v);
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

fn brier_metric(confidence: &[f64], correct: &[bool], value: f64) -> MetricResult {
    MetricResult {
        name: "brier",
        value,
        unit: "fraction",
        reference: "Brier score: mean (confidence - correct)^2 (sklearn brier_score_loss)".into(),
        parts: Vec::new(),
        groups: Vec::new(),
        per_item: confidence
            .iter()
            .zip(correct)
            .map(|(&p, &y)| {
                let d = p - f64::from(u8::from(y));
                d * d
            })
            .collect(),
        item_parts: Vec::new(),
    }
}

fn compare_with(
    task: EvalTask,
    a: &Aligned<'_>,
    b_preds: &Predictions,
    refs: &References,
    metrics: &[Metric],
    a_metrics: &[MetricResult],
    opts: &EvalOptions,
) -> Result<Comparison, EvalError> {
    let b = align(b_preds, refs, opts.allow_missing)?;
    let b_ids: HashSet<&str> = b.pairs.iter().map(|(r, _)| r.id.as_str()).collect();
    let a_ids: HashSet<&str> = a.pairs.iter().map(|(r, _)| r.id.as_str()).collect();
    if !opts.allow_missing && a_ids != b_ids {
        let only_a = a_ids.difference(&b_ids).count();
        let first = a.pairs.iter().find(|(r, _)| !b_ids.contains(r.id.as_str()));
        return Err(EvalError::Missing {
            what: format!("items scored for A have no prediction in {}", b_preds.file.display()),
            count: only_a,
            first: first.map(|(r, p)| format!("id {} at {}", r.id, p.at)).unwrap_or_default(),
            matched: a_ids.intersection(&b_ids).count(),
        });
    }
    let mut b_scored = score(task, &b.pairs, metrics, opts)?;
    // Brier for B too, when both have confidences, so that calibration can be compared.
    if let Some(correct) = &b_scored.correct
        && b.pairs.iter().all(|(_, p)| p.confidence.is_some())
        && a_metrics.iter().any(|m| m.name == "brier")
    {
        let conf: Vec<f64> = b.pairs.iter().map(|(_, p)| p.confidence.unwrap_or(0.0)).collect();
        let value = brier_score(&conf, correct).map_err(|e| EvalError::Metric(e.to_string()))?;
        b_scored.metrics.push(brier_metric(&conf, correct, value));
    }
    // Common items in A's order.
    let b_index: HashMap<&str, usize> = b.pairs.iter().enumerate().map(|(i, (r, _))| (r.id.as_str(), i)).collect();
    let common: Vec<(usize, usize)> =
        a.pairs.iter().enumerate().filter_map(|(i, (r, _))| b_index.get(r.id.as_str()).map(|&j| (i, j))).collect();
    let mut rows = Vec::new();
    for ma in a_metrics {
        let Some(mb) = b_scored.metrics.iter().find(|m| m.name == ma.name) else { continue };
        if ma.per_item.is_empty() || mb.per_item.is_empty() {
            continue;
        }
        let xa: Vec<f64> = common.iter().map(|&(i, _)| ma.per_item[i]).collect();
        let xb: Vec<f64> = common.iter().map(|&(_, j)| mb.per_item[j]).collect();
        let r = paired_bootstrap(&xa, &xb, opts.bootstrap).map_err(|e| EvalError::Metric(e.to_string()))?;
        rows.push(CompareRow {
            metric: ma.name.to_string(),
            mean_a: r.mean_a,
            mean_b: r.mean_b,
            delta: r.delta,
            ci_low: r.ci_low,
            ci_high: r.ci_high,
            p_value: r.p_value,
            mcnemar: mcnemar_exact(&xa, &xb),
        });
    }
    Ok(Comparison {
        predictions_b: source_of(b_preds),
        metrics_b: b_scored.metrics,
        items: common.len(),
        method: "paired bootstrap of the mean per-item score (mmloop-metrics compare: SplitMix64 seeded, the same resampled items for A and B, numpy linear percentiles, two-sided p = share of |delta* - delta| >= |delta|)".into(),
        resamples: opts.bootstrap.resamples,
        alpha: opts.bootstrap.alpha,
        seed: opts.bootstrap.seed,
        rows,
    })
}

/// The most items the report can list as the lowest-scoring.
pub const WORST_MAX: usize = 100;

/// The metric the report ranks items by: CIDEr-D for captions (what caption work usually
/// ranks by), else the first metric with per-item scores (never Brier, lower is better).
pub fn primary_metric(metrics: &[MetricResult]) -> Option<&MetricResult> {
    let scored = |m: &&MetricResult| !m.per_item.is_empty() && m.name != "brier";
    metrics.iter().filter(scored).find(|m| m.name == "cider").or_else(|| metrics.iter().find(scored))
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
    fn with_worst_refs(mut self, pairs: &[(&Reference, &Prediction)]) -> Self {
        if let Some(p) = primary_metric(&self.metrics) {
            self.worst_refs = worst_items(p, WORST_MAX).into_iter().map(|i| (i, pairs[i].0.clone())).collect();
        }
        self
    }
}
