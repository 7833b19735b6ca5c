//! Versions are content-addressed; commit, log, diff and export at any version; splits
//! are grouped by image, deterministic and stable when items are added; a stale save is
//! refused.

mod common;

use mmloop_core::{Answer, LabelStatus};
use mmloop_formats::{Format, WriteOptions};
use mmloop_pipeline::transfer::{ExportRequest, export_file};
use mmloop_store::{ExportFilter, LabelSave, SaveOutcome, SplitPlan, Store, StoreError, VersionSpec};

fn row(id: &str, image: &str, q: &str, a: &str) -> String {
    serde_json::json!({
        "id": id,
        "messages": [{"role": "user", "content": format!("<image>{q}")}, {"role": "assistant", "content": a}],
        "images": [image],
    })
    .to_string()
        + "\n"
}

/// `n` items over `images` images (several questions per image).
fn dataset(dir: &std::path::Path, name: &str, ids: std::ops::Range<usize>, images: usize) -> std::path::PathBuf {
    let pool = common::images(&dir.join("imgs"), images);
    let mut text = String::new();
    for i in ids {
        text.push_str(&row(
            &format!("{i}"),
            &format!("imgs/{}", pool[i % images]),
            &format!("Question {i}?"),
            &format!("answer {i}"),
        ));
    }
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f
}

fn save(answer: &str, status: LabelStatus, base: Option<i64>) -> LabelSave {
    LabelSave {
        status,
        answer: Answer::text(answer),
        base,
        actor: "alice".into(),
        action: "edit".into(),
        lead_time_ms: Some(1200),
    }
}

async fn export_answers(store: &Store, version: &str) -> Vec<String> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let req = ExportRequest {
        version: VersionSpec::Named(version.into()),
        filter: ExportFilter::default(),
        format: Format::Jsonl,
        out: out.path().to_path_buf(),
        write: WriteOptions::default(),
    };
    export_file(store, req, |_| {}, || {}).await.unwrap();
    std::fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["answer"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_log_diff_and_export_at_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::new_project(&dir.path().join("p")).await;
    common::import(&store, &dataset(dir.path(), "a.jsonl", 0..30, 10), None).await.unwrap();
    let v1 = store.commit("first", "alice").await.unwrap().version;
    assert!(matches!(store.commit("again", "alice").await, Err(StoreError::NothingToCommit(v)) if v == "v1"));

    // Edit three labels and reject one.
    for id in [1, 2, 3] {
        let item = store.item(id).await.unwrap();
        let base = item.label.as_ref().map(|l| l.id);
        let out = store.save_label(id, save(&format!("edited {id}"), LabelStatus::Edited, base)).await.unwrap();
        assert!(matches!(out, SaveOutcome::Saved { .. }));
    }
    let base = store.item(4).await.unwrap().label.map(|l| l.id);
    store.save_label(4, save("x", LabelStatus::Rejected, base)).await.unwrap();
    let v2 = store.commit("review", "alice").await.unwrap().version;
    assert_ne!(v1.id, v2.id);

    let d = store.diff("v1", "v2", 10).await.unwrap();
    assert_eq!((d.added, d.removed, d.changed), (0, 0, 4));
    assert_eq!(d.entries[0].after.as_ref().unwrap().answer.text.as_deref(), Some("edited 1"));
    assert_eq!(d.entries[0].before.as_ref().unwrap().answer.text.as_deref(), Some("answer 0"));

    // More items arrive.
    common::import(&store, &dataset(dir.path(), "b.jsonl", 30..35, 10), None).await.unwrap();
    store.commit("more", "alice").await.unwrap();
    let d = store.diff("HEAD~1", "HEAD", 0).await.unwrap();
    assert_eq!((d.added, d.removed, d.changed), (5, 0, 0));

    let log = store.log().await.unwrap();
    assert_eq!(log.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![3, 2, 1]);
    assert_eq!(store.version(&v1.id.to_hex()[..8]).await.unwrap().seq, 1);

    // Exports read each version as it was: v1 has the original answers, v2 the edits
    // (and not the rejected item).
    let a1 = export_answers(&store, "v1").await;
    let a2 = export_answers(&store, "v2").await;
    assert_eq!(a1.len(), 30);
    assert_eq!(a2.len(), 29);
    assert!(a1.contains(&"answer 1".to_string()) && !a1.iter().any(|a| a.starts_with("edited")));
    assert!(a2.contains(&"edited 1".to_string()) && !a2.contains(&"answer 1".to_string()));
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_saves_are_refused_with_the_current_label() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::new_project(&dir.path().join("p")).await;
    common::import(&store, &dataset(dir.path(), "a.jsonl", 0..3, 3), None).await.unwrap();
    let base = store.item(1).await.unwrap().label.map(|l| l.id);
    let first = store.save_label(1, save("mine", LabelStatus::Edited, base)).await.unwrap();
    let SaveOutcome::Saved { label } = first else { panic!("first save must land") };
    let second = store.save_label(1, save("theirs", LabelStatus::Edited, base)).await.unwrap();
    match second {
        SaveOutcome::Conflict { current } => assert_eq!(current.unwrap().id, label.id),
        other => panic!("stale save landed: {other:?}"),
    }
    assert_eq!(store.item(1).await.unwrap().label.unwrap().answer.text.as_deref(), Some("mine"));
    let history = store.label_history(1).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(store.audit_verify().await.unwrap().ok());
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimport_keeps_reviewed_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::new_project(&dir.path().join("p")).await;
    let f = dataset(dir.path(), "a.jsonl", 0..2, 2);
    common::import(&store, &f, None).await.unwrap();
    let base = store.item(1).await.unwrap().label.map(|l| l.id);
    store.save_label(1, save("reviewed", LabelStatus::Edited, base)).await.unwrap();
    let text = std::fs::read_to_string(&f).unwrap().replace("answer 0", "new 0").replace("answer 1", "new 1");
    std::fs::write(&f, text).unwrap();
    let r = common::import(&store, &f, None).await.unwrap();
    assert_eq!((r.updated, r.kept_reviewed), (1, 1));
    assert_eq!(store.item(1).await.unwrap().label.unwrap().answer.text.as_deref(), Some("reviewed"));
    assert_eq!(store.item(2).await.unwrap().label.unwrap().answer.text.as_deref(), Some("new 1"));
    store.close();
}

