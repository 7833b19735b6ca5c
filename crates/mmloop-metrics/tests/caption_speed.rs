//! Speed of the caption pipeline against pycocoevalcap 1.2 on the same corpus, and parity
//! on every score of it. Needs a corpus made by `tools/metrics_reference/caption_speed.py`
//! (25,000 images x 5 references by default); run in release:
//! `MMLOOP_CAPTION_BENCH=/tmp/caption_speed.json cargo test --release -p mmloop-metrics
//! --test caption_speed -- --ignored --nocapture`.

use std::time::Instant;

use mmloop_metrics::bleu::bleu;
use mmloop_metrics::cider::cider_d;
use mmloop_metrics::coco::{CaptionImage, evaluate, tokenize};
use mmloop_metrics::rouge::rouge_l;
use serde_json::Value;

#[test]
#[ignore = "needs MMLOOP_CAPTION_BENCH from tools/metrics_reference/caption_speed.py"]
fn caption_pipeline_speed_and_parity_against_pycocoevalcap_1_2() {
    let path = std::env::var("MMLOOP_CAPTION_BENCH").expect("set MMLOOP_CAPTION_BENCH");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let images: Vec<CaptionImage<String>> = fx["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| CaptionImage {
            references: im["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect(),
            prediction: im["prediction"].as_str().unwrap().to_owned(),
        })
        .collect();
    let t0 = Instant::now();
    let tok = tokenize(&images);
    let t_tok = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let b = bleu(&tok.predictions, &tok.references);
    let t_bleu = t1.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let r = rouge_l(&tok.predictions, &tok.references);
    let t_rouge = t1.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let c = cider_d(&tok.predictions, &tok.references);
    let t_cider = t1.elapsed().as_secs_f64();
    drop((b, r, c));
    eprintln!("tokenize {t_tok:.3} s, bleu {t_bleu:.3} s, rouge {t_rouge:.3} s, cider {t_cider:.3} s");
    let t0 = Instant::now();
    let (_, got) = evaluate(&images);
    let rust = t0.elapsed().as_secs_f64();
    let py = fx["seconds"]["total"].as_f64().unwrap();
    eprintln!("{} images: rust {rust:.3} s, pycocoevalcap {py:.2} s ({:.0}x)", images.len(), py / rust);

    let want = &fx["scores"];
    let mut max = [0.0f64; 3];
    for k in 0..4 {
        assert_eq!(got.bleu[k], want["Bleu"][k].as_f64().unwrap(), "Bleu_{}", k + 1);
    }
    assert_eq!(got.rouge_l, want["ROUGE_L"].as_f64().unwrap());
    assert_eq!(got.cider, want["CIDEr"].as_f64().unwrap());
    for (i, s) in got.per_image.iter().enumerate() {
        for k in 0..4 {
            max[0] = max[0].max((s.bleu[k] - want["Bleu_per_image"][i][k].as_f64().unwrap()).abs());
        }
        max[1] = max[1].max((s.rouge_l - want["ROUGE_L_per_image"][i].as_f64().unwrap()).abs());
        max[2] = max[2].max((s.cider - want["CIDEr_per_image"][i].as_f64().unwrap()).abs());
    }
    eprintln!("max per-image |rust - pycocoevalcap|: BLEU {:e}, ROUGE_L {:e}, CIDEr {:e}", max[0], max[1], max[2]);
    assert_eq!(max, [0.0; 3]);
}
