//! The offline A/B gate: a second predictions file scored on the same items, each metric's
//! per-item scores compared by the paired bootstrap, and right/wrong metrics by McNemar's
//! exact test.

use std::collections::{HashMap, HashSet};

use mmloop_metrics::calibration::brier_score;
use mmloop_metrics::compare::{mcnemar_exact, paired_bootstrap};

use super::align::{Aligned, align};
use super::calibration::brier_metric;
use super::score::score;
use super::{CompareRow, Comparison, EvalOptions, Metric, MetricResult, source_of};
use crate::error::EvalError;
use crate::predictions::Predictions;
use crate::references::{EvalTask, References};

pub(super) fn compare_with(
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
        && a_metrics.iter().any(|m| m.metric == Metric::Brier)
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
        let Some(mb) = b_scored.metrics.iter().find(|m| m.metric == ma.metric) else { continue };
        if ma.per_item.is_empty() || mb.per_item.is_empty() {
            continue;
        }
        let xa: Vec<f64> = common.iter().map(|&(i, _)| ma.per_item[i]).collect();
        let xb: Vec<f64> = common.iter().map(|&(_, j)| mb.per_item[j]).collect();
        let r = paired_bootstrap(&xa, &xb, opts.bootstrap).map_err(|e| EvalError::Metric(e.to_string()))?;
        rows.push(CompareRow {
            metric: ma.metric,
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
