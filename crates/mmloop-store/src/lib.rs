//! The mmloop project store: the spine every stage reads from and writes to.
//!
//! One async [`Store`] API over an embedded SQLite database in `DIR/.mmloop/` (WAL,
//! numbered migrations). Callers never see SQL or connections, so another backend (e.g.
//! PostgreSQL for many reviewers) can sit behind the same methods. Images are
//! content-addressed by sha256, referenced in place or copied under `.mmloop/blobs/`.
//! Every mutation appends an event to a hash-chained audit log in the same transaction;
//! versions are content-addressed manifests of (item, label, split).
//!
//! This crate never parses dataset files (that is `mmloop-formats`) and never talks HTTP.

pub mod ab;
mod audit;
mod candidates;
mod db;
mod export;
mod fs;
mod images;
mod import;
mod labels;
mod migrate;
mod pg;
mod project;
pub mod review;
pub mod route_plan;
mod routing;
mod splits;
mod sql;
mod stats;
#[cfg(test)]
mod test_support;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod versions;

use std::path::PathBuf;
use std::sync::Arc;

pub use audit::{AuditEvent, AuditProblem, AuditReport};
pub use candidates::{NewCandidate, PendingFilter, RunView, StoredCandidate};
pub use export::{ExportFilter, ExportInfo, VersionSpec};
pub use images::{ImageError, ImageLimits, StoredImage, read_checked};
pub use import::{CheckedImages, ImportOptions, ImportProgress, ImportReport, Incoming};
pub use labels::{ItemView, LabelSave, LabelView, SaveOutcome};
pub use migrate::{MigrateReport, MigrateTarget, migrate};
pub use project::{Config, ProjectPaths};
pub use review::{ReviewError, ReviewResult};
pub use routing::{
    AuditSampleInfo, Audited, PoolItem, RouteApplied, RouteApply, RouteUndone, SampleKind, SampleOptions, Verdict,
    same_answer,
};
pub use splits::{SplitPlan, SplitReport};
pub use stats::Stats;
pub use versions::{CommitOutcome, Diff, DiffEntry, DiffKind, VersionInfo};

/// What went wrong in the store. Messages name the project, file or version involved and
/// end with a hint where one helps.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}")]
    IoPath { path: PathBuf, source: std::io::Error },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("{0} is not an mmloop project\n  hint: create one with `mmloop init {0}`")]
    NotAProject(PathBuf),
    #[error("{0} is already an mmloop project")]
    AlreadyExists(PathBuf),
    #[error(
        "this project was written by a newer mmloop (schema {found}, this build knows {supported})\n  hint: upgrade mmloop"
    )]
    TooNew { found: usize, supported: usize },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Import(String),
    #[error("nothing to commit: the project is the same as {0}")]
    NothingToCommit(String),
    #[error("unknown version {0:?}\n  hint: `mmloop log` lists versions (v1, v2, ..., HEAD, HEAD~1, or an id prefix)")]
    UnknownVersion(String),
    #[error("no version committed yet\n  hint: run `mmloop commit -m \"...\"` first")]
    NoVersions,
    #[error("item {0} not found")]
    ItemNotFound(i64),
    /// Something named by the caller does not exist (an experiment, a request).
    #[error("{0}")]
    NotFound(String),
    /// A stored image whose file is gone or no longer the imported image.
    #[error("image {image}{}: {source}", items_of(items))]
    Image { image: i64, items: Vec<i64>, source: ImageError },
    #[error("the store is closed")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether another process holds the database's write lock (an import, say) for
    /// longer than this one waited: worth retrying in a moment, not a failure.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            // PostgreSQL: a transaction chosen to fail by a conflict, a lock or connection
            // limit, or a server that is not reachable right now.
            StoreError::Postgres(e) => match e.code() {
                Some(code) => {
                    use postgres::error::SqlState;
                    [
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::LOCK_NOT_AVAILABLE,
                        SqlState::TOO_MANY_CONNECTIONS,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::ADMIN_SHUTDOWN,
                    ]
                    .contains(code)
                }
                None => e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
            },
            _ => false,
        }
    }
}

/// A PostgreSQL error with the server's own message and detail, when it sent one.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({})", db.message(), detail),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

fn items_of(items: &[i64]) -> String {
    match items {
        [] => String::new(),
        [one] => format!(" (item {one})"),
        many => format!(" (items {})", many.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An open project: its folder, settings and database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    paths: ProjectPaths,
    config: Config,
    db: Arc<db::Db>,
    anchor: audit::AnchorSync,
    /// See [`routing::RoutePreview`].
    route_preview: std::sync::Mutex<Option<routing::RoutePreview>>,
}

impl Store {
    pub fn paths(&self) -> &ProjectPaths {
        &self.inner.paths
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn db(&self) -> &Arc<db::Db> {
        &self.inner.db
    }

    /// Finishes queued writes and closes the database.
    pub fn close(&self) {
        self.inner.db.close();
    }
}

/// Now, as stored: RFC 3339 UTC with microseconds.
pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
