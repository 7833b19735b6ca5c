//! PostgreSQL access: a pool of connections, each write in a transaction of its own.
//!
//! Where SQLite has one writer per file (queued in-process, see `db.rs`), PostgreSQL takes
//! writers from any number of processes on any number of machines. What must stay single —
//! the audit chain, whose every event names the one before — is kept single by a
//! transaction-scoped advisory lock every write takes first: writes serialize on the server,
//! across all of them, exactly as SQLite's write lock serializes them in one file. Reads
//! never take it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::StoreError;
use crate::sql::{Conn, PgConn};

/// Migrations of the PostgreSQL schema, numbered on their own (SQLite's are in `db.rs`).
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_tally_per_statement.sql"),
];

/// The advisory lock key every writing transaction holds (any fixed 64-bit number; this one
/// spells "mmloop" in ASCII).
const WRITE_LOCK: i64 = 0x6d6d_6c6f_6f70;

/// Connections one process opens at most. PostgreSQL's default limit is 100 for the whole
/// server, shared by every review server and command.
const MAX_CONNECTIONS: usize = 16;

/// Work for a connection: runs on its thread, answers through its own channel.
type Job = Box<dyn FnOnce(&mut Option<PgConn>) + Send>;

/// A queued write for the group-commit writer: runs inside the group's transaction and says
/// whether it succeeded, with what to tell its caller once the commit is known (`Some(why)`
/// when that commit failed).
/// Given no connection (the group could not start), it runs nothing and answers with why.
type Work = Box<dyn FnOnce(Result<Conn, &str>) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// At most this many queued writes share one transaction (one lock turn, one WAL flush).
const GROUP_MAX: usize = 64;

/// What the writer's thread knows of the audit chain's head inside a group: the group holds the
/// chain's lock, so the head moves only by the group's own appends, and each append after the
/// first need not read it back (nor move the database's anchor: the group does that once, at its
/// end). A rolled-back savepoint may have taken appends with it: the head is then read again.
#[derive(Default)]
struct Group {
    head: Option<Head>,
    appended: bool,
}

/// The audit chain's head: its last event's sequence number and hash (`None`: no event yet).
type Head = Option<(i64, Vec<u8>)>;

thread_local! {
    static GROUP: std::cell::RefCell<Option<Group>> = const { std::cell::RefCell::new(None) };
}

/// The chain's head as this thread's group left it, when it knows it (`None`: read it).
pub(crate) fn group_head() -> Option<Head> {
    GROUP.with(|g| g.borrow().as_ref().and_then(|g| g.head.clone()))
}

/// Records an append inside this thread's group; `false` outside a group (the caller then
/// moves the anchor itself).
pub(crate) fn group_appended(seq: i64, hash: &[u8]) -> bool {
    GROUP.with(|g| match g.borrow_mut().as_mut() {
        Some(g) => {
            g.head = Some(Some((seq, hash.to_vec())));
            g.appended = true;
            true
        }
        None => false,
    })
}

/// Forgets the head (a savepoint rolled back): the next append reads it from the database.
pub(crate) fn group_forget_head() {
    GROUP.with(|g| {
        if let Some(g) = g.borrow_mut().as_mut() {
            g.head = None;
        }
    })
}

/// Ends this thread's group: whether it appended, and the head it left when it knows it.
fn group_end() -> (bool, Option<Head>) {
    GROUP.with(|g| g.borrow_mut().take().map(|g| (g.appended, g.head)).unwrap_or_default())
}

