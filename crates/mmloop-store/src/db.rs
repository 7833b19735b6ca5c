//! SQLite access: one writer thread that owns the only writing connection (SQLite allows
//! one writer at a time; queuing in-process avoids busy errors), and a small pool of
//! read connections that run on tokio's blocking threads (WAL lets them read while the
//! writer writes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::pg::PgDb;
use crate::sql::{Conn, Dialect};

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_review.sql"),
    include_str!("../migrations/0003_routing.sql"),
    include_str!("../migrations/0004_ab.sql"),
    include_str!("../migrations/0005_candidate_flags.sql"),
    include_str!("../migrations/0006_tallies.sql"),
];

/// A queued write: it runs on the writer connection and returns what to tell its caller once
/// the commit it is part of is known (`Some(why)` when that commit failed).
type Work = Box<dyn FnOnce(&mut Connection) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

enum Job {
    /// Shares a commit with the writes queued beside it (see `commit_group`).
    Grouped(Work),
    /// A large write (an import) in a transaction of its own: inside a shared transaction its
    /// savepoint would keep a copy of every page it changes.
    Alone(Work),
}

/// At most this many queued writes share one commit (one fsync).
const GROUP_MAX: usize = 64;

/// The project's database: SQLite in the project folder, or a PostgreSQL server (`pg.rs`).
pub(crate) enum Db {
    Lite(Lite),
    Pg(PgDb),
}

pub(crate) struct Lite {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
}

/// Prepared statements kept per connection. A review request runs a few dozen distinct
/// statements (auth, pick, lease, item, images, label, candidates, flags, audit); rusqlite
/// keeps 16 by default, and an LRU smaller than the working set re-parses every statement on
/// every request.
const STATEMENT_CACHE: usize = 256;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // FULL: a decision acknowledged to a reviewer survives a power loss. NORMAL may lose the
    // newest commits, and the fsynced audit-head anchor would then name an event the
    // database no longer has (verify would report tampering).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;",
    )
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = version as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::TooNew { found: version, supported: MIGRATIONS.len() });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Runs the writes queued together in one `IMMEDIATE` transaction and commits them at once:
/// under many concurrent writers (reviewers saving) one fsync serves the whole group instead
/// of one each. Every write runs in its own savepoint, so one that fails is undone alone; each
/// caller hears back only after the commit, so nothing is acknowledged that a crash could
/// still lose. Should a failure end the whole transaction (SQLite rolls back on some I/O
/// errors), the writes before it are reported failed and the rest start a new one.
fn commit_group(conn: &mut Connection, group: Vec<Work>) {
    const LOST: &str = "the write was rolled back with the transaction it shared";
    let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
    let mut open = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    for job in group {
        if !open {
            // No shared transaction: the job's own savepoint is its transaction.
            job(conn)(None);
            open = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
            continue;
        }
        let reply = job(conn);
        if conn.is_autocommit() {
            for r in replies.drain(..) {
                r(Some(LOST));
            }
            reply(Some(LOST));
            open = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
            continue;
        }
        replies.push(reply);
    }
    if !open {
        return;
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => replies.into_iter().for_each(|r| r(None)),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let why = format!("the commit failed: {e}");
            replies.into_iter().for_each(|r| r(Some(&why)));
        }
    }
}

/// Runs one write outside any shared transaction: it opens its own (`conn.transaction()`,
/// which takes the write lock at `BEGIN`) and commits it. A write that returns leaving a
/// transaction open is rolled back and reported failed.
fn commit_alone(conn: &mut Connection, work: Work) {
    let reply = work(conn);
    if conn.is_autocommit() {
        reply(None)
    } else {
        let _ = conn.execute_batch("ROLLBACK");
        reply(Some("the write left its transaction open; it was rolled back"))
    }
}

/// When the writer copies the write-ahead log into the database. Readers never wait for a
/// checkpoint, but the writer does, and so does every write queued behind it: SQLite's own
/// rule (inside the commit that crosses 1,000 pages) stalled reviewers under load. Here the
/// writer checkpoints when its queue is empty, once enough commits have piled up, and only
/// under unbroken load after many more: the log stays bounded either way, since only a
/// checkpoint by the writer, with nothing appended meanwhile, lets it start over.
#[derive(Default)]
struct Checkpoints {
    commits: u32,
    /// A long write (an import) committed since the last checkpoint: its pages should not wait
    /// for seven more commits to reach the database file.
    big: bool,
}

