//! Each task's metrics on the matched items, through `mmloop-metrics` (and the METEOR jar),
//! on the scale the reference implementation reports.

use std::collections::HashMap;
use std::path::PathBuf;

use mmloop_metrics::choice::{
    ChoiceItem, MmeQuestion, choice_accuracy, circular_accuracy, mme_parse_answer, mme_scores,
};
use mmloop_metrics::coco::{CaptionImage, score_tokenized, tokenize};
use mmloop_metrics::text::{ANLS_THRESHOLD, evaluate_anls, evaluate_squad};
use mmloop_metrics::vqa::{LmmsEvalTask, VqaQuestion, VqaVariant, evaluate_vqa};
use mmloop_metrics::{bleu, cider, rouge};

use super::{EvalOptions, Group, MeteorJar, Metric, MetricResult, Part, Unavailable};
use crate::error::EvalError;
use crate::predictions::Prediction;
use crate::references::{EvalTask, Reference};

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
pub(super) struct Scored {
    pub metrics: Vec<MetricResult>,
    pub unavailable: Vec<Unavailable>,
    pub notes: Vec<String>,
    /// Correctness per item for calibration, when the task has one.
    pub correct: Option<Vec<bool>>,
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

pub(super) fn score(
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
                    metric: Metric::VqaAcc,
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
                        metric: Metric::ExactMatch,
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
                        metric: Metric::F1,
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
                    metric: Metric::Anls,
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
                    metric: Metric::McAcc,
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
                    metric: Metric::Mmbench,
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
                    metric: Metric::Mme,
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
                    metric: Metric::Bleu,
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
                    metric: Metric::RougeL,
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
                    metric: Metric::Cider,
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
                    metric: Metric::Meteor,
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
                Err(reason) => out.unavailable.push(Unavailable { metric: Metric::Meteor, reason }),
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
