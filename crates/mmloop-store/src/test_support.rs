//! A small project for the store's own tests: `n` VQA items with generated images, through
//! the import API (as `mmloop import` writes them).

use std::sync::mpsc;

use mmloop_core::{ImageSource, Location, Record, Task};
use serde_json::json;

use crate::{ImportOptions, Incoming, Store};

pub(crate) use crate::testing::{pg_admin, postgres};

/// A PNG of `w`×1 pixels whose bytes differ by width (one distinct image per item).
fn png(w: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, 1, image::Rgb([w as u8, 0, 0]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("a PNG");
    out.into_inner()
}

/// Imports `records` (their images as bytes, copied into the project) as `mmloop import` would.
pub(crate) async fn import(
    store: &Store,
    dir: &std::path::Path,
    records: Vec<Record>,
) -> Result<crate::ImportReport, crate::StoreError> {
    let file = dir.join("data.jsonl");
    std::fs::write(&file, "{}\n").expect("the data file");
    let (tx, rx) = mpsc::channel();
    for r in records {
        tx.send(Incoming::Record(Box::new(r))).expect("queued");
    }
    tx.send(Incoming::End).expect("queued");
    let opts = ImportOptions {
        format: "jsonl".into(),
        file,
        images_dir: dir.to_path_buf(),
        copy_images: true,
        skip_bad: false,
        actor: "test".into(),
        config: json!({}),
    };
    store.import(opts, rx, Default::default(), Box::new(())).await
}

/// A VQA record with one image, an id and (when given) an answer.
pub(crate) fn record(dir: &std::path::Path, i: usize, question: &str, answer: Option<&str>) -> Record {
    let file = std::sync::Arc::new(dir.join("data.jsonl"));
    let mut r = Record::new(Task::Vqa, question, Location::index(&file, i as u64));
    r.id = Some(format!("t{i}"));
    r.images = vec![ImageSource::Bytes(png(i as u32 + 1).into())];
    r.answer = answer.map(mmloop_core::Answer::text);
    r
}

/// [`project`]'s items (questions `q0`, `q1`, ...) in `dir/lite` on SQLite, or in `dir/pg` on
/// the PostgreSQL database `url`: the same project on either database.
pub(crate) async fn project_on(dir: &std::path::Path, url: Option<&str>, n: usize) -> Store {
    let path = dir.join(if url.is_some() { "pg" } else { "lite" });
    let store = Store::init_with(&path, None, "ann", url).await.expect("a project");
    let records = (0..n).map(|i| record(dir, i, &format!("q{i}"), None)).collect();
    import(&store, dir, records).await.expect("the import");
    store
}

/// A project of `n` unanswered VQA items, one image each.
pub(crate) async fn project(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::init(&dir.path().join("p"), Some("test"), "test").await.expect("a project");
    let records = (0..n).map(|i| record(dir.path(), i, &format!("What is in picture {i}?"), None)).collect();
    import(&store, dir.path(), records).await.expect("the import");
    (dir, store)
}
