//! `mmloop audit-sample`, `mmloop route` and `mmloop route threshold` from the command line:
//! a project pre-annotated with answers whose correctness is known, an audit decided by
//! "reviewers", a certified run that auto-accepts, exports and undoes.

mod common;

use std::io::Write;

use common::{fails, json, ok};
use mmloop_core::{Answer, LabelStatus};
use mmloop_metrics::selective::{CertifyOptions, certify};
use mmloop_store::{LabelSave, Store};

/// Item i's confidence and whether its answer is right: above 0.5 always, below one in three.
fn truth(i: i64) -> (f64, bool) {
    let conf = ((i * 613) % 997) as f64 / 997.0;
    (conf, conf > 0.5 || i % 3 == 0)
}

#[test]
fn route_threshold_certifies_from_a_file_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    let rows: Vec<(f64, bool)> = (0..800).map(|i| truth(i + 1)).collect();
    for (s, c) in &rows {
        writeln!(f, "{{\"score\": {s}, \"correct\": {c}}}").unwrap();
    }
    drop(f);
    let p = path.to_str().unwrap();
    let out = json(&["route", "threshold", "--calibration", p, "--epsilon", "0.05", "--delta", "0.1"]);
    let want = certify(&rows, &CertifyOptions::new(0.05, 0.1));
    let t = out["threshold"].as_f64().expect("certified");
    assert_eq!(Some(t), want.threshold);
    assert!(t > 0.45, "{out}");
    assert_eq!(out["n"].as_u64(), Some(want.n as u64));
    assert_eq!(out["errors"].as_u64(), Some(want.errors as u64));
    assert!(out["p_value"].as_f64().unwrap() <= 0.1 && out["coverage"].as_f64().unwrap() > 0.4, "{out}");
    // Too strict to certify: threshold null, not an error.
    let none = json(&["route", "threshold", "--calibration", p, "--epsilon", "0.001", "--delta", "0.01"]);
    assert!(none["threshold"].is_null(), "{none}");
    // The textbook start certifies no more than the default start here.
    let textbook = json(&["route", "threshold", "--calibration", p, "--start-errors", "0"]);
    assert!(textbook["coverage"].as_f64().unwrap() <= out["coverage"].as_f64().unwrap() + 1e-12);
    std::fs::write(&path, "{\"score\": 0.5, \"correct\": true}\n{\"score\": \"high\"}\n").unwrap();
    let err = fails(&["route", "threshold", "--calibration", p]);
    assert!(err.contains("scores.jsonl:2"), "{err}");
    let err = fails(&["route", "threshold", "--calibration", p, "--epsilon", "1.5"]);
    assert!(err.contains("--epsilon"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_then_route_auto_accepts_exports_and_undoes() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    common::images(&imgs, 400);
    let proj = dir.path().join("p");
    let projs = proj.to_str().unwrap();
    ok(&["init", projs]);
    ok(&["import", projs, imgs.to_str().unwrap(), "--question", "What colour is it?"]);
    let err = fails(&["route", projs, "--dry-run"]);
    assert!(err.contains("no audit sample") && err.contains("audit-sample"), "{err}");
    let err = fails(&["audit-sample", projs, "--size", "10"]);
    assert!(err.contains("mmloop infer"), "{err}");
    {
        // Model answers, as `mmloop infer` stores them.
        let store = Store::open(&proj).await.unwrap();
        let rows = (1..=400i64)
            .map(|i| {
                let c = mmloop_core::Candidate {
                    answer: "blue".into(),
                    confidence: Some(truth(i).0),
                    ..Default::default()
                };
                mmloop_store::NewCandidate::answered(i, c)
            })
            .collect();
        store.add_candidates(None, "m", mmloop_core::Digest([0; 32]), "test", rows).await.unwrap();
        store.close();
    }
    let s = json(&["audit-sample", projs, "--size", "250", "--seed", "9"]);
    assert_eq!((s["size"].as_u64(), s["pool"].as_u64(), s["seed"].as_u64()), (Some(250), Some(400), Some(9)));
    // Reviewers decide the sample: right answers accepted, wrong ones edited.
    let store = Store::open(&proj).await.unwrap();
    for a in store.audited(None).await.unwrap() {
        let right = truth(a.item_id).1;
        let save = LabelSave {
            status: if right { LabelStatus::Accepted } else { LabelStatus::Edited },
            answer: Answer::text(if right { "blue" } else { "green" }),
            base: None,
            actor: "reviewer".into(),
            action: if right { "accept" } else { "edit" }.into(),
            lead_time_ms: Some(900),
        };
        store.save_label(a.item_id, save).await.unwrap();
    }
    store.close();
    let listed = json(&["audit-sample", projs]);
    assert_eq!(listed[0]["decided"].as_u64(), Some(250));

    let dry = json(&["route", projs, "--dry-run"]);
    assert!(dry["applied"].is_null());
    let accepted = dry["plan"]["accepted"].as_u64().unwrap();
    assert!(accepted > 40, "{dry}");
    assert_eq!(dry["plan"]["pool"].as_u64(), Some(150));
    let cal = json(&["route", projs, "--dry-run", "--score", "calibrated"]);
    assert!(cal["plan"]["groups"][0]["calibrator"]["trained_on"].as_u64() == Some(50), "{cal}");
    // Hoeffding–Bentkus is valid for any bounded loss and never less conservative than the binomial tail.
    let hb = json(&["route", projs, "--dry-run", "--p-value", "hb"]);
    assert_eq!(hb["plan"]["options"]["p_value"], "hoeffding_bentkus");
    assert!(hb["plan"]["accepted"].as_u64().unwrap() <= accepted, "{hb}");
    assert!(fails(&["route", projs, "--dry-run", "--p-value", "z"]).contains("binomial or hb"));

    let run = json(&["route", projs, "--audit-rate", "0.1"]);
    let applied = &run["applied"];
    assert_eq!(applied["accepted"].as_u64(), Some(accepted));
    let run_id = applied["run_id"].as_i64().unwrap().to_string();
    assert_eq!(applied["drift_size"].as_u64(), Some((accepted as f64 * 0.1).ceil() as u64));

    // Exports trust auto-accepted answers: 250 reviewed + the accepted ones.
    ok(&["commit", projs, "-m", "routed"]);
    let out = dir.path().join("out.jsonl");
    let ex = json(&["export", projs, "--format", "swift", "-o", out.to_str().unwrap()]);
    let rows = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!(rows, 250 + accepted, "{ex}");

    let undone = json(&["route", "undo", projs, &run_id]);
    assert_eq!(undone["reverted"].as_u64(), Some(accepted));
    let again = json(&["route", projs, "--dry-run"]);
    assert_eq!(again["plan"]["pool"].as_u64(), Some(150), "undone answers are pending again");
    let err = fails(&["route", "undo", projs, "1"]);
    assert!(err.contains("not a route run"), "{err}");
    ok(&["audit", "verify", projs]);
}
