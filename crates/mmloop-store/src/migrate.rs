//! `mmloop migrate`: moves a project's database between SQLite and PostgreSQL.
//!
//! Every table is read in one snapshot of the source and written in one transaction on the
//! destination, then checked there before that transaction commits: the audit chain
//! recomputed against the folder's anchor and the versions, every item, label and version
//! digest, the same head event, the same number of rows in every table. Only then does
//! `mmloop.toml` name the new database (an atomic rewrite). Interrupted anywhere before
//! that, the destination keeps nothing and the project goes on using its source.
//!
//! The review queue and its tallies are not copied: the destination's triggers and
//! `sync_queue` rebuild them from the items, labels and candidates, as they were built.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

use serde::Serialize;

use crate::db::Db;
use crate::project::{toml_string, with_database};
use crate::sql::{Cell, Conn, Dialect};
use crate::{Store, StoreError};

/// The tables copied, parents before children, with their columns (the same on both
/// databases). Derived tables (the review queue, its tallies) are rebuilt instead.
const TABLES: &[(&str, &[&str])] = &[
    ("project", &["key", "value"]),
    ("images", &["id", "sha256", "path", "copied", "width", "height", "format", "bytes"]),
    ("runs", &["id", "kind", "actor", "started_at", "finished_at", "status", "config", "summary", "version"]),
    (
        "items",
        &[
            "id",
            "key",
            "source_id",
            "task",
            "question",
            "context",
            "conversation",
            "turn",
            "tags",
            "meta",
            "source_file",
            "source_line",
            "run_id",
            "content",
            "split",
            "label_id",
        ],
    ),
    ("item_images", &["item_id", "pos", "image_id"]),
    (
        "labels",
        &[
            "id",
            "item_id",
            "prev_id",
            "status",
            "answer",
            "answers",
            "actor",
            "at",
            "action",
            "lead_time_ms",
            "content",
        ],
    ),
    (
        "candidates",
        &[
            "id",
            "item_id",
            "run_id",
            "model",
            "params_hash",
            "answer",
            "confidence",
            "confidence_detail",
            "logprobs",
            "error",
            "created_at",
        ],
    ),
    ("candidate_flags", &["candidate_id", "pos", "flag", "why", "span_start", "span_end"]),
    (
        "versions",
        &["seq", "id", "parent", "message", "author", "at", "items", "pages", "stats", "audit_seq", "audit_hash"],
    ),
    ("pages", &["hash", "data"]),
    ("events", &["seq", "at", "actor", "action", "entity", "before", "after", "prev_hash", "hash"]),
    ("users", &["id", "name", "role", "password_hash", "disabled", "created_at", "created_by"]),
    ("sessions", &["token_hash", "user_id", "created_ms", "expires_ms"]),
    (
        "api_tokens",
        &["id", "user_id", "name", "token_hash", "prefix", "created_at", "created_by", "expires_ms", "revoked_at"],
    ),
    ("leases", &["item_id", "user_id", "until_ms", "granted_ms"]),
    (
        "audit_samples",
        &[
            "id",
            "kind",
            "route_run",
            "task",
            "seed",
            "size",
            "pool",
            "max_candidate",
            "created_at",
            "created_by",
            "closed_at",
        ],
    ),
    ("audit_items", &["sample_id", "pos", "item_id", "candidate_id", "base_label"]),
    ("ab_experiments", &["name", "seed", "arms", "weights", "created_at", "created_by"]),
    (
        "ab_exposures",
        &[
            "id",
            "experiment",
            "request_id",
            "user_id",
            "arm",
            "latency_ms",
            "prompt_tokens",
            "completion_tokens",
            "confidence",
            "created_at",
        ],
    ),
    ("ab_outcomes", &["id", "request_id", "outcome", "value", "created_at", "actor"]),
];

/// The columns of one of the tables above, in their copy order.
pub(crate) fn columns(table: &str) -> &'static [&'static str] {
    TABLES.iter().find(|(t, _)| *t == table).map(|(_, c)| *c).unwrap_or_else(|| panic!("no table {table}"))
}

