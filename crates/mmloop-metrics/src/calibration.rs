//! Calibration of answer confidences: reliability-diagram bins, expected calibration error
//! (ECE) and the Brier score.
//!
//! Binning is scikit-learn's `sklearn.calibration.calibration_curve` (1.9.1), bit for bit:
//! - equal-width (`strategy="uniform"`): edges `np.linspace(0, 1, n_bins + 1)`;
//! - equal-mass (`strategy="quantile"`): edges `np.percentile(conf, np.linspace(0, 1, n_bins + 1) * 100)`
//!   (numpy `linear` percentile), so ties can leave bins empty;
//! - a confidence goes to bin `np.searchsorted(edges[1:-1], conf)` (side `left`): bins are
//!   `(lo, hi]` except the first, which also holds its lower edge;
//! - per bin, the confidence sum and the correct count are accumulated in input order
//!   (`np.bincount` with weights); mean confidence and accuracy are those sums over the count.
//!
//! ECE is Guo et al. (2017): `Σ_b (n_b / N) · |acc_b − conf_b|` over non-empty bins, summed
//! as `np.sum` over the bins in order. Brier score is `np.mean((conf − correct)²)`, which
//! is what `sklearn.metrics.brier_score_loss` returns for binary labels.
//!
//! Pure functions; confidences must lie in [0, 1].

use crate::numeric::{np_mean, np_sum};
use crate::pyfloat::np_percentile_sorted;

/// How bin edges are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Binning {
    /// Equal-width bins over [0, 1] (`strategy="uniform"`).
    #[default]
    EqualWidth,
    /// Bins holding about the same number of answers (`strategy="quantile"`).
    EqualMass,
}

/// One reliability-diagram bin.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationBin {
    /// Lower and upper edge.
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence of the answers in the bin (`prob_pred`); NaN when empty.
    pub mean_confidence: f64,
    /// Share of correct answers in the bin (`prob_true`); NaN when empty.
    pub accuracy: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrationError {
    #[error("no answers to calibrate; pass at least one confidence")]
    Empty,
    #[error("{confidences} confidences but {labels} correctness labels; pass one label per answer")]
    LengthMismatch { confidences: usize, labels: usize },
    #[error("confidence {value} at position {index} is outside [0, 1]; rescale confidences to probabilities")]
    OutOfRange { index: usize, value: f64 },
    #[error("ECE needs at least one bin")]
    NoBins,
}

fn check(confidence: &[f64], correct: &[bool]) -> Result<(), CalibrationError> {
    if confidence.len() != correct.len() {
        return Err(CalibrationError::LengthMismatch { confidences: confidence.len(), labels: correct.len() });
    }
    if confidence.is_empty() {
        return Err(CalibrationError::Empty);
    }
    if let Some((index, &value)) = confidence.iter().enumerate().find(|(_, c)| !(0.0..=1.0).contains(*c)) {
        return Err(CalibrationError::OutOfRange { index, value });
    }
    Ok(())
}

/// `np.linspace(0, 1, n + 1)`: `i * (1 / n)`, last edge exactly 1.
fn linspace_unit(n_bins: usize) -> Vec<f64> {
    let step = 1.0 / n_bins as f64;
    let mut edges: Vec<f64> = (0..=n_bins).map(|i| i as f64 * step).collect();
    edges[n_bins] = 1.0;
    edges
}

/// Bin edges, `n_bins + 1` of them.
pub fn bin_edges(confidence: &[f64], n_bins: usize, binning: Binning) -> Vec<f64> {
    let unit = linspace_unit(n_bins);
    match binning {
        Binning::EqualWidth => unit,
        Binning::EqualMass => {
            let mut sorted = confidence.to_vec();
            sorted.sort_by(f64::total_cmp);
            unit.iter().map(|&q| np_percentile_sorted(&sorted, q * 100.0)).collect()
        }
    }
}

/// Reliability-diagram data: every bin, empty ones included (their means are NaN;
/// scikit-learn drops them from its arrays).
pub fn reliability_bins(
    confidence: &[f64],
    correct: &[bool],
    n_bins: usize,
    binning: Binning,
) -> Result<Vec<CalibrationBin>, CalibrationError> {
    check(confidence, correct)?;
    if n_bins == 0 {
        return Err(CalibrationError::NoBins);
    }
    let edges = bin_edges(confidence, n_bins, binning);
    let inner = &edges[1..n_bins];
    let mut sums = vec![0.0f64; n_bins];
    let mut trues = vec![0.0f64; n_bins];
    let mut counts = vec![0usize; n_bins];
    for (&c, &ok) in confidence.iter().zip(correct) {
        // searchsorted(side="left"): the number of inner edges strictly below c.
        let b = inner.partition_point(|&e| e < c);
        sums[b] += c;
        trues[b] += if ok { 1.0 } else { 0.0 };
        counts[b] += 1;
    }
    Ok((0..n_bins)
        .map(|b| {
            let n = counts[b] as f64;
            CalibrationBin {
                lower: edges[b],
                upper: edges[b + 1],
                count: counts[b],
                mean_confidence: sums[b] / n,
                accuracy: trues[b] / n,
            }
        })
        .collect())
}

/// Expected calibration error over `n_bins` bins (15 is common for classifiers, 10 in
/// scikit-learn's plots).
pub fn expected_calibration_error(
    confidence: &[f64],
    correct: &[bool],
    n_bins: usize,
    binning: Binning,
) -> Result<f64, CalibrationError> {
    let bins = reliability_bins(confidence, correct, n_bins, binning)?;
    let n = confidence.len() as f64;
    let terms: Vec<f64> = bins
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| b.count as f64 / n * (b.accuracy - b.mean_confidence).abs())
        .collect();
    Ok(np_sum(&terms))
}

/// Brier score: mean squared difference between confidence and correctness (0 is perfect).
pub fn brier_score(confidence: &[f64], correct: &[bool]) -> Result<f64, CalibrationError> {
    check(confidence, correct)?;
    let sq: Vec<f64> = confidence
        .iter()
        .zip(correct)
        .map(|(&c, &ok)| {
            let d = c - if ok { 1.0 } else { 0.0 };
            d * d
        })
        .collect();
    Ok(np_mean(&sq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_and_bins() {
        let conf = [0.1, 0.2, 0.5, 0.5, 0.9, 1.0, 0.0];
        let ok = [false, false, true, false, true, true, false];
        let bins = reliability_bins(&conf, &ok, 2, Binning::EqualWidth).unwrap();
        // 0.5 sits on the inner edge and goes to the lower bin.
        assert_eq!(bins[0].count, 5);
        assert_eq!(bins[1].count, 2);
        assert_eq!(bins[1].accuracy, 1.0);
        let ece = expected_calibration_error(&conf, &ok, 2, Binning::EqualWidth).unwrap();
        assert!(ece > 0.0 && ece < 1.0);
        assert_eq!(brier_score(&[1.0, 0.0], &[true, false]).unwrap(), 0.0);
        assert!(matches!(brier_score(&[1.5], &[true]), Err(CalibrationError::OutOfRange { .. })));
    }
}