impl Checkpoints {
    /// Commits after which an idle writer checkpoints.
    const WHEN_IDLE: u32 = 8;
    /// Commits after which the writer checkpoints even with writes waiting.
    const AT_MOST: u32 = 512;

    /// A group that took longer than this counts as a long write.
    const LONG: std::time::Duration = std::time::Duration::from_millis(200);

    fn idle(&mut self, conn: &Connection) {
        if self.commits >= Self::WHEN_IDLE || self.big {
            self.run(conn);
        }
    }

    fn committed(&mut self, conn: &Connection, took: std::time::Duration) {
        self.commits += 1;
        self.big |= took >= Self::LONG;
        if self.commits >= Self::AT_MOST {
            self.run(conn);
        }
    }

    fn run(&mut self, conn: &Connection) {
        // Busy (a reader on an old snapshot holds frames): copied as far as it can, the rest later.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        self.commits = 0;
        self.big = false;
    }
}

impl Db {
    /// Opens (creating when `create`) the SQLite database file and brings its schema up to date.
    pub(crate) fn open(path: &Path, create: bool) -> Result<Arc<Db>, StoreError> {
        Ok(Arc::new(Db::Lite(Lite::open(path, create)?)))
    }

    /// Connects to the PostgreSQL database at `url` and brings its schema up to date.
    pub(crate) fn open_postgres(url: &str, create: bool) -> Result<Arc<Db>, StoreError> {
        Ok(Arc::new(Db::Pg(PgDb::open(url, create)?)))
    }

    /// Which SQL the database speaks.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Db::Lite(_) => Dialect::Sqlite,
            Db::Pg(_) => Dialect::Postgres,
        }
    }

    #[cfg(test)]
    fn lite(&self) -> Result<&Lite, StoreError> {
        match self {
            Db::Lite(l) => Ok(l),
            Db::Pg(_) => Err(StoreError::Internal("an SQLite-only test hook on a PostgreSQL database".into())),
        }
    }

    /// Runs `f` in a write transaction on either database, after (SQLite) or beside
    /// (PostgreSQL, under the write lock) the writes queued before it; returns once its changes
    /// are committed. `f` opens a savepoint ([`Conn::savepoint`]) for changes that stand or fall
    /// together, never a transaction.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        match self {
            Db::Lite(l) => l.queue(move |c| f(Conn::Lite(c)), Job::Grouped).await,
            Db::Pg(pg) => pg.write(f).await,
        }
    }

    /// Like [`Db::write`] where `f` may keep or undo what it wrote (`(value, keep)`); its value
    /// comes back either way. On PostgreSQL the savepoint the writer opens around each write
    /// serves for this, so the undo costs no round trips of its own.
    pub(crate) async fn write_or_undo<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<(T, bool), StoreError> + Send + 'static,
    {
        match self {
            Db::Lite(l) => {
                l.queue(
                    move |c| {
                        let c = Conn::Lite(c);
                        let sp = c.savepoint()?;
                        let (v, keep) = f(c)?;
                        if keep {
                            sp.commit()?;
                        }
                        Ok(v)
                    },
                    Job::Grouped,
                )
                .await
            }
            Db::Pg(pg) => pg.write_or_undo(f).await,
        }
    }

    /// After a bulk write of `rows` rows into `tables` (the largest first), committed: on
    /// PostgreSQL, gathers the planner's statistics when the write is a tenth or more of what
    /// the first table held (autovacuum's own rule, which it applies only a while later;
    /// meanwhile an export or a commit right after a large import is planned blind, 30x
    /// slower at a million items). Nothing on SQLite, whose plans do not depend on them.
    pub(crate) async fn analyze_after(&self, rows: u64, tables: &'static [&'static str]) -> Result<(), StoreError> {
        let Db::Pg(pg) = self else { return Ok(()) };
        if rows < 1000 || tables.is_empty() {
            return Ok(());
        }
        pg.read(move |c| {
            let known: Option<f64> = c.optional(
                "SELECT CAST(reltuples AS DOUBLE PRECISION) FROM pg_class WHERE oid = to_regclass(?1)",
                &[&tables[0]],
                |r| r.get(0),
            )?;
            // -1: never analyzed.
            if known.is_none_or(|n| n < 0.0 || rows as f64 * 10.0 >= n) {
                c.batch(&format!("ANALYZE {}", tables.join(", ")))?;
            }
            Ok(())
        })
        .await
    }

    /// Like [`Db::write`] for a write that appends no audit event and may be lost in a database
    /// crash (a lease): on PostgreSQL in a transaction of its own that does not take the chain's
    /// lock nor wait for the WAL flush; on SQLite as [`Db::write`].
    pub(crate) async fn write_unaudited<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        match self {
            Db::Lite(l) => l.queue(move |c| f(Conn::Lite(c)), Job::Grouped).await,
            Db::Pg(pg) => pg.write_unlocked(f).await,
        }
    }

    /// Like [`Db::write`] for a large write (an import): in a transaction of its own,
    /// which `f` must not open or close.
    pub(crate) async fn write_alone<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        match self {
            Db::Lite(l) => {
                let work = move |c: &mut Connection| {
                    let tx = c.transaction()?;
                    let out = f(Conn::Lite(&tx))?;
                    tx.commit()?;
                    Ok(out)
                };
                l.queue(work, Job::Alone).await
            }
            Db::Pg(pg) => pg.write_alone(f).await,
        }
    }

    /// Runs `f`'s reads on either database, off the async threads; each statement sees the
    /// latest commit (see [`Db::read_blocking`] for one snapshot).
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    {
        match &**self {
            Db::Lite(_) => {
                let db = self.clone();
                tokio::task::spawn_blocking(move || match &*db {
                    Db::Lite(l) => l.read_blocking(|c| f(Conn::Lite(c))),
                    Db::Pg(_) => unreachable!("matched SQLite"),
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
            }
            Db::Pg(pg) => pg.read(f).await,
        }
    }

    /// Runs `f`'s reads in one snapshot (a read transaction) on either database, waiting on
    /// the calling thread (never an async one): for reads that must agree with each other
    /// from the first row to the last (an export, a migration).
    pub(crate) fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match self {
            Db::Lite(l) => l.read_blocking(|c| read_transaction(c, f)),
            Db::Pg(pg) => pg.run_blocking(false, f),
        }
    }

    /// Runs `f` on the SQLite writer connection, as the writes of [`Db::write`] run: for
    /// tests of SQLite's own behaviour (commit groups, checkpoints, migrations).
    #[cfg(test)]
    pub(crate) async fn sqlite_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.lite()?.queue(f, Job::Grouped).await
    }

    /// Runs `f` on an SQLite read connection: for tests of SQLite's own behaviour.
    #[cfg(test)]
    pub(crate) async fn sqlite_read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.lite()?.read_blocking(f))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Waits for queued writes and closes the connections.
    pub(crate) fn close(&self) {
        match self {
            Db::Lite(l) => l.close(),
            Db::Pg(pg) => pg.close(),
        }
    }
}