/// Rows sent from the reader to the writer at a time.
const BATCH: usize = 5000;

/// Where a project's database goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrateTarget {
    /// SQLite in the project folder.
    Sqlite,
    /// A PostgreSQL database (URL), empty or without an mmloop schema.
    Postgres(String),
}

impl std::str::FromStr for MigrateTarget {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        if s.eq_ignore_ascii_case("sqlite") {
            Ok(MigrateTarget::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(MigrateTarget::Postgres(s.to_string()))
        } else {
            Err(StoreError::Config(format!(
                "{}: not a database to migrate to\n  hint: --to postgres://user@host/db or --to sqlite",
                crate::pg::redact(s)
            )))
        }
    }
}

/// What a migration moved.
#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    pub from: String,
    pub to: String,
    /// Rows copied per table, in copy order.
    pub tables: Vec<(String, u64)>,
    /// Audit events verified on the destination (the whole chain).
    pub events: u64,
    /// The head event both databases end at.
    pub head: Option<(i64, String)>,
    /// Where the old SQLite file went (migrating away from SQLite).
    pub backup: Option<PathBuf>,
}

enum Msg {
    Rows(usize, Vec<Vec<Cell>>),
    Done,
}

/// Moves the project in `dir` to `target`. `progress` hears the rows copied so far.
pub async fn migrate(
    dir: &Path,
    target: MigrateTarget,
    progress: Box<dyn Fn(u64) + Send>,
) -> Result<MigrateReport, StoreError> {
    let source = Store::open(dir).await?;
    let paths = source.paths().clone();
    let config = source.config().clone();
    let from = match &config.project.database {
        Some(url) => crate::pg::redact(url),
        None => "sqlite".to_string(),
    };
    let (dest, temp_file) = match (&target, &config.project.database) {
        (MigrateTarget::Sqlite, None) => {
            return Err(StoreError::Config("the project already uses SQLite".into()));
        }
        (MigrateTarget::Postgres(url), Some(current)) if url == current => {
            return Err(StoreError::Config("the project already uses that database".into()));
        }
        (MigrateTarget::Postgres(url), _) => {
            let db = Db::open_postgres(url, true)?;
            let taken = db.read(|c| c.one("SELECT count(*) FROM project", &[], |r| r.get::<i64>(0))).await;
            if taken? > 0 {
                db.close();
                return Err(StoreError::Config(format!(
                    "{} already holds an mmloop project\n  hint: migrate into an empty database",
                    crate::pg::redact(url)
                )));
            }
            (db, None)
        }
        (MigrateTarget::Sqlite, Some(_)) => {
            if paths.db.exists() {
                return Err(StoreError::Config(format!(
                    "{} exists already\n  hint: move it away first (an old copy of the project?)",
                    paths.db.display()
                )));
            }
            let temp = paths.dot.join("mmloop.db.migrating");
            for stale in [temp.clone(), wal_of(&temp, "-wal"), wal_of(&temp, "-shm")] {
                let _ = std::fs::remove_file(stale);
            }
            (Db::open(&temp, true)?, Some(temp))
        }
    };
    let to = match &target {
        MigrateTarget::Sqlite => "sqlite".to_string(),
        MigrateTarget::Postgres(url) => crate::pg::redact(url),
    };
    let anchor = source.file_anchor()?;
    let source_head = source.db().read(|c| crate::audit::head(c)).await?;

    // The reader: every table in one snapshot of the source, in batches.
    let (tx, rx) = sync_channel::<Msg>(4);
    let reader = {
        let db = source.db().clone();
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("mmloop-migrate".into())
            .spawn(move || {
                db.read_blocking(move |c| {
                    for (t, (table, columns)) in TABLES.iter().enumerate() {
                        let mut batch = Vec::with_capacity(BATCH);
                        let sql = format!("SELECT {} FROM {table} ORDER BY 1", columns.join(", "));
                        c.each(&sql, &[], |r| {
                            batch.push((0..columns.len()).map(|i| r.get::<Cell>(i)).collect::<Result<Vec<_>, _>>()?);
                            if batch.len() >= BATCH {
                                tx.send(Msg::Rows(t, std::mem::take(&mut batch))).map_err(|_| StoreError::Closed)?;
                            }
                            Ok(())
                        })?;
                        tx.send(Msg::Rows(t, batch)).map_err(|_| StoreError::Closed)?;
                    }
                    tx.send(Msg::Done).map_err(|_| StoreError::Closed)?;
                    Ok(())
                })
            })
            .map_err(StoreError::Io)?
    };
    drop(tx);

    let expect_head = source_head.clone();
    let written = dest.write_alone(move |c| write_all(c, rx, progress, anchor, expect_head)).await.and_then(|out| {
        reader.join().map_err(|_| StoreError::Internal("the migration reader panicked".into()))??;
        Ok(out)
    });
    // Planner statistics for the tables just filled, as after a restore: until autovacuum
    // gets to them, the review server's first queries would be planned blind. The move is
    // committed already; should this fail, autovacuum gathers them later.
    if written.is_ok() && dest.dialect() == Dialect::Postgres {
        let _ = dest.read(|c| c.batch("ANALYZE")).await;
    }
    dest.close();
    source.close();
    let (tables, events) = match written {
        Ok(w) => w,
        Err(e) => {
            if let Some(temp) = &temp_file {
                let _ = std::fs::remove_file(temp);
            }
            return Err(e);
        }
    };

    // Committed and verified: the folder now names the new database.
    let text = std::fs::read_to_string(&paths.config)
        .map_err(|e| StoreError::IoPath { path: paths.config.clone(), source: e })?;
    let line = match &target {
        MigrateTarget::Postgres(url) => {
            format!("# The project's database (unset: SQLite in .mmloop/).\ndatabase = {}\n", toml_string(url))
        }
        MigrateTarget::Sqlite => String::new(),
    };
    let mut backup = None;
    if let Some(temp) = &temp_file {
        std::fs::rename(temp, &paths.db).map_err(|e| StoreError::IoPath { path: paths.db.clone(), source: e })?;
    }
    crate::fs::write_atomic(&paths.config, with_database(&text, &line).as_bytes())?;
    if config.project.database.is_none() {
        // The SQLite file stays, renamed, as the backup of the project before the move.
        let stamp = crate::now().replace([':', '.'], "-");
        let kept = paths.dot.join(format!("mmloop.db.before-migrate-{stamp}"));
        std::fs::rename(&paths.db, &kept).map_err(|e| StoreError::IoPath { path: paths.db.clone(), source: e })?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(wal_of(&paths.db, suffix));
        }
        backup = Some(kept);
    }
    Ok(MigrateReport {
        from,
        to,
        tables,
        events,
        head: source_head.map(|(seq, hash)| (seq, hex::encode(hash))),
        backup,
    })
}

