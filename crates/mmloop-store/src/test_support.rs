//! A small project for the store's own tests: `n` VQA items with generated images, through
//! the import API (as `mmloop import` writes them).

use std::sync::mpsc;

use mmloop_core::{ImageSource, Location, Record, Task};
use serde_json::json;

use crate::{ImportOptions, Incoming, Store};

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

/// A project of `n` unanswered VQA items, one image each.
pub(crate) async fn project(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::init(&dir.path().join("p"), Some("test"), "test").await.expect("a project");
    let records = (0..n).map(|i| record(dir.path(), i, &format!("What is in picture {i}?"), None)).collect();
    import(&store, dir.path(), records).await.expect("the import");
    (dir, store)
}

/// A fresh, empty PostgreSQL database for one test on the server `MMLOOP_TEST_POSTGRES` names
/// (`tools/pg_test_server.sh start DIR` starts one); dropped with the guard. `None` when no
/// server is configured, unless `MMLOOP_REQUIRE_POSTGRES` is set (CI): then the test fails.
pub(crate) fn postgres() -> Option<PgDatabase> {
    let Ok(server) = std::env::var("MMLOOP_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("MMLOOP_REQUIRE_POSTGRES").is_none(),
            "MMLOOP_REQUIRE_POSTGRES is set but MMLOOP_TEST_POSTGRES names no server (tools/pg_test_server.sh)"
        );
        eprintln!("skipped: no PostgreSQL server (set MMLOOP_TEST_POSTGRES, see tools/pg_test_server.sh)");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("mmloop_test_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    pg_admin(&server, &format!("DROP DATABASE IF EXISTS {name}")).expect("the test PostgreSQL server");
    pg_admin(&server, &format!("CREATE DATABASE {name}")).expect("a test database");
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("MMLOOP_TEST_POSTGRES={server}: expected a URL ending in /DATABASE"),
    };
    Some(PgDatabase { server, url, name })
}

/// See [`postgres`].
pub(crate) struct PgDatabase {
    server: String,
    pub(crate) url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = pg_admin(&self.server, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Runs `sql` on the database at `url` from a thread of its own (the `postgres` client must not
/// run on an async thread, where the tests are).
pub(crate) fn pg_admin(url: &str, sql: &str) -> Result<(), postgres::Error> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&sql))
        .join()
        .expect("the admin thread")
}
