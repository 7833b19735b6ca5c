//! Agreement: how often reviewers accept model answers, and how much annotators agree
//! with each other.
//!
//! - Acceptance rate: accepted / reviewed, with edits and rejections counted apart.
//! - Krippendorff's alpha for nominal data with missing values, bit for bit as the PyPI
//!   `krippendorff` package 0.9.0 `alpha(reliability_data, level_of_measurement="nominal")`:
//!   value domain = sorted distinct values; coincidences
//!   `o = Σ_u (n_uc·n_uk − [c=k]·n_uc) / (max(m_u, 2) − 1)` summed unit by unit;
//!   `n_v = o.sum(axis=0)`; `e = (n_v n_vᵀ − diag(n_v)) / (Σ n_v − 1)`;
//!   `alpha = 1 − Σ(o·d) / Σ(e·d)` with `d = [c≠k]` and numpy's pairwise sums over the
//!   flattened matrices. The package turns a missing string value into `"nan"` and drops
//!   it; here a missing value is `None`, so a real answer `"nan"` stays an answer.
//! - VQA-accuracy agreement for free-text answers: each annotator's answer is scored
//!   against the others with [`crate::vqa`] (the chosen variant's normalisation and
//!   leave-one-out), averaged over annotators and then over items (plain left-to-right means).
//!
//! Pure functions; they never read files.

use crate::numeric::np_sum;
use crate::vqa::{VqaError, VqaScorer, VqaVariant};

/// What a reviewer did with a model's candidate answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewDecision {
    Accepted,
    Edited,
    Rejected,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcceptanceReport {
    pub reviewed: usize,
    pub accepted: usize,
    pub edited: usize,
    pub rejected: usize,
    /// accepted / reviewed; NaN when nothing was reviewed.
    pub acceptance_rate: f64,
}

