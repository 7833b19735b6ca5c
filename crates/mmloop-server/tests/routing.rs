//! Routing with a guarantee, end to end through a real server: an audit sample is served
//! first in its random order without the model's confidence, reviewers' decisions become
//! verdicts, a certified threshold auto-accepts pending answers in one audited run, a drift
//! sample of them comes back to review, the stats page reports it all, and undo reverts.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{Project, Server, Spec, id_of};
use mmloop_core::LabelStatus;
use mmloop_server::ServerConfig;
use mmloop_store::review::Role;
use mmloop_store::route_plan::{RouteOptions, plan};
use mmloop_store::{RouteApply, SampleKind, SampleOptions, Verdict};
use serde_json::{Value, json};

const N: i64 = 600;

/// Item i's confidence, and whether its model answer is right: every answer above 0.6 is,
/// below it one in two.
fn truth(i: i64) -> (f64, bool) {
    let conf = ((i * 7919) % 1000) as f64 / 1000.0;
    (conf, conf > 0.6 || i % 2 == 0)
}

async fn project() -> Project {
    let specs = (0..N).map(|i| Spec { question: format!("What colour is thing {i}?"), ..Default::default() }).collect();
    let p = Project::with(specs).await;
    let rows: Vec<(i64, &str, &str, Option<f64>, Value)> = (1..=N)
        .map(|i| {
            let (conf, _) = truth(i);
            let flags = if i % 9 == 0 { json!([{"flag": "hedge", "why": "says maybe"}]) } else { json!([]) };
            (i, "m1", "red", Some(conf), flags)
        })
        .collect();
    p.candidates(&rows).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_certifies_a_threshold_that_auto_accepts_and_undo_reverts() {
    let p = project().await;
    p.user("r", Role::Reviewer).await;
    let sample =
        p.store.create_audit_sample(SampleOptions { size: 240, task: None, seed: Some(11) }, "test").await.unwrap();
    assert_eq!((sample.size, sample.pool, sample.kind), (240, N as u64, SampleKind::Calibration));
    let order: Vec<i64> = p.store.audited(None).await.unwrap().iter().map(|a| a.item_id).collect();
    assert_eq!(order.len(), 240);
    assert_eq!(order.iter().collect::<HashSet<_>>().len(), 240, "distinct items");
    assert_ne!(order.windows(2).filter(|w| w[0] < w[1]).count(), 239, "random order, not id order");

    let srv = Server::start(&p.store, ServerConfig::default()).await;
    let c = srv.bearer(&p.token("r").await);
    // The sample comes first, in its order, with confidence and flags hidden.
    let mut halfway = None;
    for (k, &want) in order.iter().enumerate() {
        if k == 120 {
            halfway = p.store.routing_stats().await.unwrap().plan;
        }
        let x = c.next("").await.unwrap();
        let id = id_of(&x);
        assert_eq!(id, want, "audit item {k}");
        assert_eq!(x["audit"]["sample"], sample.id);
        assert!(x["candidates"][0]["confidence"].is_null() && x["candidates"][0]["flags"] == json!([]), "{x}");
        let base = x["item"]["label"]["id"].clone();
        let cand = x["candidates"][0]["id"].clone();
        let body = match (truth(id).1, k) {
            // One right answer skipped: it counts as wrong.
            (true, 3) => json!({"action": "skip", "base": base}),
            // Edited to an answer equal after VQA normalisation: right.
            (true, 5) => json!({"action": "edit", "base": base, "answer": {"text": "Red."}}),
            (true, _) => json!({"action": "accept", "base": base, "candidate_id": cand}),
            (false, _) if k % 2 == 0 => json!({"action": "edit", "base": base, "answer": {"text": "blue"}}),
            (false, _) => json!({"action": "reject", "base": base, "candidate_id": cand}),
        };
        assert_eq!(c.post(&format!("/api/items/{id}/decision"), body).await.status, 200);
    }
    // Then the risk-ordered queue, with the confidence shown again.
    let x = c.next("").await.unwrap();
    assert!(x["audit"].is_null() && x["candidates"][0]["confidence"].is_number(), "{x}");
    assert!(!order.contains(&id_of(&x)));
    let released = c.send(reqwest::Method::DELETE, &format!("/api/items/{}/lease", id_of(&x)), None, &[]).await;
    assert_eq!(released.status, 200);

    let audited = p.store.audited(Some(SampleKind::Calibration)).await.unwrap();
    for (k, a) in audited.iter().enumerate() {
        let want = if k == 3 || !truth(a.item_id).1 { Verdict::Wrong } else { Verdict::Correct };
        assert_eq!(a.verdict, want, "item {} (#{k})", a.item_id);
    }

    // Certify and apply, as `mmloop route` does.
    let pool = p.store.route_pool(sample.max_candidate).await.unwrap();
    assert_eq!(pool.len(), (N - 240) as usize, "pending answers outside the sample");
    let pl = plan(&audited, &pool, &RouteOptions::new(0.05, 0.1));
    let g = &pl.groups[0];
    let t = g.threshold.expect("the clean top certifies");
    assert!(t > 0.5, "threshold {t} inside the noisy region");
    assert!(g.confidence.errors as f64 <= 0.05 * g.confidence.n as f64, "{:?}", g.confidence);
    let accepted_truth = pool.iter().filter(|x| x.score >= t).filter(|x| !truth(x.item_id).1).count();
    assert!(accepted_truth as f64 <= 0.05 * pl.accepted as f64, "real error {accepted_truth}/{}", pl.accepted);
    assert!(pl.accepted > 100 && pl.review_saved > 0.3, "{} of {}", pl.accepted, pl.pool);
    // The stats page's plan is the same, not the one kept from halfway through the audit.
    let halfway = halfway.expect("a plan from the first 120 verdicts");
    let shown = p.store.routing_stats().await.unwrap().plan.unwrap();
    assert_ne!(halfway.accepted, pl.accepted, "the halfway plan differs, so keeping it would show");
    assert_eq!((shown.pool, shown.accepted, shown.review_saved), (pl.pool, pl.accepted, pl.review_saved));

    let run = p.store.start_run("route", "test", json!({"epsilon": 0.05, "delta": 0.1})).await.unwrap();
    let applied = p
        .store
        .apply_route(RouteApply {
            run_id: run,
            accept: pl.accept.clone(),
            audit_rate: 0.1,
            seed: 5,
            certificate: json!({"threshold": t}),
        })
        .await
        .unwrap();
    p.store.finish_run(run, "test", mmloop_core::RunStatus::Done, json!({})).await.unwrap();
    assert_eq!((applied.accepted as usize, applied.changed), (pl.accepted, 0));
    let drift_size = applied.drift_size as usize;
    assert_eq!(drift_size, (pl.accepted as f64 * 0.1).ceil() as usize);
    let item = p.store.item(pl.accept[0].0).await.unwrap();
    let label = item.label.unwrap();
    assert_eq!((label.status, label.actor.as_str()), (LabelStatus::AutoAccepted, format!("route:{run}").as_str()));
    assert!(label.status.is_truth(), "exports trust it");

    // The drift sample comes back to review first; two of its answers turn out wrong.
    let mut decided_drift = 0;
    while let Some(x) = c.next("").await {
        if x["audit"]["kind"] != "drift" {
            break;
        }
        let id = id_of(&x);
        let body = if decided_drift < 2 {
            json!({"action": "edit", "base": x["item"]["label"]["id"], "answer": {"text": "green"}})
        } else {
            json!({"action": "accept", "base": x["item"]["label"]["id"], "candidate_id": x["candidates"][0]["id"]})
        };
        assert_eq!(c.post(&format!("/api/items/{id}/decision"), body).await.status, 200);
        decided_drift += 1;
    }
    assert_eq!(decided_drift, drift_size);
    let stats = c.get("/api/stats").await.body;
    let r = &stats["routing"];
    assert!(r["curve"].as_array().unwrap().len() > 10, "{r}");
    let d = &r["drift"][0];
    assert_eq!(
        (d["run"].as_i64(), d["audited"].as_u64(), d["wrong"].as_u64()),
        (Some(run), Some(drift_size as u64), Some(2))
    );
    let (lo, hi) = (d["interval"][0].as_f64().unwrap(), d["interval"][1].as_f64().unwrap());
    let e = d["error"].as_f64().unwrap();
    assert!(lo < e && e < hi, "{d}");
    assert_eq!(d["warn"], e > 0.05);
    assert_eq!(d["auto_accepted"].as_u64(), Some((pl.accepted - drift_size) as u64));

    // Undo: every answer the run accepted and nobody decided since goes back to pending.
    let undone = p.store.undo_route(run, "test").await.unwrap();
    assert_eq!((undone.reverted as usize, undone.kept as usize), (pl.accepted - drift_size, drift_size));
    let drifted: HashSet<i64> =
        p.store.audited(Some(SampleKind::Drift)).await.unwrap().iter().map(|a| a.item_id).collect();
    let mut by_status: BTreeMap<LabelStatus, usize> = BTreeMap::new();
    for &(id, _, _) in &pl.accept {
        let l = p.store.item(id).await.unwrap().label.unwrap();
        *by_status.entry(l.status).or_default() += 1;
        if !drifted.contains(&id) {
            assert_eq!((l.status, l.action.as_str()), (LabelStatus::Pending, "route_undo"));
        }
    }
    assert_eq!(by_status.get(&LabelStatus::Pending), Some(&(pl.accepted - drift_size)));
    assert_eq!(p.store.route_accepted_now(run).await.unwrap(), 0);
    assert!(p.store.audit_verify().await.unwrap().ok(), "the chain holds");
    assert!(p.store.undo_route(9999, "test").await.is_err());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_joins_one_calibration_sample_at_most() {
    let p = project().await;
    let first = p.store.create_audit_sample(SampleOptions { size: 100, task: None, seed: Some(1) }, "t").await.unwrap();
    // Closed undecided, its items still never join another calibration sample: no decision
    // may count twice in a certificate.
    p.store.close_audit_sample(first.id, "t").await.unwrap();
    let second =
        p.store.create_audit_sample(SampleOptions { size: N as usize, task: None, seed: Some(2) }, "t").await.unwrap();
    assert_eq!(second.pool, N as u64 - 100);
    let audited = p.store.audited(None).await.unwrap();
    let in_first: HashSet<i64> = audited.iter().filter(|a| a.sample_id == first.id).map(|a| a.item_id).collect();
    assert_eq!(in_first.len(), 100);
    assert!(audited.iter().filter(|a| a.sample_id == second.id).all(|a| !in_first.contains(&a.item_id)));
}
