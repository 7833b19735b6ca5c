//! Review, the store side: accounts and roles, sessions and API tokens, leases, the
//! risk-ordered review queue, reviewers' decisions and the numbers of the stats page.
//!
//! Everything a reviewer does is one write transaction here: handing out the next item
//! and leasing it, saving a decision with its audit event and releasing the lease, a user
//! change with its audit event. Secrets (passwords, session cookies, API tokens) are kept
//! only as hashes. This module never speaks HTTP and never decides how a page looks: the
//! server maps its errors to status codes, the UI renders what it returns.

mod accounts;
pub(crate) mod queue;
mod stats;

pub use accounts::{NewSecret, Permission, Role, Session, TokenInfo, User, UserUpdate};
pub use queue::{
    AuditMark, CandidateView, Decision, DecisionAction, Facets, ItemSummary, Lease, QueueFilter, ReviewItem, RiskFlag,
};
pub use stats::{BucketStats, ReviewStats, ReviewerStats};

use crate::sql::Conn;
use crate::{Store, StoreError};

/// What went wrong with a review request, in words a reviewer or a script can act on.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request makes no sense (bad value, nothing to undo...).
    #[error("{0}")]
    BadRequest(String),
    /// The user's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    /// Another reviewer holds the item.
    #[error("item {item} is leased to {user} for {seconds_left} more seconds\n  hint: take another item")]
    Leased { item: i64, user: String, seconds_left: i64 },
    /// A name that must be unique is taken.
    #[error("{0}")]
    Exists(String),
}

impl From<rusqlite::Error> for ReviewError {
    fn from(e: rusqlite::Error) -> Self {
        ReviewError::Store(StoreError::Sqlite(e))
    }
}

pub type ReviewResult<T> = std::result::Result<T, ReviewError>;

/// Milliseconds since the Unix epoch: the clock of leases, sessions and tokens.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Like [`write_tx`] for writes that append no audit event (leases): on PostgreSQL they run
/// in a transaction of their own beside the chain's lock, so picks on several servers do not
/// queue behind each other's decisions; on SQLite there is one writer either way.
async fn lease_tx<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(Conn) -> ReviewResult<(T, bool)> + Send + 'static,
) -> ReviewResult<T> {
    if store.db().dialect() == crate::sql::Dialect::Sqlite {
        return write_tx(store, f).await;
    }
    store
        .db()
        .write_unaudited(move |conn| match f(conn) {
            Ok((v, true)) => Ok(Ok(v)),
            Ok((_, false)) => Err(StoreError::Internal("a lease write asked to roll back".into())),
            Err(ReviewError::Store(e)) => Err(e),
            Err(e) => Ok(Err(e)),
        })
        .await?
}

/// Runs `f` in a write transaction that commits only when `f` returns Ok and `commit`
/// says so.
async fn write_tx<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(Conn) -> ReviewResult<(T, bool)> + Send + 'static,
) -> ReviewResult<T> {
    store
        .db()
        .write_or_undo(move |conn| match f(conn) {
            Ok((v, commit)) => Ok((Ok(v), commit)),
            Err(ReviewError::Store(e)) => Err(e),
            Err(e) => Ok((Err(e), false)),
        })
        .await?
}