/// The PostgreSQL triggers that keep the review queue up to date row by row as candidates
/// and their flags arrive (the table, the trigger).
const QUEUE_TRIGGERS: &[(&str, &str)] =
    &[("candidates", "review_queue_candidate"), ("candidate_flags", "review_queue_candidate_flag")];

/// The destination's side, in its one transaction: every batch, then the rebuilt queue, the
/// identity sequences and the database's own anchor, then the checks.
fn write_all(
    c: Conn,
    rx: Receiver<Msg>,
    progress: Box<dyn Fn(u64) + Send>,
    anchor: Option<(i64, Vec<u8>)>,
    expect_head: Option<(i64, Vec<u8>)>,
) -> Result<(Vec<(String, u64)>, u64), StoreError> {
    let mut counts = vec![0u64; TABLES.len()];
    let mut done = 0u64;
    // The queue is rebuilt whole below; until then its per-row triggers on PostgreSQL would
    // only look for queue rows not there yet, once per candidate and flag copied (minutes at a
    // million items). `ALTER TABLE` is part of this transaction: undone with it on failure.
    let queue_triggers: &[(&str, &str)] = if c.dialect() == Dialect::Postgres { QUEUE_TRIGGERS } else { &[] };
    for (table, trigger) in queue_triggers {
        c.batch(&format!("ALTER TABLE {table} DISABLE TRIGGER {trigger}"))?;
    }
    loop {
        match rx.recv() {
            Ok(Msg::Rows(t, rows)) => {
                let (table, columns) = TABLES[t];
                c.copy_in(table, columns, &rows)?;
                counts[t] += rows.len() as u64;
                done += rows.len() as u64;
                progress(done);
            }
            Ok(Msg::Done) => break,
            // The reader failed: its error is what the caller reports.
            Err(_) => return Err(StoreError::Internal("the source could not be read to the end".into())),
        }
    }
    for (table, trigger) in queue_triggers {
        c.batch(&format!("ALTER TABLE {table} ENABLE TRIGGER {trigger}"))?;
    }
    crate::review::queue::sync_queue(c).map_err(|e| match e {
        crate::ReviewError::Store(s) => s,
        other => StoreError::Internal(other.to_string()),
    })?;
    if c.dialect() == Dialect::Postgres {
        for (table, columns) in TABLES {
            if columns[0] == "id" && !matches!(*table, "project") {
                c.batch(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}"
                ))?;
            }
        }
        if let Some((seq, hash)) = &expect_head {
            c.execute("INSERT INTO audit_head (one, seq, hash) VALUES (1, ?1, ?2)", &[seq, hash])?;
        }
    }
    // The checks, before anything commits.
    let report = crate::audit::verify_chain(c, anchor)?;
    if !report.ok() {
        let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        return Err(StoreError::Internal(format!(
            "the copy does not verify, nothing was changed:\n  {}",
            problems.join("\n  ")
        )));
    }
    let head = crate::audit::head(c)?;
    if head != expect_head {
        return Err(StoreError::Internal("the copy ends at another audit event; nothing was changed".into()));
    }
    let mut tables = Vec::with_capacity(TABLES.len());
    for ((table, _), n) in TABLES.iter().zip(counts) {
        let stored: i64 = c.one(&format!("SELECT COUNT(*) FROM {table}"), &[], |r| r.get(0))?;
        if stored as u64 != n {
            return Err(StoreError::Internal(format!(
                "{table}: {n} rows read but {stored} stored; nothing was changed"
            )));
        }
        tables.push((table.to_string(), n));
    }
    Ok((tables, report.events))
}

