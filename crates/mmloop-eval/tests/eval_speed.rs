//! Where the time of an evaluation goes, phase by phase, on a COCO caption corpus written
//! by `tools/metrics_reference/caption_speed.py --mmloop ...` (its `--coco-dir`). Ignored:
//! run in release with
//! `MMLOOP_EVAL_BENCH=/tmp/caption_speed_coco cargo test --release -p mmloop-eval --test eval_speed -- --ignored --nocapture`.

use std::path::Path;
use std::time::Instant;

use mmloop_eval::report::{ReportOptions, write_outputs};
use mmloop_eval::{EvalOptions, Metric, RefOptions, evaluate, read_predictions, read_references};

#[test]
#[ignore = "needs MMLOOP_EVAL_BENCH; timing, run in release"]
fn caption_evaluation_phases() {
    let dir = std::env::var("MMLOOP_EVAL_BENCH").expect("set MMLOOP_EVAL_BENCH");
    let dir = Path::new(&dir);
    let t = Instant::now();
    let preds = read_predictions(&dir.join("captions_results.json")).unwrap();
    let t_preds = t.elapsed();
    let t = Instant::now();
    let refs = read_references(&dir.join("captions_refs.json"), &RefOptions::default()).unwrap();
    let t_refs = t.elapsed();
    let opts =
        EvalOptions { metrics: Some(vec![Metric::Bleu, Metric::RougeL, Metric::Cider]), ..EvalOptions::default() };
    let t = Instant::now();
    let ev = evaluate(&preds, &refs, None, &opts).unwrap();
    let t_eval = t.elapsed();
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    write_outputs(&ev, out.path(), &ReportOptions::default()).unwrap();
    let t_write = t.elapsed();
    let t = Instant::now();
    drop((ev, refs, preds));
    let t_drop = t.elapsed();
    eprintln!(
        "predictions {t_preds:?}, references {t_refs:?}, evaluate {t_eval:?}, write {t_write:?}, drop {t_drop:?}"
    );
}

/// VQA accuracy on a VQAv2 annotations file and VQA results written by
/// `tools/bench/gen_vqa_eval.py DIR` (200,000 questions x 10 answers by default):
/// `MMLOOP_VQA_BENCH=DIR cargo test --release -p mmloop-eval --test eval_speed -- --ignored --nocapture`.
#[test]
#[ignore = "needs MMLOOP_VQA_BENCH; timing, run in release"]
fn vqa_evaluation_phases() {
    let dir = std::env::var("MMLOOP_VQA_BENCH").expect("set MMLOOP_VQA_BENCH");
    let dir = Path::new(&dir);
    let t = Instant::now();
    let preds = read_predictions(&dir.join("results.json")).unwrap();
    let t_preds = t.elapsed();
    let t = Instant::now();
    let refs = read_references(&dir.join("annotations.json"), &RefOptions::default()).unwrap();
    let t_refs = t.elapsed();
    let opts = EvalOptions { metrics: Some(vec![Metric::VqaAcc]), ..EvalOptions::default() };
    let t = Instant::now();
    let ev = evaluate(&preds, &refs, None, &opts).unwrap();
    let t_eval = t.elapsed();
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    write_outputs(&ev, out.path(), &ReportOptions::default()).unwrap();
    let t_write = t.elapsed();
    eprintln!(
        "{} questions: predictions {t_preds:?}, references {t_refs:?}, evaluate {t_eval:?}, write {t_write:?} (vqa_acc {})",
        ev.scored, ev.metrics[0].value
    );
}
