//! pycocoevalcap 1.2 caption metrics, Java 17 PTB tokenizer (CoreNLP 3.4.1) and
//! METEOR 1.5 jar, against `tests/fixtures/metrics/captions.json` (made by
//! `tools/metrics_reference/caption_reference.py`, numpy 2.4.6, Python 3.11.7).
//!
//! Every corpus and per-image score must be within 1e-9; the tests also require bit
//! equality for BLEU, ROUGE-L and CIDEr-D, and print the largest METEOR difference (the
//! jar's `Math.pow` is not glibc's, see `meteor.rs`).

use mmloop_metrics::coco::{CaptionImage, Tokenized, evaluate, score_tokenized};
use mmloop_metrics::meteor::{MeteorStats, evaluate as meteor_evaluate};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/metrics/captions.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect()
}

/// Largest |a - b|; panics beyond `TOL`, or on any difference when `exact`.
fn compare(what: &str, got: &[f64], want: &[f64], exact: bool) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut max = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(d <= TOL, "{what}[{i}]: rust {g} vs pycocoevalcap {w}");
        if exact {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: rust {g:e} vs pycocoevalcap {w:e}");
        }
        max = max.max(d);
    }
    max
}

/// Checks every score of one corpus; returns the largest METEOR difference.
fn check_scores(name: &str, got: &mmloop_metrics::coco::CaptionScores, want: &Value) -> f64 {
    compare(&format!("{name} Bleu"), &got.bleu, &f64s(&want["Bleu"]), true);
    let per_bleu: Vec<Vec<f64>> = want["Bleu_per_image"].as_array().unwrap().iter().map(f64s).collect();
    for k in 0..4 {
        let g: Vec<f64> = got.per_image.iter().map(|s| s.bleu[k]).collect();
        let w: Vec<f64> = per_bleu.iter().map(|s| s[k]).collect();
        compare(&format!("{name} Bleu_{} per image", k + 1), &g, &w, true);
    }
    let st = &want["bleu_stats"];
    assert_eq!(got.bleu_stats.testlen, st["testlen"].as_u64().unwrap(), "{name} testlen");
    assert_eq!(got.bleu_stats.reflen, st["reflen"].as_u64().unwrap(), "{name} reflen");
    for k in 0..4 {
        assert_eq!(got.bleu_stats.guess[k], st["guess"][k].as_u64().unwrap(), "{name} guess");
        assert_eq!(got.bleu_stats.correct[k], st["correct"][k].as_u64().unwrap(), "{name} correct");
    }
    compare(&format!("{name} ROUGE_L"), &[got.rouge_l], &[want["ROUGE_L"].as_f64().unwrap()], true);
    let g: Vec<f64> = got.per_image.iter().map(|s| s.rouge_l).collect();
    compare(&format!("{name} ROUGE_L per image"), &g, &f64s(&want["ROUGE_L_per_image"]), true);
    compare(&format!("{name} CIDEr"), &[got.cider], &[want["CIDEr"].as_f64().unwrap()], true);
    let g: Vec<f64> = got.per_image.iter().map(|s| s.cider).collect();
    compare(&format!("{name} CIDEr per image"), &g, &f64s(&want["CIDEr_per_image"]), true);

    let stats: Vec<MeteorStats> =
        strings(&want["meteor_stats"]).iter().map(|l| MeteorStats::parse(l).unwrap()).collect();
    let (per, corpus) = meteor_evaluate(&stats);
    let a = compare(&format!("{name} METEOR"), &[corpus], &[want["METEOR"].as_f64().unwrap()], false);
    let b = compare(&format!("{name} METEOR per image"), &per, &f64s(&want["METEOR_per_image"]), false);
    a.max(b)
}

fn images(corpus: &Value) -> Vec<CaptionImage<String>> {
    corpus["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| CaptionImage {
            references: strings(&im["references"]),
            prediction: im["prediction"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// pycocoevalcap 1.2 scorers on the tokenized toy vector of eval-metrics.md.
#[test]
fn toy_vector_matches_pycocoevalcap_1_2() {
    let fx = fixture();
    let toy = &fx["corpora"]["toy"];
    assert_eq!(toy["matches_eval_metrics_md"], Value::Bool(true));
    let keys = ["1", "2", "3"];
    let t = Tokenized {
        references: keys.iter().map(|k| strings(&toy["gts"][k])).collect(),
        predictions: keys.iter().map(|k| toy["res"][k][0].as_str().unwrap().to_owned()).collect(),
    };
    let d = check_scores("toy", &score_tokenized(&t), &toy["scores"]);
    eprintln!("toy: METEOR max |rust - jar| = {d:e}");
}

/// The whole pycocoevalcap 1.2 pipeline (Java 17 PTB tokenizer, BLEU, ROUGE-L, CIDEr-D,
/// METEOR 1.5 statistics) on raw captions, in three corpora.
#[test]
fn raw_caption_corpora_match_pycocoevalcap_1_2() {
    let fx = fixture();
    let corpora = &fx["corpora"];
    let mut n_images = 0;
    for name in ["mixed", "single"] {
        let c = &corpora[name];
        let ims = images(c);
        n_images += ims.len();
        let (tok, scores) = evaluate(&ims);
        let want_refs: Vec<Vec<String>> =
            c["tokenized"]["references"].as_array().unwrap().iter().map(strings).collect();
        assert_eq!(tok.references, want_refs, "{name}: tokenized references");
        assert_eq!(tok.predictions, strings(&c["tokenized"]["predictions"]), "{name}: tokenized predictions");
        let d = check_scores(name, &scores, &c["scores"]);
        eprintln!("{name}: {} images, METEOR max |rust - jar| = {d:e}", ims.len());
    }
    // Same images, reverse order: numpy's pairwise means see another order.
    let mut ims = images(&corpora["mixed"]);
    ims.reverse();
    let (_, scores) = evaluate(&ims);
    let d = check_scores("mixed_reversed", &scores, &corpora["mixed_reversed"]["scores"]);
    eprintln!("mixed_reversed: METEOR max |rust - jar| = {d:e}");
    assert!(n_images >= 300);
}