fn wal_of(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use mmloop_core::{Answer, LabelStatus};

    use super::*;
    use crate::review::{Decision, DecisionAction, QueueFilter, Role};
    use crate::test_support::{import, pg_admin, postgres, record};
    use crate::{LabelSave, SaveOutcome};

    /// A project with imported answers, a reviewer's decisions, a version and a save after it.
    async fn busy_project(root: &Path, data: &Path) -> Store {
        let store = Store::init(root, Some("m"), "ann").await.unwrap();
        let records = (0..8).map(|i| record(data, i, &format!("q{i}"), (i % 3 == 0).then_some("a cat"))).collect();
        import(&store, data, records).await.unwrap();
        let r = store.create_user("rev", Role::Reviewer, Some("a long password"), "ann").await.unwrap();
        for _ in 0..3 {
            let item = store.next_item(&r, &QueueFilter::default(), 60_000).await.unwrap().unwrap();
            let d = Decision {
                action: DecisionAction::Edit,
                base: item.item.label.as_ref().map(|l| l.id),
                answer: Some(Answer::text("a dog")),
                candidate_id: None,
                lead_time_ms: Some(500),
            };
            store.decide(item.item.id, &r, d).await.unwrap();
        }
        store.commit("v1", "ann").await.unwrap();
        let save = LabelSave {
            status: LabelStatus::Edited,
            answer: Answer::text("a bird"),
            base: store.item(2).await.unwrap().label.map(|l| l.id),
            actor: "ann".into(),
            action: "edit".into(),
            lead_time_ms: None,
        };
        assert!(matches!(store.save_label(2, save).await.unwrap(), SaveOutcome::Saved { .. }));
        store
    }

    /// SQLite → PostgreSQL → SQLite: every row, the chain, the version ids and the queue come
    /// through; the folder follows each move and the old SQLite file stays as a backup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_project_moves_to_postgres_and_back() {
        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        let store = busy_project(&root, dir.path()).await;
        let before = store.audit_verify().await.unwrap();
        let log = store.log().await.unwrap();
        let stats = store.review_stats().await.unwrap();
        let item2 = store.item(2).await.unwrap();
        store.close();

        let report = migrate(&root, MigrateTarget::Postgres(pg.url.clone()), Box::new(|_| {})).await.unwrap();
        assert_eq!(report.events, before.events);
        assert_eq!(report.head, before.head);
        assert!(report.backup.as_ref().is_some_and(|b| b.exists()), "{:?}", report.backup);
        assert!(!root.join(".mmloop/mmloop.db").exists());
        let moved = Store::open(&root).await.unwrap();
        assert_eq!(moved.config().project.database.as_deref(), Some(pg.url.as_str()));
        let after = moved.audit_verify().await.unwrap();
        assert!(after.ok(), "{:?}", after.problems);
        assert_eq!(
            moved.log().await.unwrap().iter().map(|v| v.id).collect::<Vec<_>>(),
            log.iter().map(|v| v.id).collect::<Vec<_>>()
        );
        assert_eq!(moved.item(2).await.unwrap().label, item2.label);
        let moved_stats = moved.review_stats().await.unwrap();
        assert_eq!((moved_stats.items, &moved_stats.by_status), (stats.items, &stats.by_status));
        // The copy works as a project: the reviewer logs in and goes on.
        let rev = moved.verify_login("rev", "a long password").await.unwrap().expect("the password came along");
        let next = moved.next_item(&rev, &QueueFilter::default(), 60_000).await.unwrap().unwrap();
        moved.lease_item(next.item.id, &rev, 1000).await.unwrap();
        moved.commit("on postgres", "ann").await.unwrap();
        moved.close();

        let back = migrate(&root, MigrateTarget::Sqlite, Box::new(|_| {})).await.unwrap();
        assert!(back.backup.is_none());
        let home = Store::open(&root).await.unwrap();
        assert!(home.config().project.database.is_none());
        let report = home.audit_verify().await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(home.log().await.unwrap().len(), 2);
        home.close();
    }

    /// A migration that cannot finish leaves the project on its source: a destination that
    /// holds a project is refused, and a source whose chain does not verify is not copied
    /// (the destination's transaction rolls back and keeps nothing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_migration_leaves_the_source_in_use() {
        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        let store = busy_project(&root, dir.path()).await;
        // Someone edits an answer with SQL behind the store's back.
        store
            .db()
            .sqlite_write(|c| Ok(c.execute("UPDATE labels SET answer = 'a fox' WHERE id = 1", [])?))
            .await
            .unwrap();
        store.close();
        let e = migrate(&root, MigrateTarget::Postgres(pg.url.clone()), Box::new(|_| {})).await.unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        let still = Store::open(&root).await.unwrap();
        assert!(still.config().project.database.is_none());
        assert!(root.join(".mmloop/mmloop.db").exists());
        still.close();
        let url = pg.url.clone();
        let rows = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one("SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM events)", &[])
                .unwrap()
                .get::<_, i64>(0)
        })
        .join()
        .unwrap();
        assert_eq!(rows, 0, "the destination kept nothing");

        let other = tempfile::tempdir().unwrap();
        let taken = Store::init_with(&other.path().join("q"), None, "bob", Some(&pg.url)).await.unwrap();
        taken.close();
        pg_admin(&pg.url, "SELECT 1").unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let root2 = fresh.path().join("p");
        busy_project(&root2, fresh.path()).await.close();
        let e = migrate(&root2, MigrateTarget::Postgres(pg.url.clone()), Box::new(|_| {})).await.unwrap_err();
        assert!(e.to_string().contains("already holds an mmloop project"), "{e}");
        assert!(Store::open(&root2).await.unwrap().config().project.database.is_none());
    }
}
