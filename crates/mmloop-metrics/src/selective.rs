//! Certified auto-acceptance: the lowest score threshold above which model answers may be
//! accepted without review, with a guarantee — Learn-Then-Test (Angelopoulos et al. 2021,
//! arXiv 2110.01052) with fixed-sequence testing.
//!
//! Each threshold λ of a grid ordered from strict to lenient is a null hypothesis "the error
//! rate of answers scoring ≥ λ exceeds ε". From an audit sample (items drawn uniformly at
//! random and decided by people), n = audited answers scoring ≥ λ and k = the wrong ones give
//! a valid p-value: the binomial tail P(Bin(n, ε) ≤ k), or the Hoeffding–Bentkus p-value.
//! Testing the grid in order and stopping at the first p > δ needs no multiplicity
//! correction; the last λ passed is certified:
//!
//! P(error rate among answers scoring ≥ λ̂ ≤ ε) ≥ 1 − δ over the draw of the audit sample,
//!
//! assuming the audited items are exchangeable with the items the threshold is applied to
//! (a uniform random sample of the same pending pool). The grid may depend on the scores but
//! not on the audit outcomes; here it is cut from the sorted scores only.
//!
//! Pure functions; no I/O.

use serde::Serialize;

/// How each threshold's p-value is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PValue {
    /// Exact binomial tail P(Bin(n, ε) ≤ k).
    Binomial,
    /// min(exp(−n·h(min(k/n, ε), ε)), e·P(Bin(n, ε) ≤ ⌈k⌉)) — Hoeffding–Bentkus.
    HoeffdingBentkus,
}

impl std::str::FromStr for PValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "binomial" => Ok(PValue::Binomial),
            "hb" | "hoeffding-bentkus" | "hoeffding_bentkus" => Ok(PValue::HoeffdingBentkus),
            other => Err(format!("unknown --p-value {other:?}; expected binomial or hb")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CertifyOptions {
    /// Largest error rate allowed among auto-accepted answers.
    pub epsilon: f64,
    /// Allowed probability that the guarantee fails.
    pub delta: f64,
    /// No threshold with fewer audited answers above it is certified.
    pub min_n: usize,
    pub p_value: PValue,
    /// Where the walk starts: at the first n where this many errors could pass. `None`
    /// chooses from the sample size alone (see [`auto_start_errors`]); `Some(0)` is the
    /// textbook start.
    pub start_errors: Option<usize>,
}

impl CertifyOptions {
    pub fn new(epsilon: f64, delta: f64) -> CertifyOptions {
        CertifyOptions { epsilon, delta, min_n: 30, p_value: PValue::Binomial, start_errors: None }
    }

    /// The textbook procedure: every distinct score from the first one that could pass.
    pub fn textbook(epsilon: f64, delta: f64) -> CertifyOptions {
        CertifyOptions { start_errors: Some(0), ..CertifyOptions::new(epsilon, delta) }
    }
}

/// What certification found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Certificate {
    /// The certified threshold; `None` when the data certify none.
    pub threshold: Option<f64>,
    /// Audited answers at or above the threshold, and the wrong ones among them.
    pub n: usize,
    pub errors: usize,
    /// Share of the audit sample at or above the threshold.
    pub coverage: f64,
    pub p_value: Option<f64>,
    /// Thresholds tested before the walk stopped.
    pub tested: usize,
    /// Audited answers above the first threshold tested.
    pub start_n: usize,
    pub epsilon: f64,
    pub delta: f64,
    pub sample: usize,
}

/// ln P(Bin(n, p) ≤ k), summed term by term in log space (exact up to rounding).
pub fn ln_binom_cdf(k: usize, n: usize, p: f64) -> f64 {
    if k >= n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return f64::NEG_INFINITY;
    }
    let (lp, lq) = (p.ln(), (-p).ln_1p());
    // term_i = C(n, i) pⁱ qⁿ⁻ⁱ, from term_0 = qⁿ by the ratio (n − i)/(i + 1) · p/q.
    let mut term = n as f64 * lq;
    let mut acc = term;
    for i in 0..k {
        term += ((n - i) as f64 / (i + 1) as f64).ln() + lp - lq;
        let (hi, lo) = if acc > term { (acc, term) } else { (term, acc) };
        acc = hi + (lo - hi).exp().ln_1p();
    }
    acc.min(0.0)
}

/// P(Bin(n, p) ≤ k).
pub fn binom_cdf(k: usize, n: usize, p: f64) -> f64 {
    ln_binom_cdf(k, n, p).exp()
}