/// Connections, each owned by a thread of its own that takes jobs from one shared queue. The
/// `postgres` client drives its own small runtime and must never block an async thread (nor
/// be dropped on one), so no client ever leaves its thread; callers wait on a channel.
pub(crate) struct PgDb {
    config: Arc<postgres::Config>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Jobs queued or running, to know when another connection would help.
    pending: Arc<AtomicUsize>,
    /// The group-commit writer (see [`PgDb::write`]).
    writes: Mutex<Option<mpsc::Sender<Work>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PgDb {
    /// Connects to `url` and brings the schema up to date (creating it when `create`).
    pub(crate) fn open(url: &str, create: bool) -> Result<PgDb, StoreError> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| StoreError::Config(format!("{}: not a PostgreSQL URL: {e}", redact(url))))?;
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        config.application_name("mmloop");
        let (tx, rx) = mpsc::channel();
        let db = PgDb {
            config: Arc::new(config),
            jobs: Mutex::new(Some(tx)),
            queue: Arc::new(Mutex::new(rx)),
            workers: Mutex::new(Vec::new()),
            pending: Arc::new(AtomicUsize::new(0)),
            writes: Mutex::new(None),
            writer: Mutex::new(None),
        };
        let url = url.to_string();
        db.run_blocking_with(move |conn| {
            let conn = conn.as_ref().expect("connected");
            migrate(conn, create)
        })
        .map_err(|e| match e {
            StoreError::Postgres(e) if e.as_db_error().is_none() => {
                let why = match std::error::Error::source(&e) {
                    Some(source) => format!("{e}: {source}"),
                    None => e.to_string(),
                };
                StoreError::Config(format!(
                    "cannot connect to {}: {why}\n  hint: is the server running, and may this user connect?",
                    redact(&url)
                ))
            }
            e => e,
        })?;
        Ok(db)
    }

    /// Queues `job`, starting another connection when every one is busy.
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let pending = self.pending.fetch_add(1, Ordering::SeqCst) + 1;
        let mut workers = self.workers.lock().expect("workers");
        if pending > workers.len() && workers.len() < MAX_CONNECTIONS {
            let (queue, config, left) = (self.queue.clone(), self.config.clone(), self.pending.clone());
            let worker = std::thread::Builder::new()
                .name("mmloop-postgres".into())
                .spawn(move || {
                    let mut conn: Option<PgConn> = None;
                    loop {
                        let job = match queue.lock().expect("queue").recv() {
                            Ok(job) => job,
                            Err(_) => break,
                        };
                        if conn.as_ref().is_none_or(PgConn::is_closed) {
                            conn = config.connect(postgres::NoTls).ok().map(PgConn::new);
                        }
                        job(&mut conn);
                        left.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .map_err(StoreError::Io)?;
            workers.push(worker);
        }
        drop(workers);
        let sent = self.jobs.lock().expect("jobs").as_ref().map(|tx| tx.send(job));
        if !matches!(sent, Some(Ok(()))) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// A job that runs `f` on a connected connection (connecting once more when the worker's
    /// connection failed) and sends its result to `reply`.
    fn job<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<PgConn>) -> Result<T, StoreError> + Send + 'static,
        reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) -> Job {
        let config = self.config.clone();
        Box::new(move |conn: &mut Option<PgConn>| {
            if conn.is_none() {
                match config.connect(postgres::NoTls) {
                    Ok(c) => *conn = Some(PgConn::new(c)),
                    Err(e) => return reply(Err(e.into())),
                }
            }
            reply(f(conn))
        })
    }

    async fn run<T, F>(&self, mode: Mode, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = self.job(
            move |conn| transaction(conn.as_ref().expect("connected"), mode, f),
            move |out| {
                let _ = tx.send(out);
            },
        );
        self.submit(job)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn run_blocking_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<PgConn>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        let job = self.job(f, move |out| {
            let _ = tx.send(out);
        });
        self.submit(job)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in a transaction of its own that holds the write lock; commits when it
    /// returns `Ok`, rolls back otherwise. For large writes (an import, a migration).
    pub(crate) async fn write_alone<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(Mode::Write, f).await
    }

    /// Runs `f` in a transaction of its own without the write lock: for writes that append no
    /// audit event and keep concurrent writers apart by their own conditions (leases). Its commit
    /// does not wait for the WAL flush (`synchronous_commit = off`): what it writes is soft state,
    /// visible to every other transaction at once, and a database crash loses at most the last
    /// fraction of a second of it (a lease gone early), never a decision, whose own commit
    /// flushes everything before it.
    pub(crate) async fn write_unlocked<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(Mode::Unlocked, f).await
    }

    /// Runs `f` in the write transaction this process's writer shares among the writes queued
    /// together (as SQLite's writer does, `db.rs`): the group takes the write lock once and
    /// commits once, so under many reviewers one lock turn and one WAL flush serve up to
    /// [`GROUP_MAX`] writes instead of one each. Each write runs in a savepoint of its own: one
    /// that fails is undone alone. Its caller hears back only once the group committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_or_undo(move |c| f(c).map(|v| (v, true))).await
    }

    /// [`PgDb::write`] where `f` may undo what it wrote (`(value, false)`): its savepoint is
    /// rolled back and its value comes back all the same.
    pub(crate) async fn write_or_undo<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<(T, bool), StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let out = match conn {
                Ok(conn) => f(conn),
                Err(why) => Err(StoreError::Internal(why.to_string())),
            };
            let ok = matches!(out, Ok((_, true)));
            let out = out.map(|(v, _)| v);
            let reply: Reply = Box::new(move |failed: Option<&str>| {
                let out = match failed {
                    Some(why) => Err(StoreError::Internal(why.to_string())),
                    None => out,
                };
                let _ = tx.send(out);
            });
            (ok, reply)
        });
        {
            let mut writes = self.writes.lock().expect("writer");
            if writes.is_none() {
                let (wtx, wrx) = mpsc::channel::<Work>();
                let config = self.config.clone();
                let handle = std::thread::Builder::new()
                    .name("mmloop-postgres-writer".into())
                    .spawn(move || write_groups(&config, wrx))
                    .map_err(StoreError::Io)?;
                *self.writer.lock().expect("writer handle") = Some(handle);
                *writes = Some(wtx);
            }
            writes.as_ref().ok_or(StoreError::Closed)?.send(work).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f`'s statements, each on its own (see [`Mode::Statements`]).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(Mode::Statements, f).await
    }

    /// Runs `f` in one read-only snapshot (or, `write`, a write transaction), waiting on the
    /// calling thread, which must not be an async one.
    pub(crate) fn run_blocking<T: Send + 'static>(
        &self,
        write: bool,
        f: impl FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mode = if write { Mode::Write } else { Mode::Snapshot };
        self.run_blocking_with(move |conn| transaction(conn.as_ref().expect("connected"), mode, f))
    }

    /// Lets the connections finish their jobs and close.
    pub(crate) fn close(&self) {
        self.writes.lock().expect("writer").take();
        if let Some(h) = self.writer.lock().expect("writer handle").take() {
            let _ = h.join();
        }
        self.jobs.lock().expect("jobs").take();
        for w in self.workers.lock().expect("workers").drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer's loop: takes the writes queued together and commits them as one transaction.
fn write_groups(config: &postgres::Config, rx: mpsc::Receiver<Work>) {
    const LOST: &str = "the write was rolled back with the transaction it shared";
    let mut conn: Option<PgConn> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        if conn.as_ref().is_none_or(PgConn::is_closed) {
            conn = match config.connect(postgres::NoTls) {
                Ok(client) => Some(PgConn::new(client)),
                Err(e) => {
                    let why = format!("cannot connect to the database: {e}");
                    group.into_iter().for_each(|w| w(Err(&why)).1(None));
                    continue;
                }
            };
        }
        let Some(pg) = conn.as_ref() else { continue };
        let c = Conn::Pg(pg);
        // One round trip opens the transaction, takes the lock and the first write's savepoint.
        if let Err(e) = c.batch(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}); SAVEPOINT mmloop_write")) {
            let _ = c.batch("ROLLBACK");
            let why = format!("the write could not start: {e}");
            group.into_iter().for_each(|w| w(Err(&why)).1(None));
            continue;
        }
        GROUP.with(|g| *g.borrow_mut() = Some(Group::default()));
        let n = group.len();
        let mut replies: Vec<Reply> = Vec::with_capacity(n);
        let mut broken = false;
        for (i, work) in group.into_iter().enumerate() {
            if broken {
                work(Err(LOST)).1(None);
                continue;
            }
            let (ok, reply) = work(Ok(c));
            if !ok {
                group_forget_head();
            }
            // One round trip ends this write's savepoint and opens the next write's.
            let end = if ok {
                "RELEASE SAVEPOINT mmloop_write"
            } else {
                "ROLLBACK TO SAVEPOINT mmloop_write; RELEASE SAVEPOINT mmloop_write"
            };
            let next = if i + 1 < n { "; SAVEPOINT mmloop_write" } else { "" };
            if c.batch(&format!("{end}{next}")).is_err() {
                // The transaction is gone: everything in it so far is lost.
                broken = true;
                for r in replies.drain(..) {
                    r(Some(LOST));
                }
                reply(Some(LOST));
                continue;
            }
            replies.push(reply);
        }
        // The database's own anchor follows the group's last event, once per group, in the
        // commit's round trip.
        let finish = match group_end() {
            _ if broken => Err(()),
            (false, _) => Ok("COMMIT".to_string()),
            (true, known) => {
                let head = match known {
                    Some(head) => Ok(head),
                    None => crate::audit::head(c),
                };
                match head {
                    Ok(Some((seq, hash))) => Ok(format!(
                        "INSERT INTO audit_head (one, seq, hash) VALUES (1, {seq}, decode('{}', 'hex'))
                         ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
                         COMMIT",
                        hex::encode(hash)
                    )),
                    Ok(None) => Ok("COMMIT".to_string()),
                    Err(_) => Err(()),
                }
            }
        };
        let Ok(finish) = finish else {
            let _ = c.batch("ROLLBACK");
            for r in replies {
                r(Some(LOST));
            }
            continue;
        };
        match c.batch(&finish) {
            Ok(()) => replies.into_iter().for_each(|r| r(None)),
            Err(e) => {
                let _ = c.batch("ROLLBACK");
                let why = format!("the commit failed: {e}");
                replies.into_iter().for_each(|r| r(Some(&why)));
            }
        }
    }
}

/// How a closure runs on a pooled connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A transaction of its own under the write lock.
    Write,
    /// A transaction of its own, without the write lock, committed without waiting for the WAL
    /// flush (soft state: leases).
    Unlocked,
    /// A read-only transaction: one snapshot for all its statements (an export, a migration).
    Snapshot,
    /// Each statement on its own, as SQLite's reads run: no round trips for BEGIN and COMMIT
    /// on the review server's hot path.
    Statements,
}

fn transaction<T>(conn: &PgConn, mode: Mode, f: impl FnOnce(Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let c = Conn::Pg(conn);
    match mode {
        Mode::Write => c.batch(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"))?,
        Mode::Unlocked => c.batch("BEGIN; SET LOCAL synchronous_commit = off")?,
        Mode::Snapshot => c.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?,
        Mode::Statements => return f(c),
    }
    match f(c) {
        Ok(v) => {
            c.batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = c.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Brings the schema up to date under the write lock, so two servers starting at once do not
/// both migrate. A database with no mmloop schema is refused unless `create`.
fn migrate(conn: &PgConn, create: bool) -> Result<(), StoreError> {
    transaction(conn, Mode::Write, |c| {
        let exists: bool = c.one("SELECT to_regclass('mmloop_schema') IS NOT NULL", &[], |r| r.get(0))?;
        let version = if exists {
            c.one("SELECT version FROM mmloop_schema", &[], |r| r.get::<i64>(0))? as usize
        } else if create {
            c.batch("CREATE TABLE mmloop_schema (version BIGINT NOT NULL); INSERT INTO mmloop_schema VALUES (0)")?;
            0
        } else {
            return Err(StoreError::Config(
                "the database holds no mmloop project\n  hint: create one with `mmloop init DIR --database URL`".into(),
            ));
        };
        if version > MIGRATIONS.len() {
            return Err(StoreError::TooNew { found: version, supported: MIGRATIONS.len() });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            c.batch(sql)?;
            c.execute("UPDATE mmloop_schema SET version = ?1", &[&((i + 1) as i64)])?;
        }
        Ok(())
    })
}

/// `url` without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user_pass = &url[s + 3..at];
            match user_pass.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::test_support::{pg_admin, postgres};

    /// A project whose database is on a PostgreSQL server: created, written, verified,
    /// reopened from its folder; the database takes no second project, and a schema newer
    /// than the binary is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_project_lives_on_a_postgres_server() {
        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        let store = Store::init_with(&root, Some("remote"), "ann", Some(&pg.url)).await.unwrap();
        assert!(!store.paths().db.exists(), "no SQLite file beside a PostgreSQL project");
        let text = std::fs::read_to_string(&store.paths().config).unwrap();
        assert!(text.contains(&format!("database = \"{}\"", pg.url)), "{text}");
        let report = store.audit_verify().await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.events, 1);
        store.close();

        let store = Store::open(&root).await.unwrap();
        let log = store.audit_log(None, 10).await.unwrap();
        assert_eq!((log.len(), log[0].action.as_str(), log[0].actor.as_str()), (1, "project.init", "ann"));
        store.close();

        let again = Store::init_with(&dir.path().join("q"), None, "bob", Some(&pg.url)).await;
        assert!(
            again.as_ref().is_err_and(|e| e.to_string().contains("already holds an mmloop project")),
            "{:?}",
            again.err()
        );

        pg_admin(&pg.url, "UPDATE mmloop_schema SET version = 99").unwrap();
        let newer = Store::open(&root).await;
        assert!(matches!(newer, Err(crate::StoreError::TooNew { found: 99, .. })), "{:?}", newer.err());
    }

    /// The loop's spine on PostgreSQL: import (items, images, imported labels, the review
    /// queue), an item with its images, a label save and its conflict, commit, log, diff,
    /// export at a version, and an audit chain that verifies with every digest recomputed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_label_commit_diff_export_on_postgres() {
        use mmloop_core::{Answer, LabelStatus};

        use crate::test_support::{import, record};
        use crate::{ExportFilter, LabelSave, SaveOutcome, VersionSpec};

        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init_with(&dir.path().join("p"), None, "ann", Some(&pg.url)).await.unwrap();
        let records = (0..5)
            .map(|i| record(dir.path(), i, &format!("What is in picture {i}?"), (i % 2 == 0).then_some("a cat")))
            .collect();
        let report = import(&store, dir.path(), records).await.unwrap();
        assert_eq!((report.added, report.images_added, report.labels), (5, 5, 3));
        // The same file again changes nothing.
        let records = (0..5)
            .map(|i| record(dir.path(), i, &format!("What is in picture {i}?"), (i % 2 == 0).then_some("a cat")))
            .collect();
        let again = import(&store, dir.path(), records).await.unwrap();
        assert_eq!((again.added, again.unchanged), (0, 5));

        let item = store.item(2).await.unwrap();
        assert_eq!((item.question.as_str(), item.images.len()), ("What is in picture 1?", 1));
        let (img, bytes) = store.image_bytes(item.images[0].id).await.unwrap().unwrap();
        assert_eq!((img.width, img.height, bytes.len() as u64), (2, 1, img.bytes));

        let v1 = store.commit("first", "ann").await.unwrap().version;
        let save = |base, text: &str| LabelSave {
            status: LabelStatus::Edited,
            answer: Answer::text(text),
            base,
            actor: "bob".into(),
            action: "edit".into(),
            lead_time_ms: Some(800),
        };
        let saved = match store.save_label(2, save(None, "a dog")).await.unwrap() {
            SaveOutcome::Saved { label } => label,
            other => panic!("{other:?}"),
        };
        assert!(matches!(store.save_label(2, save(None, "a bird")).await.unwrap(), SaveOutcome::Conflict { .. }));
        assert_eq!(store.label_history(2).await.unwrap().len(), 1);
        let v2 = store.commit("second", "bob").await.unwrap().version;
        assert!(store.commit("nothing", "bob").await.is_err(), "nothing changed since v2");
        let log = store.log().await.unwrap();
        assert_eq!(log.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(store.version(&v1.id.to_hex()[..8]).await.unwrap().seq, 1);

        let diff = store.diff("v1", "v2", 10).await.unwrap();
        assert_eq!((diff.added, diff.removed, diff.changed), (0, 0, 1));
        assert_eq!(diff.entries[0].after.as_ref().map(|l| l.id), Some(saved.id));

        let filter = ExportFilter { include_unreviewed: true, ..Default::default() };
        let (info, rx) = store.export(VersionSpec::Named("v2".into()), filter).await.unwrap();
        let records: Vec<_> = rx.into_iter().map(Result::unwrap).collect();
        assert_eq!((info.version.map(|v| v.seq), records.len()), (Some(v2.seq), 5));
        assert_eq!(records[1].answer.as_ref().and_then(|a| a.text.as_deref()), Some("a dog"));

        let report = store.audit_verify().await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        // An answer rewritten behind the store's back is caught on PostgreSQL too.
        pg_admin(&pg.url, &format!("UPDATE labels SET answer = 'a fox' WHERE id = {}", saved.id)).unwrap();
        let report = store.audit_verify().await.unwrap();
        assert!(
            report.problems.contains(&crate::AuditProblem::LabelChanged { label: saved.id, item: 2 }),
            "{:?}",
            report.problems
        );
        store.close();
    }

    /// Two stores on one PostgreSQL database (as two review servers): 12 reviewers, half on
    /// each, take items and decide until the queue is empty. No item is handed to two reviewers
    /// at once, every decision is kept, and the audit chain is one chain that verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reviewers_on_two_servers_share_one_queue() {
        use mmloop_core::Answer;

        use crate::review::{Decision, DecisionAction, QueueFilter, Role};
        use crate::test_support::{import, record};

        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let a = Store::init_with(&dir.path().join("a"), None, "ann", Some(&pg.url)).await.unwrap();
        let n = 60;
        let records = (0..n).map(|i| record(dir.path(), i, &format!("q{i}"), None)).collect();
        import(&a, dir.path(), records).await.unwrap();
        // The second server: another folder whose mmloop.toml names the same database.
        let b_dir = dir.path().join("b");
        std::fs::create_dir_all(&b_dir).unwrap();
        std::fs::copy(&a.paths().config, b_dir.join("mmloop.toml")).unwrap();
        let b = Store::open(&b_dir).await.unwrap();
        let mut users = Vec::new();
        for i in 0..12 {
            users.push(a.create_user(&format!("r{i}"), Role::Reviewer, None, "ann").await.unwrap());
        }
        let held = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<i64, String>::new()));
        let mut tasks = Vec::new();
        for (i, user) in users.into_iter().enumerate() {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let held = held.clone();
            tasks.push(tokio::spawn(async move {
                let mut decided = Vec::new();
                while let Some(item) = store.next_item(&user, &QueueFilter::default(), 60_000).await.unwrap() {
                    let id = item.item.id;
                    if let Some(other) = held.lock().unwrap().insert(id, user.name.clone()) {
                        panic!("item {id} handed to {} while {other} held it", user.name);
                    }
                    let d = Decision {
                        action: DecisionAction::Edit,
                        base: item.item.label.as_ref().map(|l| l.id),
                        answer: Some(Answer::text(format!("by {}", user.name))),
                        candidate_id: None,
                        lead_time_ms: Some(100),
                    };
                    held.lock().unwrap().remove(&id);
                    store.decide(id, &user, d).await.unwrap();
                    decided.push(id);
                }
                decided
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=n as i64).collect::<Vec<_>>(), "every item decided exactly once");
        for id in [1, n as i64 / 2, n as i64] {
            let item = b.item(id).await.unwrap();
            assert!(item.label.is_some_and(|l| l.answer.text.is_some_and(|t| t.starts_with("by r"))));
        }
        let report = b.audit_verify().await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.events, 1 + 1 + 12 + n as u64, "init, import, users, decisions");
        a.close();
        b.close();
    }

    /// Writes queued together share a transaction; one whose appends are undone (a savepoint
    /// rolled back while it still succeeds, or a write that fails) leaves the chain whole for
    /// the writes after it in the same group, and the database's anchor names the last event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_with_undone_appends_keeps_one_chain() {
        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init_with(&dir.path().join("p"), None, "ann", Some(&pg.url)).await.unwrap();
        let mut writes = Vec::new();
        for i in 0..60 {
            let db = store.db().clone();
            writes.push(tokio::spawn(async move {
                db.write(move |c| {
                    crate::audit::append(c, "ann", "note", &format!("kept:{i}"), None, None)?;
                    match i % 3 {
                        // Undone inside, yet the write succeeds (and the next one appends).
                        0 => {
                            let sp = c.savepoint()?;
                            crate::audit::append(c, "ann", "note", "undone", None, None)?;
                            drop(sp);
                            Ok(())
                        }
                        1 => Ok(()),
                        // Fails after appending: all of it undone.
                        _ => Err(StoreError::Config("refused".into())),
                    }
                })
                .await
            }));
        }
        let mut ok = 0;
        for w in writes {
            ok += usize::from(w.await.unwrap().is_ok());
        }
        assert_eq!(ok, 40);
        let report = store.audit_verify().await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.events, 1 + 40, "init and the kept appends");
        let url = pg.url.clone();
        let anchored: i64 = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one("SELECT seq FROM audit_head", &[]).unwrap().get(0)
        })
        .join()
        .unwrap();
        assert_eq!(anchored, 41);
        store.close();
    }

    /// A reviewer working through filtered queues gets the same items in the same order from
    /// either database (on PostgreSQL the pick and its lease are one statement), and a second
    /// reviewer never the item the first holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filtered_picks_follow_the_same_order_on_both_databases() {
        use mmloop_core::{Candidate, Digest, RiskFlag};

        use crate::NewCandidate;
        use crate::review::{Decision, DecisionAction, QueueFilter, Role};
        use crate::test_support::project_on;

        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut orders = Vec::new();
        for database in [None, Some(pg.url.as_str())] {
            let store = project_on(dir.path(), database, 16).await;
            let hedge = RiskFlag { flag: "hedge".into(), why: String::new(), span: None };
            let rows = (1..=14)
                .map(|i: i64| {
                    let flags = if i % 3 == 0 { vec![hedge.clone()] } else { vec![] };
                    let confidence = Some(((i * 7) % 15) as f64 / 15.0);
                    NewCandidate::answered(i, Candidate { answer: format!("a{i}"), confidence, detail: None, flags })
                })
                .collect();
            store.add_candidates(None, "m", Digest([1; 32]), "ann", rows).await.unwrap();
            let ann = store.create_user("r1", Role::Reviewer, None, "ann").await.unwrap();
            let bob = store.create_user("r2", Role::Reviewer, None, "ann").await.unwrap();
            let filters = [
                QueueFilter { flag: Some("hedge".into()), ..Default::default() },
                QueueFilter { min_conf: Some(0.3), max_conf: Some(0.8), ..Default::default() },
                QueueFilter::default(),
            ];
            let mut order = Vec::new();
            for filter in &filters {
                while let Some(item) = store.next_item(&ann, filter, 60_000).await.unwrap() {
                    let id = item.item.id;
                    assert_eq!(item.lease.as_ref().map(|l| l.user.as_str()), Some("r1"));
                    // The held item comes back to its holder, and never goes to another.
                    let again = store.next_item(&ann, filter, 60_000).await.unwrap().unwrap();
                    assert_eq!(again.item.id, id);
                    if let Some(other) = store.next_item(&bob, filter, 60_000).await.unwrap() {
                        assert_ne!(other.item.id, id);
                        store.release_item(other.item.id, &bob).await.unwrap();
                    }
                    let d = Decision {
                        action: DecisionAction::Skip,
                        base: item.item.label.as_ref().map(|l| l.id),
                        answer: None,
                        candidate_id: None,
                        lead_time_ms: None,
                    };
                    store.decide(id, &ann, d).await.unwrap();
                    order.push(id);
                }
                order.push(0);
            }
            assert_eq!(order.iter().filter(|&&id| id != 0).count(), 16, "{order:?}");
            orders.push(order);
            store.close();
        }
        assert_eq!(orders[0], orders[1]);
        // The queue's tallies, kept by the triggers (new rows per statement, changes per row),
        // equal a scan of the queue.
        let url = pg.url.clone();
        let (kept, scanned) = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut rows = |sql: &str| -> Vec<(String, i64, i64, String, i64)> {
                c.query(sql, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
            };
            let kept =
                rows("SELECT status, has_cand, bucket, flags, n FROM queue_tally WHERE n > 0 ORDER BY 1, 2, 3, 4");
            let scanned = rows(
                "SELECT status, COALESCE(has_cand, 0), bucket, COALESCE(flags, ''), COUNT(*) FROM review_queue
                 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            );
            (kept, scanned)
        })
        .join()
        .unwrap();
        assert_eq!(kept, scanned);
        assert!(kept.len() > 2, "{kept:?}");
    }

    /// A commit stores only the manifest pages no earlier version has (found in one statement,
    /// written in one COPY on PostgreSQL), the same count on both databases.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_share_unchanged_pages_on_both_databases() {
        use mmloop_core::{Answer, LabelStatus};

        use crate::test_support::project_on;
        use crate::{LabelSave, SaveOutcome};

        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut counts = Vec::new();
        for database in [None, Some(pg.url.as_str())] {
            let store = project_on(dir.path(), database, 3000).await;
            let v1 = store.commit("first", "ann").await.unwrap();
            assert!(v1.pages >= 2, "{v1:?}");
            assert_eq!(v1.new_pages, v1.pages);
            let save = LabelSave {
                status: LabelStatus::Edited,
                answer: Answer::text("a dog"),
                base: None,
                actor: "ann".into(),
                action: "edit".into(),
                lead_time_ms: None,
            };
            assert!(matches!(store.save_label(7, save).await.unwrap(), SaveOutcome::Saved { .. }));
            let v2 = store.commit("second", "ann").await.unwrap();
            assert_eq!(v2.pages, v1.pages);
            assert_eq!(v2.new_pages, 1, "only the page holding item 7 is new");
            let diff = store.diff("v1", "v2", 10).await.unwrap();
            assert_eq!((diff.added, diff.removed, diff.changed), (0, 0, 1));
            counts.push((v1.pages, v1.new_pages, v2.new_pages));
            store.close();
        }
        assert_eq!(counts[0], counts[1]);
    }

    /// The database's own anchor only moves forward and cannot be deleted; deleting the newest
    /// events is caught by it even without the folder's `.mmloop/audit-head`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_database_anchor_catches_deleted_events() {
        let Some(pg) = postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init_with(&dir.path().join("p"), None, "ann", Some(&pg.url)).await.unwrap();
        store
            .db()
            .write(|c| {
                crate::audit::append(c, "ann", "note", "project", None, None)?;
                crate::audit::append(c, "ann", "note", "project", None, None)?;
                Ok(())
            })
            .await
            .unwrap();
        std::fs::remove_file(&store.paths().audit_head).ok();
        assert!(store.audit_verify().await.unwrap().ok());
        for refused in ["DELETE FROM audit_head", "UPDATE audit_head SET seq = 1", "TRUNCATE audit_head"] {
            let e = pg_admin(&pg.url, refused).unwrap_err();
            assert!(crate::pg_message(&e).contains("audit head anchor"), "{refused}: {e}");
        }
        pg_admin(&pg.url, "DELETE FROM events WHERE seq = 3").unwrap();
        let report = store.audit_verify().await.unwrap();
        assert!(
            report.problems.contains(&crate::AuditProblem::Truncated { anchored_seq: 3, last_seq: 2 }),
            "{:?}",
            report.problems
        );
        store.close();
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://ann:secret@db:5432/p"), "postgres://ann:***@db:5432/p");
        assert_eq!(redact("postgres://ann@db/p"), "postgres://ann@db/p");
        assert_eq!(redact("host=db user=ann"), "host=db user=ann");
    }
}
