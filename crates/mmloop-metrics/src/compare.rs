//! Offline A/B comparison of two prediction sets scored on the same items: the paired
//! bootstrap.
//!
//! Definition, so that anyone can reproduce a number exactly:
//! - `delta = mean(a) − mean(b)` over the n items (each mean a left-to-right sum / n).
//! - Resample b = 1..=B: draw n item indices uniformly with replacement, *the same indices
//!   for both systems* (that is what makes it paired), and record
//!   `delta*_b = mean(a[idx]) − mean(b[idx])`.
//! - Random numbers: SplitMix64 seeded with `seed`; an index in [0, n) is Lemire's
//!   unbiased multiply-shift (`(x as u128 * n) >> 64`, redrawing while the low 64 bits are
//!   below `2^64 mod n`).
//! - Confidence interval: numpy's default (`linear`) percentiles of the `delta*` at
//!   `100·α/2` and `100·(1 − α/2)`.
//! - Two-sided p-value for "no difference": the bootstrap distribution shifted to mean
//!   zero under the null, i.e. `p = #{b : |delta*_b − delta| ≥ |delta|} / B` — the two-sided
//!   form of the paired bootstrap test of Koehn (2004) and Berg-Kirkpatrick et al. (2012),
//!   who count `delta*_b > 2·delta`. With `delta = 0` it is 1.
//!
//! Pure and deterministic: the same inputs and seed give the same result on every platform.

use serde::Serialize;