/// The Hoeffding–Bentkus p-value of "risk > ε" from k errors in n (Bates et al. 2021).
pub fn hb_pvalue(k: usize, n: usize, eps: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let r = (k as f64 / n as f64).min(eps);
    let h = |a: f64, b: f64| -> f64 {
        let t1 = if a > 0.0 { a * (a / b).ln() } else { 0.0 };
        let t2 = if a < 1.0 { (1.0 - a) * ((1.0 - a) / (1.0 - b)).ln() } else { 0.0 };
        t1 + t2
    };
    let hoeffding = (-(n as f64) * h(r, eps)).exp();
    let bentkus = std::f64::consts::E * binom_cdf(k, n, eps);
    hoeffding.min(bentkus).min(1.0)
}

/// The smallest n for which zero errors could pass: (1 − ε)ⁿ ≤ δ.
pub fn min_certifiable_n(eps: f64, delta: f64) -> usize {
    if eps <= 0.0 {
        return usize::MAX;
    }
    (delta.ln() / (-eps).ln_1p()).ceil().max(1.0) as usize
}

/// The default start of the walk for a sample of `total`: the most errors that could pass
/// within the top quarter of the sample.
pub fn auto_start_errors(total: usize, eps: f64, delta: f64) -> usize {
    let mut k = 0;
    while k < total && first_passable_n(k + 1, eps, delta) <= total / 4 {
        k += 1;
    }
    k
}

/// The smallest n at which `k` errors could pass the binomial test.
pub fn first_passable_n(k: usize, eps: f64, delta: f64) -> usize {
    let mut n = min_certifiable_n(eps, delta).max(k + 1);
    while binom_cdf(k, n, eps) > delta {
        n += 1;
    }
    n
}

/// Certifies a threshold from audited `(score, correct)` pairs.
pub fn certify(samples: &[(f64, bool)], opts: &CertifyOptions) -> Certificate {
    let mut sorted: Vec<(f64, bool)> = samples.iter().copied().filter(|(s, _)| s.is_finite()).collect();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total = sorted.len();
    let mut cert = Certificate {
        threshold: None,
        n: 0,
        errors: 0,
        coverage: 0.0,
        p_value: None,
        tested: 0,
        start_n: 0,
        epsilon: opts.epsilon,
        delta: opts.delta,
        sample: total,
    };
    // Candidate cut points: n = the count of scores at least a distinct score (ties kept
    // together). The walk starts at a depth chosen from the sample size, never from the
    // outcomes, so fixed-sequence testing stays valid: the textbook start (the first n where
    // zero errors could pass) ends the walk on the first error among the top few dozen
    // answers, where one unlucky draw decides everything; starting where a few errors could
    // pass trades the very top thresholds for a walk that survives them.
    let start_errors = opts.start_errors.unwrap_or_else(|| auto_start_errors(total, opts.epsilon, opts.delta));
    let start_n = opts.min_n.max(first_passable_n(start_errors, opts.epsilon, opts.delta));
    cert.start_n = start_n;
    let cuts = (0..total).filter(|&i| i + 1 == total || sorted[i + 1].0 < sorted[i].0).map(|i| i + 1);
    let mut errors_at = vec![0usize; total + 1];
    for (i, (_, ok)) in sorted.iter().enumerate() {
        errors_at[i + 1] = errors_at[i] + usize::from(!ok);
    }
    for n in cuts.filter(|&n| n >= start_n) {
        let k = errors_at[n];
        let p = match opts.p_value {
            PValue::Binomial => binom_cdf(k, n, opts.epsilon),
            PValue::HoeffdingBentkus => hb_pvalue(k, n, opts.epsilon),
        };
        cert.tested += 1;
        if p > opts.delta {
            break;
        }
        cert.threshold = Some(sorted[n - 1].0);
        cert.n = n;
        cert.errors = k;
        cert.p_value = Some(p);
        cert.coverage = n as f64 / total as f64;
    }
    cert
}

/// The naive threshold "the empirical error at or above λ is at most ε" (lowest such λ):
/// no guarantee; shown to violate far more often than δ.
pub fn empirical_threshold(samples: &[(f64, bool)], eps: f64) -> Option<f64> {
    let mut sorted: Vec<(f64, bool)> = samples.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut errors = 0usize;
    let mut best = None;
    for (i, (s, ok)) in sorted.iter().enumerate() {
        errors += usize::from(!ok);
        let last_of_tie = i + 1 == sorted.len() || sorted[i + 1].0 < *s;
        if last_of_tie && errors as f64 <= eps * (i + 1) as f64 {
            best = Some(*s);
        }
    }
    best
}

