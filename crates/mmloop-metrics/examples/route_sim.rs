//! The guarantee of `mmloop route`, measured: for audit samples of several sizes drawn from
//! populations with a known calibration curve, how often each procedure's certified set
//! really has error > ε (must stay ≤ δ), and the coverage it reaches against the oracle.
//!
//! ```sh
//! cargo run --release -p mmloop-metrics --example route_sim -- [TRIALS]
//! ```
//! Prints a Markdown table (docs/benchmarks.md, "Routing").

use mmloop_metrics::selective_sim::{Population, run};

fn main() {
    let trials: usize = std::env::args().nth(1).map_or(1000, |t| t.parse().expect("TRIALS is a number"));
    let (eps, delta, train_share) = (0.05, 0.1, 0.2);
    println!(
        "ε = {eps}, δ = {delta}, {trials} audit samples per row, calibrated score trained on {train_share} of each"
    );
    println!();
    println!(
        "| population | audit n | oracle coverage | procedure | P(error > ε) | median coverage | vs oracle | nothing certified |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    let populations =
        [("flags ×3", Population::default()), ("flags ×6", Population { flag_factor: 6.0, ..Population::default() })];
    for (name, pop) in populations {
        for n in [300, 500, 1000, 2000] {
            let r = run(&pop, n, trials, eps, delta, train_share, 7);
            for o in &r.outcomes {
                println!(
                    "| {name} | {n} | {:.3} | {} | {:.3} | {:.3} | {:.2} | {:.3} |",
                    r.oracle_coverage,
                    o.procedure,
                    o.violation_rate,
                    o.median_coverage,
                    o.coverage_vs_oracle,
                    o.none_rate
                );
            }
        }
    }
}
