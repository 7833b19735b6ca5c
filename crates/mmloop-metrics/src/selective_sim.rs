//! A simulation that checks [`crate::selective::certify`]'s guarantee on data whose
//! calibration curve is known, and measures what it costs: the realised violation rate over
//! many audit samples, and the coverage reached against the textbook procedure, the oracle
//! threshold and the naive "empirical error ≤ ε" rule.
//!
//! Scores follow density 2s on [0, 1] (most answers confident) and an answer scoring s is
//! wrong with probability `a·(1 − s)^b`; a second population carries a risk flag that makes
//! answers wrong `flag_factor` times as often at the same score (for the calibrated score).
//! Deterministic (SplitMix64 seeds).

use serde::Serialize;

use crate::selective::{CertifyOptions, SplitMix64, certify, empirical_threshold, logistic, logistic_at};

/// The population the audit samples are drawn from.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Population {
    pub a: f64,
    pub b: f64,
    /// Share of answers with a risk flag.
    pub flagged: f64,
    pub flag_factor: f64,
}

impl Default for Population {
    fn default() -> Self {
        Population { a: 0.6, b: 1.5, flagged: 0.15, flag_factor: 3.0 }
    }
}

impl Population {
    fn error(&self, s: f64, flag: bool) -> f64 {
        (self.a * (1.0 - s).powf(self.b) * if flag { self.flag_factor } else { 1.0 }).min(1.0)
    }

    /// True error rate and coverage of "accept when score(s, flag) ≥ λ", by quadrature over
    /// the score density and the two flag states.
    pub fn truth(&self, score: &dyn Fn(f64, bool) -> f64, lambda: f64) -> (f64, f64) {
        const STEPS: usize = 20_000;
        let (mut mass, mut err) = (0.0, 0.0);
        for i in 0..STEPS {
            let s = (i as f64 + 0.5) / STEPS as f64;
            let density = 2.0 * s / STEPS as f64;
            for (flag, w) in [(false, 1.0 - self.flagged), (true, self.flagged)] {
                if score(s, flag) >= lambda {
                    mass += density * w;
                    err += density * w * self.error(s, flag);
                }
            }
        }
        (if mass > 0.0 { err / mass } else { 0.0 }, mass)
    }
}

/// One audited answer: score, flag, correct.
fn draw(pop: &Population, rng: &mut SplitMix64, n: usize) -> Vec<(f64, bool, bool)> {
    (0..n)
        .map(|_| {
            let s = rng.next_f64().sqrt();
            let flag = rng.next_f64() < pop.flagged;
            let correct = rng.next_f64() >= pop.error(s, flag);
            (s, flag, correct)
        })
        .collect()
}

/// The results of one procedure over all trials.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub procedure: String,
    /// Share of trials whose certified set's true error exceeds ε.
    pub violation_rate: f64,
    pub median_coverage: f64,
    /// Median coverage over the oracle threshold's coverage.
    pub coverage_vs_oracle: f64,
    /// Share of trials certifying nothing.
    pub none_rate: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub n: usize,
    pub trials: usize,
    pub epsilon: f64,
    pub delta: f64,
    pub oracle_threshold: f64,
    pub oracle_coverage: f64,
    pub outcomes: Vec<Outcome>,
}

/// The lowest confidence threshold whose true error is at most ε (bisection on the
/// monotone curve of the unflagged-blind score).
fn oracle(pop: &Population, eps: f64) -> (f64, f64) {
    let score = |s: f64, _: bool| s;
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..50 {
        let mid = (lo + hi) / 2.0;
        if pop.truth(&score, mid).0 <= eps { hi = mid } else { lo = mid }
    }
    (hi, pop.truth(&score, hi).1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A score of (confidence, flag).
type Score<'a> = &'a dyn Fn(f64, bool) -> f64;

/// The features of the learned score: the confidence's log-odds and the flag.
fn features(s: f64, flag: bool) -> Vec<f64> {
    let s = s.clamp(1e-6, 1.0 - 1e-6);
    vec![(s / (1.0 - s)).ln(), f64::from(u8::from(flag))]
}

/// Runs `trials` audit samples of size `n`; `train_share` of each sample learns the
/// calibrated score and the rest certifies it.
pub fn run(pop: &Population, n: usize, trials: usize, eps: f64, delta: f64, train_share: f64, seed: u64) -> Report {
    let (oracle_t, oracle_cov) = oracle(pop, eps);
    let conf = |s: f64, _: bool| s;
    let names = ["textbook", "mmloop", "mmloop-calibrated", "naive"];
    let mut coverage: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut violations = vec![0usize; names.len()];
    let mut nones = vec![0usize; names.len()];
    let mut rng = SplitMix64::new(seed);
    for _ in 0..trials {
        let sample = draw(pop, &mut rng, n);
        let pairs: Vec<(f64, bool)> = sample.iter().map(|&(s, _, c)| (s, c)).collect();
        let textbook = certify(&pairs, &CertifyOptions::textbook(eps, delta));
        let ours = certify(&pairs, &CertifyOptions::new(eps, delta));
        let (train, hold) = sample.split_at((n as f64 * train_share) as usize);
        let w = logistic(
            &train.iter().map(|&(s, f, _)| features(s, f)).collect::<Vec<_>>(),
            &train.iter().map(|&(_, _, c)| c).collect::<Vec<_>>(),
            1e-2,
            30,
        );
        let calibrated = |s: f64, f: bool| logistic_at(&w, &features(s, f));
        let hold_pairs: Vec<(f64, bool)> = hold.iter().map(|&(s, f, c)| (calibrated(s, f), c)).collect();
        let cal = certify(&hold_pairs, &CertifyOptions::new(eps, delta));
        let naive = empirical_threshold(&pairs, eps);
        let results: [(Option<f64>, Score); 4] =
            [(textbook.threshold, &conf), (ours.threshold, &conf), (cal.threshold, &calibrated), (naive, &conf)];
        for (i, (t, score)) in results.into_iter().enumerate() {
            match t {
                None => {
                    coverage[i].push(0.0);
                    nones[i] += 1;
                }
                Some(t) => {
                    let (err, cov) = pop.truth(score, t);
                    coverage[i].push(cov);
                    violations[i] += usize::from(err > eps);
                }
            }
        }
    }
    let outcomes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let m = median(std::mem::take(&mut coverage[i]));
            Outcome {
                procedure: name.to_string(),
                violation_rate: violations[i] as f64 / trials as f64,
                median_coverage: m,
                coverage_vs_oracle: m / oracle_cov,
                none_rate: nones[i] as f64 / trials as f64,
            }
        })
        .collect();
    Report { n, trials, epsilon: eps, delta, oracle_threshold: oracle_t, oracle_coverage: oracle_cov, outcomes }
}