/// Runs `f` on an SQLite read connection inside one read transaction.
fn read_transaction<T>(c: &Connection, f: impl FnOnce(Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
    c.execute_batch("BEGIN")?;
    let out = f(Conn::Lite(c));
    c.execute_batch("COMMIT")?;
    out
}

impl Lite {
    fn open(path: &Path, create: bool) -> Result<Lite, StoreError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        // Every transaction on the writer takes the write lock at BEGIN. A deferred one that reads
        // first and then needs the lock while a reader briefly holds it (WAL-index recovery) fails
        // at once with SQLITE_BUSY: SQLite does not call the busy handler inside a read transaction.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        migrate(&mut conn)?;
        // A checkpoint only shrinks the log back to this size when it starts over (a run of
        // saves under constant readers once left a 78 MB log behind).
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        // The writer checkpoints when nobody is waiting for it (see `Checkpoints`), not inside
        // the commit that happens to cross 1,000 pages with reviewers queued behind it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let writer = std::thread::Builder::new()
            .name("mmloop-store-writer".into())
            .spawn(move || {
                let mut checkpoints = Checkpoints::default();
                // A write that must run alone, met while gathering a group: it runs next.
                let mut held = None;
                loop {
                    let first = match held.take().map_or_else(|| rx.try_recv(), Ok) {
                        Ok(job) => job,
                        Err(mpsc::TryRecvError::Empty) => {
                            checkpoints.idle(&conn);
                            match rx.recv() {
                                Ok(job) => job,
                                Err(_) => break,
                            }
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    };
                    let started = std::time::Instant::now();
                    match first {
                        Job::Alone(work) => commit_alone(&mut conn, work),
                        Job::Grouped(work) => {
                            let mut group = vec![work];
                            while group.len() < GROUP_MAX {
                                match rx.try_recv() {
                                    Ok(Job::Grouped(work)) => group.push(work),
                                    Ok(alone) => {
                                        held = Some(alone);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            commit_group(&mut conn, group);
                        }
                    }
                    checkpoints.committed(&conn, started.elapsed());
                }
                // Closing: leave the database file whole for the next program that opens it.
                if checkpoints.commits > 0 || checkpoints.big {
                    checkpoints.run(&conn);
                }
            })
            .map_err(StoreError::Io)?;
        Ok(Lite {
            path: path.to_path_buf(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(Vec::new()),
        })
    }

    async fn queue<T, F>(&self, f: F, kind: fn(Work) -> Job) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let out = f(conn);
            Box::new(move |failed: Option<&str>| {
                let out = match failed {
                    Some(why) => Err(StoreError::Internal(why.to_string())),
                    None => out,
                };
                let _ = tx.send(out);
            })
        });
        self.jobs
            .lock()
            .expect("writer lock")
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(kind(work))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection on the calling thread.
    pub(crate) fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.readers.lock().expect("reader pool").pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(30))?;
                c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                c.execute_batch("PRAGMA cache_size = -32768;")?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool");
        // Enough for a busy review server: opening a connection parses the schema again.
        if pool.len() < 32 {
            pool.push(conn);
        }
        out
    }

    /// Waits for queued writes and closes the writer connection.
    fn close(&self) {
        self.jobs.lock().expect("writer lock").take();
        if let Some(h) = self.writer.lock().expect("writer handle").take() {
            let _ = h.join();
        }
        self.readers.lock().expect("reader pool").clear();
    }
}

impl Drop for Lite {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With automatic checkpoints off, the writer's own (when idle) keep the log from growing
    /// with every commit: it starts over instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_writer_checkpoints_and_the_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path, true).unwrap();
        db.sqlite_write(|c| Ok(c.execute_batch("CREATE TABLE t (x BLOB)")?)).await.unwrap();
        // 400 commits of 16 KiB each, with a pause after each so the writer finds its queue
        // empty (back to back, the next write may already be queued: see the next test).
        for _ in 0..400 {
            db.sqlite_write(|c| Ok(c.execute("INSERT INTO t (x) VALUES (zeroblob(16384))", [])?)).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let wal = std::fs::metadata(dir.path().join("t.db-wal")).unwrap().len();
        assert!(wal < 2 * 1024 * 1024, "the log holds {wal} bytes: it never started over");
        db.close();
    }

    /// Under unbroken load the writer never finds its queue empty, yet it checkpoints after
    /// `AT_MOST` commits: the log holds at most that many, whichever way the race goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_bounded_when_the_writer_is_never_idle() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), true).unwrap();
        db.sqlite_write(|c| Ok(c.execute_batch("CREATE TABLE t (x BLOB)")?)).await.unwrap();
        let wal_len = || std::fs::metadata(dir.path().join("t.db-wal")).unwrap().len();
        let insert = || db.sqlite_write(|c| Ok(c.execute("INSERT INTO t (x) VALUES (zeroblob(16384))", [])?));
        insert().await.unwrap();
        let before = wal_len();
        insert().await.unwrap();
        // What one commit adds to the log (no checkpoint yet: fewer than `WHEN_IDLE` commits).
        let one = wal_len() - before;
        // 1,200 commits back to back: 2.3 times the bound.
        for _ in 0..1200 {
            insert().await.unwrap();
        }
        let bound = u64::from(Checkpoints::AT_MOST + 8) * one;
        let wal = wal_len();
        assert!(wal <= bound, "the log holds {wal} bytes, over {bound}");
        db.close();
    }

    /// A write queued to run alone commits in a transaction of its own between the groups
    /// around it; one that fails, or leaves its transaction open, leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_alone_commits_on_its_own_and_fails_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), true).unwrap();
        db.sqlite_write(|c| Ok(c.execute_batch("CREATE TABLE t (x INTEGER UNIQUE)")?)).await.unwrap();
        let grouped = (0..50i64).map(|i| {
            let db = db.clone();
            tokio::spawn(
                async move { db.sqlite_write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [i])?)).await },
            )
        });
        let grouped: Vec<_> = grouped.collect();
        let alone = db.write_alone(|c| {
            for x in 100..200i64 {
                c.execute("INSERT INTO t VALUES (?1)", &[&x])?;
            }
            Ok(())
        });
        let failing = db.write_alone(|c| {
            c.execute("INSERT INTO t VALUES (300)", &[])?;
            c.execute("INSERT INTO t VALUES (100)", &[])?;
            Ok(())
        });
        let (alone, failing) = tokio::join!(alone, failing);
        alone.unwrap();
        assert!(failing.is_err(), "{failing:?}");
        for g in grouped {
            g.await.unwrap().unwrap();
        }
        let n: i64 = db.sqlite_read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)).await.unwrap();
        let stray: i64 = db
            .sqlite_read(|c| Ok(c.query_row("SELECT count(*) FROM t WHERE x >= 300", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!((n, stray), (150, 0));
        db.close();
    }

    /// Writes queued together share a commit, yet each stands or falls alone and is answered
    /// only once committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_a_failing_one_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), true).unwrap();
        db.sqlite_write(|c| Ok(c.execute_batch("CREATE TABLE t (x INTEGER UNIQUE, note TEXT)")?)).await.unwrap();
        let writes = (0..200i64).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.sqlite_write(move |c| {
                    let sp = c.savepoint()?;
                    sp.execute("INSERT INTO t (x, note) VALUES (?1, 'first')", [i])?;
                    // Every tenth write inserts a duplicate after its first row: it fails, and
                    // its first row must go with it.
                    let again = if i % 10 == 0 { i } else { 1000 + i };
                    sp.execute("INSERT INTO t (x, note) VALUES (?1, 'second')", [again])?;
                    sp.commit()?;
                    Ok(i)
                })
                .await
            })
        });
        let mut results = Vec::new();
        for w in writes.collect::<Vec<_>>() {
            results.push(w.await);
        }
        let failed: Vec<usize> =
            results.iter().enumerate().filter(|(_, r)| r.as_ref().unwrap().is_err()).map(|(i, _)| i).collect();
        assert_eq!(failed, (0..200).step_by(10).collect::<Vec<_>>());
        let (rows, orphans): (i64, i64) = db
            .sqlite_read(|c| {
                Ok(c.query_row("SELECT COUNT(*), SUM(x < 1000 AND x % 10 = 0) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .await
            .unwrap();
        assert_eq!((rows, orphans), (2 * 180, 0));
        db.close();
    }

    /// A project written by a version that kept risk flags as a JSON list on the candidate
    /// (and left its review queue behind an import) reads the same after the upgrade.
    #[test]
    fn json_flags_move_into_their_table_and_the_queue_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mmloop.db");
        {
            let c = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute_batch(
                "INSERT INTO runs (id, kind, actor, started_at, status, config) VALUES (1, 'import', 't', 'now', 'done', '{}');
                 INSERT INTO items (id, key, task, question, run_id, content) VALUES
                     (1, 'a', 'vqa', 'q', 1, x''), (2, 'b', 'vqa', 'q', 1, x''), (3, 'c', 'vqa', 'q', 1, x'');
                 INSERT INTO review_queue (item_id, status) VALUES (1, 'pending');
                 INSERT INTO candidates (item_id, model, answer, confidence, flags, created_at) VALUES
                     (1, 'm', 'maybe red', 0.4,
                      '[{\"flag\":\"hedge\",\"why\":\"says maybe\",\"span\":[0,5]},\"short\",{\"why\":\"no name\"},{\"flag\":\"x\",\"span\":[5,2]},42]', 'now'),
                     (2, 'm', 'red', 0.9, 'not json', 'now'),
                     (3, 'm', 'blue', 0.2, '[\"hedge\"]', 'now');",
            )
            .unwrap();
        }
        let db = Db::open(&path, false).unwrap();
        db.close();
        let c = Connection::open(&path).unwrap();
        type FlagRow = (i64, i64, String, String, Option<i64>, Option<i64>);
        type QueueRow = (i64, Option<f64>, Option<i64>, Option<String>);
        let flags: Vec<FlagRow> = c
            .prepare("SELECT candidate_id, pos, flag, why, span_start, span_end FROM candidate_flags ORDER BY 1, 2")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let f =
            |c, p, n: &str, w: &str, s: Option<[i64; 2]>| (c, p, n.into(), w.into(), s.map(|s| s[0]), s.map(|s| s[1]));
        assert_eq!(
            flags,
            vec![
                f(1, 0, "hedge", "says maybe", Some([0, 5])),
                f(1, 1, "short", "", None),
                f(1, 3, "x", "", None),
                f(3, 0, "hedge", "", None),
            ]
        );
        // Items 2 and 3 were not in the queue yet: they joined it; all are ranked by the flags kept.
        let queue: Vec<QueueRow> = c
            .prepare("SELECT item_id, conf, nflags, flags FROM review_queue ORDER BY item_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            queue,
            vec![
                (1, Some(0.4), Some(3), Some(",hedge,short,x,".into())),
                (2, Some(0.9), Some(0), None),
                (3, Some(0.2), Some(1), Some(",hedge,".into())),
            ]
        );
    }
}