pub use crate::compare::SplitMix64;

/// The Clopper–Pearson interval of a binomial proportion, `k` successes in `n`, at level
/// 1 − `alpha` (two-sided): exact, by bisection on the binomial tails.
pub fn clopper_pearson(k: usize, n: usize, alpha: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let bisect = |f: &dyn Fn(f64) -> bool| {
        // f is true on [0, x*) and false on [x*, 1]: find x*.
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if f(mid) { lo = mid } else { hi = mid }
        }
        (lo + hi) / 2.0
    };
    // Lower: the p with P(X ≥ k | p) = α/2; upper: the p with P(X ≤ k | p) = α/2.
    let lower = if k == 0 { 0.0 } else { bisect(&|p| 1.0 - binom_cdf(k - 1, n, p) < alpha / 2.0) };
    let upper = if k == n { 1.0 } else { bisect(&|p| binom_cdf(k, n, p) > alpha / 2.0) };
    (lower, upper)
}

/// Isotonic regression (pool adjacent violators) of `y` on `x`: a nondecreasing step
/// function, returned as (x breakpoints ascending, fitted values).
pub fn isotonic(points: &[(f64, f64)]) -> (Vec<f64>, Vec<f64>) {
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Blocks: (first x, sum y, count).
    let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
    for (x, y) in p {
        blocks.push((x, y, 1.0));
        while blocks.len() > 1 {
            let n = blocks.len();
            let (a, b) = (blocks[n - 2], blocks[n - 1]);
            if a.1 / a.2 >= b.1 / b.2 {
                blocks.pop();
                blocks[n - 2] = (a.0, a.1 + b.1, a.2 + b.2);
            } else {
                break;
            }
        }
    }
    (blocks.iter().map(|b| b.0).collect(), blocks.iter().map(|b| b.1 / b.2).collect())
}

/// The isotonic fit's value at `x`.
pub fn isotonic_at(fit: &(Vec<f64>, Vec<f64>), x: f64) -> f64 {
    let (xs, ys) = fit;
    match xs.partition_point(|&b| b <= x) {
        0 => ys.first().copied().unwrap_or(0.0),
        i => ys[i - 1],
    }
}

/// Logistic regression by Newton's method (ridge-regularised): weights for `features` (a
/// bias is added), maximising the likelihood of `labels`.
pub fn logistic(features: &[Vec<f64>], labels: &[bool], ridge: f64, iterations: usize) -> Vec<f64> {
    let d = features.first().map_or(0, Vec::len) + 1;
    let mut w = vec![0.0; d];
    let row = |x: &[f64]| -> Vec<f64> { std::iter::once(1.0).chain(x.iter().copied()).collect() };
    for _ in 0..iterations {
        let mut grad = vec![0.0; d];
        let mut hess = vec![vec![0.0; d]; d];
        for (x, &y) in features.iter().zip(labels) {
            let x = row(x);
            let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let g = p - f64::from(u8::from(y));
            for i in 0..d {
                grad[i] += g * x[i];
                for j in 0..d {
                    hess[i][j] += p * (1.0 - p) * x[i] * x[j];
                }
            }
        }
        for i in 0..d {
            grad[i] += ridge * w[i];
            hess[i][i] += ridge;
        }
        // Solve hess · step = grad (Gauss–Jordan with partial pivoting; d is small).
        let mut a = hess;
        let mut b = grad;
        for col in 0..d {
            let piv = (col..d).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
            a.swap(col, piv);
            b.swap(col, piv);
            let pivot_row = a[col].clone();
            if pivot_row[col].abs() < 1e-12 {
                continue;
            }
            for r in (0..d).filter(|&r| r != col) {
                let f = a[r][col] / pivot_row[col];
                for (x, p) in a[r].iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
                b[r] -= f * b[col];
            }
        }
        let mut delta = 0.0f64;
        for i in 0..d {
            if a[i][i].abs() > 1e-12 {
                let s = b[i] / a[i][i];
                w[i] -= s;
                delta = delta.max(s.abs());
            }
        }
        if delta < 1e-9 {
            break;
        }
    }
    w
}

