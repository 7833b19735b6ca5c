//! The online A/B statistics of `mmloop_metrics::ab`, checked by simulation:
//! - assignment: 100,000 users at 50/50 pass the sample-ratio-mismatch test and keep their arm;
//! - A/A: experiments with no difference, peeked at every 100 outcomes per arm up to 20,000:
//!   how often the always-valid mSPRT declares a difference (must stay ≤ α) against naive
//!   repeated z-tests at the same looks;
//! - a +2 pp lift on an 80% base rate: when the mSPRT stops, against the fixed-horizon sample
//!   size of a z-test with 80% power.
//!
//! ```sh
//! cargo run --release -p mmloop-metrics --example ab_sim -- [EXPERIMENTS]
//! ```

use mmloop_metrics::ab::{AlwaysValid, ArmStats, assign, fixed_horizon_n, msprt, normal_quantile, srm_pvalue};
use mmloop_metrics::selective::SplitMix64;

const ALPHA: f64 = 0.05;
const PEEK: u64 = 100;
const MAX_N: u64 = 20_000;

/// Runs one experiment; returns (per-arm n at which the mSPRT rejected, whether a naive
/// z-test rejected at some look).
fn experiment(rng: &mut SplitMix64, p_a: f64, p_b: f64, tau2: f64) -> (Option<u64>, bool) {
    let (mut a, mut b) = (ArmStats::default(), ArmStats::default());
    let mut av = AlwaysValid::default();
    let (mut stop, mut naive) = (None, false);
    let z = normal_quantile(1.0 - ALPHA / 2.0);
    // Both run to the end, each with its own first rejection.
    for n in 1..=MAX_N {
        a.add(f64::from(u8::from(rng.next_f64() < p_a)));
        b.add(f64::from(u8::from(rng.next_f64() < p_b)));
        if n % PEEK == 0
            && let Some(s) = msprt(&a, &b, tau2, ALPHA)
        {
            av.look(&s);
            let se = (a.variance() / a.n as f64 + b.variance() / b.n as f64).sqrt();
            naive |= se > 0.0 && (s.difference / se).abs() > z;
            if stop.is_none() && av.p_value <= ALPHA {
                stop = Some(n);
            }
        }
    }
    (stop, naive)
}

fn main() {
    let experiments: usize = std::env::args().nth(1).map_or(2000, |t| t.parse().expect("EXPERIMENTS is a number"));
    // Assignment.
    let weights = [0.5, 0.5];
    let mut counts = [0u64; 2];
    let mut moved = 0;
    for i in 0..100_000 {
        let id = format!("user-{i}");
        let arm = assign("exp-route-v2", &id, &weights).expect("covered");
        counts[arm] += 1;
        moved += usize::from(assign("exp-route-v2", &id, &weights) != Some(arm));
    }
    println!(
        "assignment: 100,000 users -> {} / {}, SRM chi-square p = {:.3}, users whose arm changed on a second call: {moved}",
        counts[0],
        counts[1],
        srm_pvalue(&counts, &weights)
    );
    println!();
    println!(
        "| τ | A/A: mSPRT false positives | A/A: naive z-test at every look | +2 pp: stopped by 20,000 | +2 pp: median stop (per arm) | fixed horizon (80% power) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let horizon = fixed_horizon_n(0.8, 0.82, ALPHA, 0.8);
    for tau in [0.01, 0.02, 0.05] {
        let tau2 = tau * tau;
        let mut rng = SplitMix64::new(17);
        let (mut fp, mut naive) = (0, 0);
        for _ in 0..experiments {
            let (stop, z) = experiment(&mut rng, 0.8, 0.8, tau2);
            fp += usize::from(stop.is_some());
            naive += usize::from(z);
        }
        let mut stops: Vec<u64> =
            (0..experiments).map(|_| experiment(&mut rng, 0.8, 0.82, tau2).0.unwrap_or(u64::MAX)).collect();
        stops.sort_unstable();
        let stopped = stops.iter().filter(|&&s| s != u64::MAX).count();
        let median = stops[stops.len() / 2];
        println!(
            "| {tau} | {:.4} | {:.3} | {:.3} | {} | {:.0} |",
            fp as f64 / experiments as f64,
            naive as f64 / experiments as f64,
            stopped as f64 / experiments as f64,
            if median == u64::MAX { "> 20,000".to_string() } else { median.to_string() },
            horizon
        );
    }
    println!();
    println!("{experiments} experiments per cell, α = {ALPHA}, a look every {PEEK} outcomes per arm up to {MAX_N}.");
}
