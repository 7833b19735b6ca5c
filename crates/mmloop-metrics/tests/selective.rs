//! The guarantee of certified auto-acceptance, checked by simulation on data with a known
//! calibration curve (`selective_sim`): over many audit samples, the share whose certified
//! threshold lets through an error rate above ε stays within δ (plus Monte Carlo slack),
//! while the naive "empirical error ≤ ε" threshold breaks it about half the time.

use mmloop_metrics::selective_sim::{Population, run};

#[test]
fn certified_thresholds_keep_the_guarantee_and_naive_ones_do_not() {
    let (eps, delta, trials) = (0.05, 0.1, 300);
    let slack = 3.0 * (delta * (1.0 - delta) / trials as f64).sqrt();
    for n in [500, 1000] {
        let r = run(&Population::default(), n, trials, eps, delta, 0.2, 42 + n as u64);
        eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
        let get = |p: &str| r.outcomes.iter().find(|o| o.procedure == p).unwrap().clone();
        let (textbook, ours, calibrated, naive) =
            (get("textbook"), get("mmloop"), get("mmloop-calibrated"), get("naive"));
        for o in [&textbook, &ours, &calibrated] {
            assert!(o.violation_rate <= delta + slack, "n {n}: {o:?}");
        }
        assert!(naive.violation_rate > 0.3, "n {n}: the naive rule should break the guarantee: {naive:?}");
        assert!(ours.median_coverage >= textbook.median_coverage, "n {n}: {ours:?} vs {textbook:?}");
        assert!(calibrated.median_coverage > 0.0, "n {n}: {calibrated:?}");
        assert!(ours.median_coverage > 0.0 && ours.coverage_vs_oracle <= 1.05, "n {n}: {ours:?}");
    }
}
