//! `mmloop ab status`: an experiment's exposures and outcomes, as `mmloop serve --experiment`
//! records them, read back with the always-valid comparison and the sample-ratio check.

mod common;

use common::{fails, json, ok};
use mmloop_store::Store;
use mmloop_store::ab::{Arm, Experiment, Exposure, OutcomeKind};

async fn record(store: &Store, exp: &str, arm: &str, n: usize, success_every: usize, tag: &str) {
    for i in 0..n {
        let id = format!("chatcmpl-{tag}-{arm}-{i}");
        store
            .ab_expose(Exposure {
                experiment: exp.into(),
                request_id: id.clone(),
                user_id: Some(format!("u{tag}{i}")),
                arm: arm.into(),
                latency_ms: 120.0,
                prompt_tokens: 50,
                completion_tokens: 8,
                confidence: Some(0.7),
            })
            .await
            .unwrap();
        let outcome = if i % success_every == 0 { OutcomeKind::Reject } else { OutcomeKind::Accept };
        store.ab_outcome(&id, outcome, None, "test").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_compares_arms_with_an_always_valid_test_and_checks_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p");
    let projs = proj.to_str().unwrap();
    ok(&["init", projs]);
    let store = Store::open(&proj).await.unwrap();
    let e = Experiment {
        name: "exp".into(),
        seed: "exp".into(),
        arms: vec![Arm { name: "a".into(), model: "base".into() }, Arm { name: "b".into(), model: "v3".into() }],
        weights: vec![0.5, 0.5],
    };
    store.ab_start(e.clone(), "test").await.unwrap();
    // The same experiment again continues it; other weights are refused.
    store.ab_start(e.clone(), "test").await.unwrap();
    let moved = Experiment { weights: vec![0.2, 0.8], ..e.clone() };
    assert!(store.ab_start(moved, "test").await.unwrap_err().to_string().contains("other arms or weights"));
    // a accepts 1 in 2 answers, b 9 in 10.
    record(&store, "exp", "a", 300, 2, "x").await;
    record(&store, "exp", "b", 300, 10, "x").await;
    assert!(store.ab_outcome("nope", OutcomeKind::Accept, None, "t").await.is_err());
    assert!(store.ab_outcome("chatcmpl-x-a-1", OutcomeKind::Value, Some(2.0), "t").await.is_err());
    store.close();

    let s = json(&["ab", "status", projs, "exp"]);
    assert_eq!((s["arms"][0]["exposures"].as_u64(), s["arms"][0]["units"].as_u64()), (Some(300), Some(300)));
    assert!((s["arms"][1]["unit_sum"].as_f64().unwrap() - 270.0).abs() < 1e-9, "{s}");
    assert!(s["srm_p_value"].as_f64().unwrap() > 0.99);
    let c = &s["comparisons"][0];
    assert!((c["sequential"]["difference"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{c}");
    assert!(c["sequential"]["p_value"].as_f64().unwrap() < 1e-6);
    assert!(c["sequential"]["low"].as_f64().unwrap() < 0.4 && c["sequential"]["high"].as_f64().unwrap() > 0.4);
    assert!(c["recommendation"].as_str().unwrap().starts_with("stop: better"), "{c}");
    // The looks the plots draw: users in order, the last with everyone and the status's numbers.
    let looks = s["trajectory"].as_array().unwrap();
    assert!(looks.len() > 40 && looks.len() <= 80, "{} looks", looks.len());
    assert!(looks.windows(2).all(|w| w[0]["units"].as_u64() < w[1]["units"].as_u64()));
    let last = looks.last().unwrap();
    assert_eq!(last["units"].as_u64(), Some(600));
    assert_eq!(last["comparisons"][0], c["sequential"]);
    // The HTML report: both plots, every arm, the verdict, nothing unescaped.
    let html_path = dir.path().join("exp.html");
    ok(&["ab", "status", projs, "exp", "--html", html_path.to_str().unwrap()]);
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "two plots");
    assert!(html.contains("Success rate by arm") && html.contains("Difference from a"));
    assert!(html.contains("stop: better than the control") && html.contains(">v3<"));
    assert!(!html.contains("<script"));
    // The audit log holds the experiment, its exposures and outcomes.
    let audit = json(&["audit", "verify", projs]);
    assert_eq!(audit["problems"], serde_json::json!([]), "{audit}");
    assert!(audit["events"].as_u64().unwrap() >= 1 + 1 + 600 + 600, "init, start, exposures, outcomes: {audit}");

    // A user is one unit however many requests they send: 50 more requests of user ux0 in arm a
    // change neither the user count nor (with outcomes like their first) the comparison much.
    let store = Store::open(&proj).await.unwrap();
    for i in 0..50 {
        let id = format!("chatcmpl-repeat-{i}");
        store
            .ab_expose(Exposure {
                experiment: "exp".into(),
                request_id: id.clone(),
                user_id: Some("ux0".into()),
                arm: "a".into(),
                latency_ms: 100.0,
                prompt_tokens: 50,
                completion_tokens: 8,
                confidence: None,
            })
            .await
            .unwrap();
        store.ab_outcome(&id, OutcomeKind::Reject, None, "test").await.unwrap();
    }
    store.close();
    let s = json(&["ab", "status", projs, "exp"]);
    assert_eq!((s["arms"][0]["exposures"].as_u64(), s["arms"][0]["units"].as_u64()), (Some(350), Some(300)));
    assert!(s["srm_p_value"].as_f64().unwrap() > 0.99, "the split is by user: {s}");

    // A broken split wins over any difference.
    let store = Store::open(&proj).await.unwrap();
    record(&store, "exp", "b", 200, 10, "y").await;
    store.close();
    let s = json(&["ab", "status", projs, "exp"]);
    assert!(s["srm_p_value"].as_f64().unwrap() < 0.001, "{s}");
    assert!(s["comparisons"][0]["recommendation"].as_str().unwrap().contains("sample ratio mismatch"));
    let err = fails(&["ab", "status", projs, "nope"]);
    assert!(err.contains("no experiment") && err.contains("--experiment"), "{err}");
}