use crate::pyfloat::np_percentile_sorted;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapOptions {
    /// Number of resamples B.
    pub resamples: usize,
    /// 1 − confidence level; 0.05 gives a 95% interval.
    pub alpha: f64,
    pub seed: u64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions { resamples: 10_000, alpha: 0.05, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairedBootstrap {
    pub mean_a: f64,
    pub mean_b: f64,
    /// mean_a − mean_b.
    pub delta: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: f64,
    pub resamples: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompareError {
    #[error("system A has {a} scored items but system B has {b}; compare on the same items")]
    LengthMismatch { a: usize, b: usize },
    #[error("no items to compare")]
    Empty,
    #[error("the bootstrap needs at least one resample")]
    NoResamples,
    #[error("alpha must lie in (0, 1), got {0}")]
    BadAlpha(f64),
}

/// SplitMix64 (Steele, Lea & Flood 2014): the generator behind the resampling, audit draws and
/// the simulations — reproducible from a recorded seed, and no dependency for so little.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n), n > 0, without modulo bias (Lemire 2019).
    pub fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
    /// Uniform in [0, 1) (the top 53 bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `k` distinct positions of `0..n` in random order (a partial Fisher–Yates shuffle).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

/// McNemar's exact test of two systems scored right/wrong on the same items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Items A gets right and B wrong, and the other way round.
    pub a_only: usize,
    pub b_only: usize,
    /// Two-sided: 2·P(Bin(a_only + b_only, ½) ≤ min), at most 1.
    pub p_value: f64,
}

/// McNemar's exact test on per-item scores, when every score is 0 or 1 (accuracy-type
/// metrics); `None` otherwise.
pub fn mcnemar_exact(a: &[f64], b: &[f64]) -> Option<McNemar> {
    let binary = |x: &f64| *x == 0.0 || *x == 1.0;
    if a.len() != b.len() || a.is_empty() || !a.iter().all(binary) || !b.iter().all(binary) {
        return None;
    }
    let a_only = a.iter().zip(b).filter(|(x, y)| **x == 1.0 && **y == 0.0).count();
    let b_only = a.iter().zip(b).filter(|(x, y)| **x == 0.0 && **y == 1.0).count();
    let n = a_only + b_only;
    let p_value = if n == 0 { 1.0 } else { (2.0 * crate::selective::binom_cdf(a_only.min(b_only), n, 0.5)).min(1.0) };
    Some(McNemar { a_only, b_only, p_value })
}

fn mean(xs: impl Iterator<Item = f64>, n: usize) -> f64 {
    xs.fold(0.0, |acc, x| acc + x) / n as f64
}

/// Paired bootstrap of `mean(a) − mean(b)`; `a[i]` and `b[i]` score the same item.
pub fn paired_bootstrap(a: &[f64], b: &[f64], options: BootstrapOptions) -> Result<PairedBootstrap, CompareError> {
    if a.len() != b.len() {
        return Err(CompareError::LengthMismatch { a: a.len(), b: b.len() });
    }
    if a.is_empty() {
        return Err(CompareError::Empty);
    }
    if options.resamples == 0 {
        return Err(CompareError::NoResamples);
    }
    if !(options.alpha > 0.0 && options.alpha < 1.0) {
        return Err(CompareError::BadAlpha(options.alpha));
    }
    let n = a.len();
    let mean_a = mean(a.iter().copied(), n);
    let mean_b = mean(b.iter().copied(), n);
    let delta = mean_a - mean_b;
    let mut rng = SplitMix64::new(options.seed);
    let mut deltas = Vec::with_capacity(options.resamples);
    for _ in 0..options.resamples {
        let (mut sa, mut sb) = (0.0, 0.0);
        for _ in 0..n {
            let i = rng.below(n as u64) as usize;
            sa += a[i];
            sb += b[i];
        }
        deltas.push(sa / n as f64 - sb / n as f64);
    }
    let extreme = deltas.iter().filter(|&&d| (d - delta).abs() >= delta.abs()).count();
    let p_value = extreme as f64 / options.resamples as f64;
    deltas.sort_by(f64::total_cmp);
    Ok(PairedBootstrap {
        mean_a,
        mean_b,
        delta,
        ci_low: np_percentile_sorted(&deltas, 100.0 * (options.alpha / 2.0)),
        ci_high: np_percentile_sorted(&deltas, 100.0 * (1.0 - options.alpha / 2.0)),
        p_value,
        resamples: options.resamples,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn mcnemar_exact_matches_the_binomial_tail() {
        // 10 items only A gets right, 2 only B: 2·P(Bin(12, ½) ≤ 2) = 2·79/4096.
        let mut a = vec![1.0; 10];
        a.extend([0.0, 0.0, 1.0, 0.0]);
        let mut b = vec![0.0; 10];
        b.extend([1.0, 1.0, 1.0, 0.0]);
        let m = mcnemar_exact(&a, &b).unwrap();
        assert_eq!((m.a_only, m.b_only), (10, 2));
        assert!((m.p_value - 2.0 * 79.0 / 4096.0).abs() < 1e-12, "{m:?}");
        assert!(mcnemar_exact(&[0.5, 1.0], &[1.0, 1.0]).is_none(), "not binary");
        assert_eq!(mcnemar_exact(&[1.0], &[1.0]).unwrap().p_value, 1.0);
    }

    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Vigna's splitmix64.c: state 0 first gives 0xe220a8397b1dcdaf.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn deterministic_and_sensible() {
        let a: Vec<f64> = (0..200).map(|i| if i % 10 < 7 { 1.0 } else { 0.0 }).collect();
        let b: Vec<f64> = (0..200).map(|i| if i % 10 < 5 { 1.0 } else { 0.0 }).collect();
        let opts = BootstrapOptions { resamples: 2000, alpha: 0.05, seed: 7 };
        let r1 = paired_bootstrap(&a, &b, opts).unwrap();
        let r2 = paired_bootstrap(&a, &b, opts).unwrap();
        assert_eq!(r1, r2);
        assert!((r1.delta - 0.2).abs() < 1e-12);
        assert!(r1.ci_low > 0.1 && r1.ci_high < 0.3 && r1.ci_low < r1.delta);
        assert!(r1.p_value < 0.01);
        let same = paired_bootstrap(&a, &a, opts).unwrap();
        assert_eq!(same.p_value, 1.0);
        assert_eq!(same.ci_low, 0.0);
    }
}