/// Model-vs-human acceptance: the share of candidates a reviewer accepted unchanged.
pub fn acceptance_rate(decisions: &[ReviewDecision]) -> AcceptanceReport {
    let count = |d: ReviewDecision| decisions.iter().filter(|&&x| x == d).count();
    let accepted = count(ReviewDecision::Accepted);
    AcceptanceReport {
        reviewed: decisions.len(),
        accepted,
        edited: count(ReviewDecision::Edited),
        rejected: count(ReviewDecision::Rejected),
        acceptance_rate: accepted as f64 / decisions.len() as f64,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AgreementError {
    #[error(
        "annotator {annotator} rated {got} items but annotator 0 rated {expected}; give every annotator one slot per item (None where missing)"
    )]
    RaggedData { annotator: usize, got: usize, expected: usize },
    #[error("all ratings share one value, so alpha is undefined; agreement needs at least two distinct values")]
    SingleValue,
    #[error("no item was rated by two annotators, so alpha is undefined")]
    NoPairableItem,
    #[error("item {item} has fewer than two answers; VQA agreement needs two annotators per item")]
    TooFewAnswers { item: usize },
    #[error(transparent)]
    Vqa(#[from] VqaError),
}

/// Krippendorff's alpha, nominal level. `ratings[coder][unit]`, `None` where the coder
/// gave no value (the package's `reliability_data` with `np.nan`).
pub fn krippendorff_alpha_nominal<T: Ord>(ratings: &[Vec<Option<T>>]) -> Result<f64, AgreementError> {
    let units = ratings.first().map_or(0, Vec::len);
    if let Some((annotator, row)) = ratings.iter().enumerate().find(|(_, r)| r.len() != units) {
        return Err(AgreementError::RaggedData { annotator, got: row.len(), expected: units });
    }
    let mut domain: Vec<&T> = ratings.iter().flatten().flatten().collect();
    domain.sort();
    domain.dedup();
    let v = domain.len();
    if v <= 1 {
        return Err(AgreementError::SingleValue);
    }
    // value_counts[u][c]: how many coders gave unit u value c.
    let mut counts = vec![0u32; v];
    let mut o = vec![0.0f64; v * v];
    let mut any_pairable = false;
    for u in 0..units {
        counts.iter_mut().for_each(|c| *c = 0);
        for row in ratings {
            if let Some(x) = &row[u] {
                let c = domain.binary_search(&x).expect("value is in the domain");
                counts[c] += 1;
            }
        }
        let m: u32 = counts.iter().sum();
        any_pairable |= m >= 2;
        let denom = (m.max(2) - 1) as f64;
        // The package adds every unit's (V, V) slice, zeros included, in unit order.
        for c in 0..v {
            for k in 0..v {
                let nc = counts[c] as f64;
                let mut x = nc * counts[k] as f64;
                if c == k {
                    x -= nc;
                }
                o[c * v + k] += x / denom;
            }
        }
    }
    if !any_pairable {
        return Err(AgreementError::NoPairableItem);
    }
    // n_v = o.sum(axis=0): row by row, in order.
    let mut n_v = vec![0.0f64; v];
    for c in 0..v {
        for k in 0..v {
            n_v[k] += o[c * v + k];
        }
    }
    let total = np_sum(&n_v) - 1.0;
    let mut od = vec![0.0f64; v * v];
    let mut ed = vec![0.0f64; v * v];
    for c in 0..v {
        for k in 0..v {
            let d = if c == k { 0.0 } else { 1.0 };
            let diag = if c == k { n_v[c] } else { 0.0 };
            od[c * v + k] = o[c * v + k] * d;
            ed[c * v + k] = (n_v[c] * n_v[k] - diag) / total * d;
        }
    }
    Ok(1.0 - np_sum(&od) / np_sum(&ed))
}

/// Mean VQA accuracy of each annotator's answer against the other annotators' answers.
/// `items[i]` holds the answers of item i (at least two).
pub fn vqa_agreement<S: AsRef<str>>(items: &[Vec<S>], variant: VqaVariant) -> Result<f64, AgreementError> {
    let mut scorer = VqaScorer::new(variant);
    let mut others: Vec<&str> = Vec::new();
    let mut total = 0.0;
    for (item, answers) in items.iter().enumerate() {
        if answers.len() < 2 {
            return Err(AgreementError::TooFewAnswers { item });
        }
        let mut sum = 0.0;
        for j in 0..answers.len() {
            others.clear();
            others.extend(answers.iter().enumerate().filter(|(i, _)| *i != j).map(|(_, a)| a.as_ref()));
            sum += scorer.score(answers[j].as_ref(), &others)?;
        }
        total += sum / answers.len() as f64;
    }
    Ok(total / items.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krippendorff_docstring_example() {
        // The package's docstring: nominal alpha 0.691358 (to 6 places).
        let n = None;
        let data = vec![
            vec![n, n, n, n, n, Some(3), Some(4), Some(1), Some(2), Some(1), Some(1), Some(3), Some(3), n, Some(3)],
            vec![Some(1), n, Some(2), Some(1), Some(3), Some(3), Some(4), Some(3), n, n, n, n, n, n, n],
            vec![
                n,
                n,
                Some(2),
                Some(1),
                Some(3),
                Some(4),
                Some(4),
                n,
                Some(2),
                Some(1),
                Some(1),
                Some(3),
                Some(3),
                n,
                Some(4),
            ],
        ];
        let a = krippendorff_alpha_nominal(&data).unwrap();
        assert!((a - 0.691358).abs() < 5e-7, "{a}");
    }

    #[test]
    fn acceptance_and_vqa_agreement() {
        use ReviewDecision::*;
        let r = acceptance_rate(&[Accepted, Edited, Accepted, Rejected]);
        assert_eq!(r.acceptance_rate, 0.5);
        // Ten identical answers agree fully; with four annotators each is judged by three
        // others, so even unanimous answers reach only 2/3.
        assert_eq!(vqa_agreement(&[vec!["red"; 10]], VqaVariant::Official).unwrap(), 1.0);
        let four = vqa_agreement(&[vec!["red"; 4]], VqaVariant::Official).unwrap();
        assert!((four - 2.0 / 3.0).abs() < 1e-15);
        let mixed = vqa_agreement(&[vec!["2", "two", "2", "3"]], VqaVariant::Official).unwrap();
        assert!(mixed > 0.0 && mixed < four);
    }
}