/// The logistic model's probability for `x`.
pub fn logistic_at(w: &[f64], x: &[f64]) -> f64 {
    let z = w[0] + x.iter().zip(&w[1..]).map(|(a, b)| a * b).sum::<f64>();
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_cdf_matches_closed_forms() {
        // P(Bin(10, 0.5) ≤ 3) = (1 + 10 + 45 + 120) / 1024
        assert!((binom_cdf(3, 10, 0.5) - 176.0 / 1024.0).abs() < 1e-12);
        assert!((binom_cdf(0, 45, 0.05) - 0.95f64.powi(45)).abs() < 1e-12);
        assert_eq!(binom_cdf(10, 10, 0.3), 1.0);
        // The exact sum in rational arithmetic (Python `fractions`, math.comb): 7.658846376635782e-07.
        let v = binom_cdf(20, 1000, 0.05);
        assert!((v / 7.658846376635782e-07 - 1.0).abs() < 1e-9, "{v}");
    }

    #[test]
    fn hoeffding_bentkus_is_a_valid_bound_above_the_binomial_tail() {
        for (k, n) in [(0, 50), (3, 200), (40, 1000)] {
            let hb = hb_pvalue(k, n, 0.05);
            assert!(hb >= binom_cdf(k, n, 0.05) - 1e-15, "{k}/{n}");
            assert!(hb <= 1.0);
        }
        assert_eq!(min_certifiable_n(0.05, 0.1), 45);
        // P(Bin(n, 0.05) ≤ k) ≤ 0.1 first at n = 45, 77, 105, 132 (math.comb sums).
        let firsts: Vec<usize> = (0..4).map(|k| first_passable_n(k, 0.05, 0.1)).collect();
        assert_eq!(firsts, [45, 77, 105, 132]);
        assert_eq!(auto_start_errors(500, 0.05, 0.1), 2);
        assert_eq!(auto_start_errors(100, 0.05, 0.1), 0);
    }

    #[test]
    fn certification_walks_down_and_stops_at_the_first_failure() {
        // 200 perfect answers scoring 0.9..1.0, then 200 with 20% errors below.
        let mut s: Vec<(f64, bool)> = (0..200).map(|i| (0.9 + i as f64 * 0.0005, true)).collect();
        s.extend((0..200).map(|i| (0.5 + i as f64 * 0.001, i % 5 != 0)));
        let c = certify(&s, &CertifyOptions::textbook(0.05, 0.1));
        let t = c.threshold.expect("the clean top certifies");
        assert!(t >= 0.5 && c.errors as f64 <= 0.05 * c.n as f64 + 5.0, "{c:?}");
        // Nothing certifies from an all-wrong sample.
        let bad: Vec<(f64, bool)> = (0..500).map(|i| (i as f64 / 500.0, false)).collect();
        assert_eq!(certify(&bad, &CertifyOptions::new(0.05, 0.1)).threshold, None);
        assert_eq!(empirical_threshold(&s, 0.05).map(|t| t < 0.9), Some(true));
    }

    #[test]
    fn clopper_pearson_matches_the_beta_quantiles() {
        // 3 of 100: the bounds where the exact tails (Python math.comb sums) equal 2.5%, the
        // Beta(3, 98) and Beta(4, 97) quantiles.
        let (lo, hi) = clopper_pearson(3, 100, 0.05);
        assert!((lo - 0.006_229_97).abs() < 1e-7 && (hi - 0.085_176_05).abs() < 1e-7, "{lo} {hi}");
        assert_eq!(clopper_pearson(0, 10, 0.05).0, 0.0);
        let mut r = SplitMix64::new(7);
        let s = r.sample(10, 4);
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|&i| i < 10) && s.iter().collect::<std::collections::HashSet<_>>().len() == 4);
    }

    #[test]
    fn isotonic_pools_violators_and_logistic_separates() {
        let fit = isotonic(&[(0.1, 1.0), (0.2, 0.0), (0.3, 1.0), (0.4, 1.0)]);
        assert_eq!(fit.1, vec![0.5, 1.0]);
        assert_eq!(isotonic_at(&fit, 0.15), 0.5);
        assert_eq!(isotonic_at(&fit, 0.35), 1.0);
        let x: Vec<Vec<f64>> = (0..100).map(|i| vec![i as f64 / 50.0 - 1.0]).collect();
        let y: Vec<bool> = (0..100).map(|i| i > 50 || i % 7 == 0).collect();
        let w = logistic(&x, &y, 1e-3, 50);
        assert!(logistic_at(&w, &[0.9]) > 0.8 && logistic_at(&w, &[-0.9]) < 0.3, "{w:?}");
    }
}
