//! Calibration when every prediction carries a confidence: ECE (equal-width and
//! equal-mass), the Brier score and the reliability diagram's bins.

use mmloop_metrics::calibration::{Binning, brier_score, expected_calibration_error, reliability_bins};

use super::{Calibration, Metric, MetricResult, ReliabilityBin};
use crate::error::EvalError;
use crate::predictions::Prediction;
use crate::references::{EvalTask, Reference};

pub(super) fn calibration(
    pairs: &[(&Reference, &Prediction)],
    correct: &[bool],
    bins: usize,
) -> Result<Calibration, EvalError> {
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

pub(super) fn correct_when(task: EvalTask) -> &'static str {
    match task {
        EvalTask::Vqa => "the answer equals a reference answer after SQuAD normalisation (exact_match)",
        EvalTask::Choice => "the extracted option letter is the answer (mc_acc hit)",
        EvalTask::Mme => "the parsed yes/no equals the ground truth",
        EvalTask::Caption => "not defined for captions",
    }
}

pub(super) fn brier_metric(confidence: &[f64], correct: &[bool], value: f64) -> MetricResult {
    MetricResult {
        metric: Metric::Brier,
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