async fn splits(store: &Store) -> Vec<(i64, Option<String>, i64)> {
    let n = store.stats().await.unwrap().items as i64;
    let mut out = Vec::new();
    for id in 1..=n {
        let item = store.item(id).await.unwrap();
        out.push((id, item.split, item.images[0].id));
    }
    out
}

fn no_image_in_two_splits(rows: &[(i64, Option<String>, i64)]) {
    let mut by_image = std::collections::HashMap::new();
    for (_, split, image) in rows {
        let prev = by_image.insert(*image, split.clone());
        if let Some(prev) = prev {
            assert_eq!(&prev, split, "image {image} is in two splits");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_are_grouped_deterministic_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let f = dataset(dir.path(), "a.jsonl", 0..200, 40);
    let plan = || SplitPlan {
        ratios: vec![("train".into(), 0.8), ("val".into(), 0.1), ("test".into(), 0.1)],
        seed: 7,
        reassign: false,
    };
    let a = common::new_project(&dir.path().join("a")).await;
    common::import(&a, &f, None).await.unwrap();
    let r = a.split(plan(), "t").await.unwrap();
    assert_eq!(r.groups, 40);
    assert_eq!(r.counts["train"], 160);
    assert_eq!(r.counts["val"] + r.counts["test"], 40);
    let before = splits(&a).await;
    no_image_in_two_splits(&before);

    // Same seed, same data, another project: same assignment.
    let b = common::new_project(&dir.path().join("b")).await;
    common::import(&b, &f, None).await.unwrap();
    b.split(plan(), "t").await.unwrap();
    assert_eq!(splits(&b).await, before);

    // New items, some on known images and some on new ones: old items keep their split,
    // new items on a known image join its split.
    let g = dataset(dir.path(), "b.jsonl", 200..260, 60);
    common::import(&a, &g, None).await.unwrap();
    let r = a.split(plan(), "t").await.unwrap();
    assert_eq!(r.kept, 200);
    assert_eq!(r.assigned, 60);
    let after = splits(&a).await;
    assert_eq!(&after[..200], &before[..]);
    no_image_in_two_splits(&after);
    a.close();
    b.close();
}
