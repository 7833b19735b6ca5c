//! The review queue and reviewers' decisions.
//!
//! `review_queue` holds one row per item with the keys of the risk order (items with a
//! model candidate first, lowest confidence first, more risk flags first; then unanswered
//! items; then items with an imported answer), kept current by triggers; new items join it
//! in the import's own transaction (`sync_queue`). Handing out an item and leasing it is one write transaction,
//! so two reviewers never get the same item; a lease past its time is simply free again.
//! A decision is a label save (with its audit event) that also releases the lease.
//! Nothing here knows about HTTP or how a page looks.

use mmloop_core::{Answer, LabelStatus, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::accounts::{Permission, User};
use super::{ReviewError, ReviewResult, lease_tx, now_ms, write_tx};
use crate::labels::{
    Current, ItemView, LabelSave, LabelView, SaveOutcome, current_of, item_view_undo, label_by_id, save_on,
};
use crate::sql::{Conn, Dialect, Param, Row, Value as SqlValue};
use crate::{Store, StoreError};

/// Which items a reviewer wants next. Empty strings count as "any".
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueFilter {
    /// A label status; default: items nobody here has decided on (pending and imported).
    pub status: Option<String>,
    /// A risk flag the primary candidate raised.
    pub flag: Option<String>,
    /// Confidence range of the primary candidate (only items with a candidate match).
    pub min_conf: Option<f64>,
    pub max_conf: Option<f64>,
    pub split: Option<String>,
    pub tag: Option<String>,
    /// The model of the primary candidate.
    pub model: Option<String>,
    /// vqa or caption.
    pub task: Option<String>,
}

fn given(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl QueueFilter {
    /// The default queue: no status and no filter set. Open audit samples come first there.
    pub fn is_default(&self) -> bool {
        [&self.status, &self.flag, &self.split, &self.tag, &self.model, &self.task].iter().all(|f| given(f).is_none())
            && self.min_conf.is_none()
            && self.max_conf.is_none()
    }

    fn status(&self) -> ReviewResult<Option<LabelStatus>> {
        given(&self.status)
            .map(|s| s.parse::<LabelStatus>().map_err(|e| ReviewError::BadRequest(e.to_string())))
            .transpose()
    }

    /// Conditions on `q` (review_queue) other than the status.
    fn conditions(&self, dialect: Dialect, params: &mut Vec<SqlValue>) -> ReviewResult<Vec<&'static str>> {
        let mut out = Vec::new();
        for (v, what) in [(self.min_conf, "min_conf"), (self.max_conf, "max_conf")] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(ReviewError::BadRequest(format!("{what} must be a number")));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_conf, self.max_conf)
            && lo > hi
        {
            return Err(ReviewError::BadRequest(format!("min_conf {lo} is above max_conf {hi}")));
        }
        if self.min_conf.is_some() || self.max_conf.is_some() {
            out.push("q.tier = 0");
        }
        if let Some(lo) = self.min_conf {
            out.push("q.conf >= ?");
            params.push(SqlValue::Real(lo));
        }
        if let Some(hi) = self.max_conf {
            out.push("q.conf <= ?");
            params.push(SqlValue::Real(hi));
        }
        if let Some(f) = given(&self.flag) {
            // `flags` is ',a,b,': the flag's own name between commas, matched literally.
            out.push(match dialect {
                Dialect::Sqlite => "instr(q.flags, ?) > 0",
                Dialect::Postgres => "strpos(q.flags, ?) > 0",
            });
            params.push(SqlValue::Text(format!(",{f},")));
        }
        if let Some(m) = given(&self.model) {
            out.push("q.model = ?");
            params.push(SqlValue::Text(m.into()));
        }
        if let Some(s) = given(&self.split) {
            out.push("EXISTS (SELECT 1 FROM items i WHERE i.id = q.item_id AND i.split = ?)");
            params.push(SqlValue::Text(s.into()));
        }
        if let Some(t) = given(&self.task) {
            let t: Task = t.parse().map_err(|e: mmloop_core::ParseEnumError| ReviewError::BadRequest(e.to_string()))?;
            out.push("EXISTS (SELECT 1 FROM items i WHERE i.id = q.item_id AND i.task = ?)");
            params.push(SqlValue::Text(t.as_str().into()));
        }
        if let Some(t) = given(&self.tag) {
            out.push(match dialect {
                Dialect::Sqlite => {
                    "EXISTS (SELECT 1 FROM items i, json_each(i.tags) t WHERE i.id = q.item_id AND i.tags IS NOT NULL AND t.value = ?)"
                }
                Dialect::Postgres => {
                    "EXISTS (SELECT 1 FROM items i WHERE i.id = q.item_id AND i.tags IS NOT NULL
                             AND CAST(i.tags AS jsonb) @> jsonb_build_array(CAST(? AS TEXT)))"
                }
            });
            params.push(SqlValue::Text(t.into()));
        }
        Ok(out)
    }

    /// The WHERE clause and ORDER BY of this queue, without the lease condition.
    fn queue_sql(&self, dialect: Dialect, params: &mut Vec<SqlValue>) -> ReviewResult<(String, &'static str)> {
        let status = self.status()?;
        let mut conds = Vec::new();
        let order = match status {
            None => {
                conds.push("q.need = 1");
                "ORDER BY q.tier, q.conf, q.nflags DESC, q.item_id"
            }
            Some(s @ (LabelStatus::Pending | LabelStatus::Imported)) => {
                conds.push("q.need = 1");
                conds.push("q.status = ?");
                params.push(SqlValue::Text(s.as_str().into()));
                "ORDER BY q.tier, q.conf, q.nflags DESC, q.item_id"
            }
            // Re-review: oldest decision first, so a decided item moves to the back.
            Some(s) => {
                conds.push("q.need = 0");
                conds.push("q.status = ?");
                params.push(SqlValue::Text(s.as_str().into()));
                "ORDER BY q.status, q.label_id"
            }
        };
        conds.extend(self.conditions(dialect, params)?);
        Ok((conds.join(" AND "), order))
    }
}

/// An item handed to a reviewer until `until_ms`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Lease {
    pub item_id: i64,
    pub user: String,
    pub until_ms: i64,
}

pub use mmloop_core::RiskFlag;

/// A model's answer as a reviewer sees it.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateView {
    pub id: i64,
    pub run_id: Option<i64>,
    pub model: String,
    pub answer: Option<String>,
    pub confidence: Option<f64>,
    pub confidence_detail: Option<Value>,
    pub flags: Vec<RiskFlag>,
    pub error: Option<String>,
    pub created_at: String,
}

/// Everything the review page shows for one item.
#[derive(Clone, Debug, Serialize)]
pub struct ReviewItem {
    pub item: ItemView,
    /// Primary first: the newest candidate without an error.
    pub candidates: Vec<CandidateView>,
    /// The live lease on the item, whoever holds it.
    pub lease: Option<Lease>,
    /// Whether the current label replaced an earlier one (so undo has something to restore).
    pub can_undo: bool,
    /// Set while the item waits, undecided, in an open audit sample: the model's confidence
    /// and risk flags are left out so they cannot sway the decision.
    pub audit: Option<AuditMark>,
}

/// The audit sample an item is part of.
#[derive(Clone, Debug, Serialize)]
pub struct AuditMark {
    pub sample: i64,
    pub kind: crate::routing::SampleKind,
}

/// One line of the item browser.
#[derive(Clone, Debug, Serialize)]
pub struct ItemSummary {
    pub id: i64,
    pub task: String,
    pub question: String,
    pub status: String,
    pub label_id: Option<i64>,
    pub confidence: Option<f64>,
    pub flags: Vec<String>,
    pub model: Option<String>,
}

/// The values the queue filters can take, for the filter bar.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Facets {
    pub statuses: Vec<String>,
    pub tasks: Vec<String>,
    pub splits: Vec<String>,
    pub models: Vec<String>,
    pub flags: Vec<String>,
    pub tags: Vec<String>,
}

/// What a reviewer decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionAction {
    /// Take the candidate's answer (or the current answer when there is no candidate).
    Accept,
    /// Save the answer the reviewer typed.
    Edit,
    /// The candidate's answer is wrong (reviewers only).
    Reject,
    /// Not now: leaves the default queue, keeps the answer.
    Skip,
}

impl DecisionAction {
    const fn as_str(self) -> &'static str {
        match self {
            DecisionAction::Accept => "accept",
            DecisionAction::Edit => "edit",
            DecisionAction::Reject => "reject",
            DecisionAction::Skip => "skip",
        }
    }
}

/// A decision on one item. `base` is the label id the reviewer saw (`None`: no label);
/// if the item moved on since, nothing is saved and the current label comes back.
#[derive(Clone, Debug)]
pub struct Decision {
    pub action: DecisionAction,
    pub base: Option<i64>,
    /// The answer typed (edit).
    pub answer: Option<Answer>,
    /// The candidate accepted or rejected.
    pub candidate_id: Option<i64>,
    /// Time from showing the item to deciding (Label Studio's `lead_time`).
    pub lead_time_ms: Option<i64>,
}

const MAX_ANSWER_CHARS: usize = 20_000;
const MAX_ANSWERS: usize = 100;
const MAX_LEAD_MS: i64 = 24 * 3600 * 1000;

fn check_answer(a: &Answer) -> ReviewResult<()> {
    if a.text.as_deref().is_none_or(|t| t.trim().is_empty()) && a.all.iter().all(|h| h.answer.trim().is_empty()) {
        return Err(ReviewError::BadRequest("the answer is empty\n  hint: type an answer, or skip the item".into()));
    }
    if a.text.as_deref().is_some_and(|t| t.chars().count() > MAX_ANSWER_CHARS)
        || a.all.iter().any(|h| h.answer.chars().count() > MAX_ANSWER_CHARS)
    {
        return Err(ReviewError::BadRequest(format!("an answer is longer than {MAX_ANSWER_CHARS} characters")));
    }
    if a.all.len() > MAX_ANSWERS {
        return Err(ReviewError::BadRequest(format!("more than {MAX_ANSWERS} answers")));
    }
    Ok(())
}

const CANDIDATE_COLS: &str = "id, run_id, model, answer, confidence, confidence_detail, error, created_at, item_id";

fn row_candidate(c: Conn, r: &Row) -> Result<CandidateView, StoreError> {
    let id = r.get(0)?;
    Ok(CandidateView {
        id,
        run_id: r.get(1)?,
        model: r.get(2)?,
        answer: r.get(3)?,
        confidence: r.get(4)?,
        confidence_detail: r.get::<Option<String>>(5)?.and_then(|t| serde_json::from_str(&t).ok()),
        flags: crate::candidates::flags_of(c, id)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn candidates_of(c: Conn, item_id: i64) -> ReviewResult<Vec<CandidateView>> {
    Ok(c.query(
        &format!("SELECT {CANDIDATE_COLS} FROM candidates WHERE item_id = ?1 ORDER BY error IS NULL DESC, id DESC"),
        &[&item_id],
        |r| row_candidate(c, r),
    )?)
}

fn live_lease(c: Conn, item_id: i64, now: i64) -> ReviewResult<Option<(i64, Lease)>> {
    Ok(c.optional(
        "SELECT l.user_id, COALESCE(u.name, '?'), l.until_ms FROM leases l LEFT JOIN users u ON u.id = l.user_id
         WHERE l.item_id = ?1 AND l.until_ms > ?2",
        &[&item_id, &now],
        |r| Ok((r.get(0)?, Lease { item_id, user: r.get(1)?, until_ms: r.get(2)? })),
    )?)
}

/// Refuses when someone else holds a live lease on the item.
fn check_lease(c: Conn, item_id: i64, user: &User, now: i64) -> ReviewResult<()> {
    match live_lease(c, item_id, now)? {
        Some((uid, l)) if uid != user.id => {
            Err(ReviewError::Leased { item: item_id, user: l.user, seconds_left: (l.until_ms - now + 999) / 1000 })
        }
        _ => Ok(()),
    }
}

/// The condition of a lease's write: a new lease, or one over an expired lease or the
/// user's own.
const GRANT_IF_FREE: &str =
    "ON CONFLICT (item_id) DO UPDATE SET user_id = excluded.user_id, until_ms = excluded.until_ms,
                                                granted_ms = excluded.granted_ms
     WHERE leases.until_ms <= excluded.granted_ms OR leases.user_id = excluded.user_id";

/// Leases the item to `user` unless someone else holds a live lease on it; `None` then. The
/// condition is part of the write itself (`ON CONFLICT ... WHERE`), so two picks that raced to the
/// same item on two PostgreSQL servers cannot both win: the second finds the first's lease.
fn grant(tx: Conn, item_id: i64, user: &User, now: i64, lease_ms: i64) -> ReviewResult<Option<Lease>> {
    let until = now + lease_ms;
    let n = tx.execute(
        &format!("INSERT INTO leases (item_id, user_id, until_ms, granted_ms) VALUES (?1, ?2, ?3, ?4) {GRANT_IF_FREE}"),
        &[&item_id, &user.id, &until, &now],
    )?;
    Ok((n > 0).then(|| Lease { item_id, user: user.name.clone(), until_ms: until }))
}

/// [`grant`] where the caller already checked the lease (in the same transaction as the chain's
/// lock, or on SQLite's single writer): losing it would be a bug.
fn grant_checked(tx: Conn, item_id: i64, user: &User, now: i64, lease_ms: i64) -> ReviewResult<Lease> {
    grant(tx, item_id, user, now, lease_ms)?.ok_or_else(|| ReviewError::Leased {
        item: item_id,
        user: "another reviewer".into(),
        seconds_left: lease_ms / 1000,
    })
}

/// The item's current label (see [`current_of`]); `NotFound` when there is no such item.
fn current_label(c: Conn, item_id: i64) -> ReviewResult<Current> {
    current_of(c, item_id).map_err(|e| match e {
        StoreError::ItemNotFound(_) => ReviewError::NotFound(format!("item {item_id}")),
        e => e.into(),
    })
}

fn current_label_id(c: Conn, item_id: i64) -> ReviewResult<Option<i64>> {
    c.optional("SELECT label_id FROM items WHERE id = ?1", &[&item_id], |r| r.get::<Option<i64>>(0))?
        .ok_or(ReviewError::NotFound(format!("item {item_id}")))
}

/// Adds items the queue has not seen yet (ids only grow: imports append); the import calls
/// it in its own transaction, so readers never find an item missing from the queue.
pub(crate) fn sync_queue<'c>(tx: impl Into<Conn<'c>>) -> ReviewResult<u64> {
    let tx = tx.into();
    let seen: i64 = tx.one("SELECT COALESCE(MAX(item_id), 0) FROM review_queue", &[], |r| r.get(0))?;
    let last: i64 = tx.one("SELECT COALESCE(MAX(id), 0) FROM items", &[], |r| r.get(0))?;
    if last <= seen {
        return Ok(0);
    }
    // The new rows are tallied at the end in one pass, not row by row by the triggers.
    tx.execute("INSERT INTO tally_paused (one) VALUES (1)", &[])?;
    let added = tx.execute(
        "INSERT INTO review_queue (item_id, status, label_id)
         SELECT i.id, COALESCE(l.status, 'pending'), i.label_id
         FROM items i LEFT JOIN labels l ON l.id = i.label_id WHERE i.id > ?1",
        &[&seen],
    )?;
    tx.execute(
        "UPDATE review_queue SET (has_cand, conf, nflags, flags, model) =
             (SELECT 1, p.conf, p.nflags, p.flags, p.model FROM primary_candidate p WHERE p.item_id = review_queue.item_id)
         WHERE item_id > ?1 AND item_id IN (SELECT item_id FROM candidates WHERE item_id > ?1)",
        &[&seen],
    )?;
    tx.execute(
        "INSERT INTO queue_tally (status, has_cand, bucket, flags, n)
         SELECT status, COALESCE(has_cand, 0), bucket, COALESCE(flags, ''), COUNT(*) FROM review_queue
         WHERE item_id > ?1 GROUP BY 1, 2, 3, 4
         ON CONFLICT (status, has_cand, bucket, flags) DO UPDATE SET n = queue_tally.n + excluded.n",
        &[&seen],
    )?;
    tx.execute("DELETE FROM tally_paused", &[])?;
    Ok(added)
}

fn need_label(user: &User) -> ReviewResult<()> {
    if user.can(Permission::Label) {
        Ok(())
    } else {
        Err(ReviewError::Forbidden(format!("{} is a {}: viewers cannot label items", user.name, user.role)))
    }
}

impl Store {
    /// Hands `user` the riskiest item under `filter` nobody else holds, leased for
    /// `lease_ms`; the item the user already holds comes back first (a reload, a second
    /// tab). `None` when the queue is empty.
    pub async fn next_item(
        &self,
        user: &User,
        filter: &QueueFilter,
        lease_ms: i64,
    ) -> ReviewResult<Option<ReviewItem>> {
        need_label(user)?;
        let mut params = Vec::new();
        let dialect = self.db().dialect();
        let (cond, order) = filter.queue_sql(dialect, &mut params)?;
        let audit_first = filter.is_default();
        let user2 = user.clone();
        let picked = lease_tx(self, move |tx| {
            let now = now_ms();
            // An open audit sample is served first, in its random order: its point is an
            // unbiased estimate, which a risk-ordered pick would not give.
            if audit_first && let Some(id) = crate::routing::next_audit_item(tx, user2.id, now)? {
                tx.execute("DELETE FROM leases WHERE user_id = ?1 AND item_id != ?2", &[&user2.id, &id])?;
                if let Some(lease) = grant(tx, id, &user2, now, lease_ms)? {
                    return Ok((Some(lease), true));
                }
            }
            let mine_sql = format!(
                "SELECT q.item_id FROM review_queue q JOIN leases l ON l.item_id = q.item_id
                 WHERE l.user_id = ? AND l.until_ms > ? AND {cond} {order} LIMIT 1"
            );
            let mut p = vec![SqlValue::Int(user2.id), SqlValue::Int(now)];
            p.extend(params.iter().cloned());
            let mine: Option<i64> = tx.optional(&mine_sql, &params_of(&p), |r| r.get(0))?;
            if let Some(id) = mine
                && let Some(lease) = grant(tx, id, &user2, now, lease_ms)?
            {
                return Ok((Some(lease), true));
            }
            tx.execute("DELETE FROM leases WHERE user_id = ?1", &[&user2.id])?;
            let free = format!(
                "SELECT q.item_id FROM review_queue q
                 WHERE {cond} AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.item_id = q.item_id AND l.until_ms > ?)
                 {order} LIMIT 1"
            );
            let mut p = params;
            p.push(SqlValue::Int(now));
            if dialect == Dialect::Postgres {
                // Picks run beside each other on every server (they write no audit event, so they
                // do not take the chain's lock), each in one statement: the first free item, and
                // its lease. A row another pick has locked is skipped, not waited for; one that
                // pick has leased and committed meanwhile fails the lease's condition (the item
                // comes back picked but not granted), and this pick tries the next item.
                let pick_sql = format!(
                    "WITH pick AS ({free} FOR UPDATE OF q SKIP LOCKED),
                     granted AS (INSERT INTO leases (item_id, user_id, until_ms, granted_ms)
                                 SELECT item_id, CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT) FROM pick
                                 {GRANT_IF_FREE} RETURNING item_id)
                     SELECT (SELECT item_id FROM pick), (SELECT item_id FROM granted)"
                );
                let until = now + lease_ms;
                p.extend([SqlValue::Int(user2.id), SqlValue::Int(until), SqlValue::Int(now)]);
                for _ in 0..16 {
                    let (picked, granted): (Option<i64>, Option<i64>) =
                        tx.one(&pick_sql, &params_of(&p), |r| Ok((r.get(0)?, r.get(1)?)))?;
                    match (picked, granted) {
                        (None, _) => return Ok((None, true)),
                        (Some(_), Some(item_id)) => {
                            return Ok((Some(Lease { item_id, user: user2.name.clone(), until_ms: until }), true));
                        }
                        (Some(_), None) => {}
                    }
                }
                return Err(ReviewError::Store(StoreError::Internal(
                    "every item picked was taken meanwhile; try again".into(),
                )));
            }
            let pick_sql = free;
            for _ in 0..16 {
                let Some(id) = tx.optional(&pick_sql, &params_of(&p), |r| r.get::<i64>(0))? else {
                    return Ok((None, true));
                };
                if let Some(lease) = grant(tx, id, &user2, now, lease_ms)? {
                    return Ok((Some(lease), true));
                }
            }
            Err(ReviewError::Store(StoreError::Internal("every item picked was taken meanwhile; try again".into())))
        })
        .await?;
        match picked {
            Some(lease) => Ok(Some(self.review_item_leased(lease.item_id, Some(lease)).await?)),
            None => Ok(None),
        }
    }

    /// One item with its candidates and live lease, as the review page shows it.
    pub async fn review_item(&self, id: i64) -> ReviewResult<ReviewItem> {
        self.review_item_leased(id, None).await
    }

    /// [`Store::review_item`] where the caller has just granted the item's lease (a pick): it
    /// is not read back.
    async fn review_item_leased(&self, id: i64, granted: Option<Lease>) -> ReviewResult<ReviewItem> {
        let dot = self.paths().dot.clone();
        self.db()
            .read(move |c| {
                let r = (|| -> ReviewResult<ReviewItem> {
                    let (item, can_undo) = match item_view_undo(c, &dot, id) {
                        Ok(i) => i,
                        Err(StoreError::ItemNotFound(_)) => return Err(ReviewError::NotFound(format!("item {id}"))),
                        Err(e) => return Err(e.into()),
                    };
                    let audit = crate::routing::open_audit_of(c, id)?.map(|(sample, kind)| AuditMark { sample, kind });
                    let mut candidates = candidates_of(c, id)?;
                    if audit.is_some() {
                        for cand in &mut candidates {
                            cand.confidence = None;
                            cand.confidence_detail = None;
                            cand.flags.clear();
                        }
                    }
                    let lease = match granted {
                        Some(lease) => Some(lease),
                        None => live_lease(c, id, now_ms())?.map(|(_, l)| l),
                    };
                    Ok(ReviewItem { candidates, lease, can_undo, audit, item })
                })();
                Ok(r)
            })
            .await?
    }

    /// Takes or renews the lease on one item for `user`.
    pub async fn lease_item(&self, id: i64, user: &User, lease_ms: i64) -> ReviewResult<Lease> {
        need_label(user)?;
        let user = user.clone();
        lease_tx(self, move |tx| {
            current_label_id(tx, id)?;
            let now = now_ms();
            check_lease(tx, id, &user, now)?;
            match grant(tx, id, &user, now, lease_ms)? {
                Some(lease) => Ok((lease, true)),
                // Taken between the check and the write (another server).
                None => check_lease(tx, id, &user, now_ms())
                    .and_then(|()| grant_checked(tx, id, &user, now, lease_ms))
                    .map(|l| (l, true)),
            }
        })
        .await
    }

    /// Gives back `user`'s lease on one item (nothing happens when they hold none).
    pub async fn release_item(&self, id: i64, user: &User) -> ReviewResult<()> {
        let uid = user.id;
        lease_tx(self, move |tx| {
            current_label_id(tx, id)?;
            tx.execute("DELETE FROM leases WHERE item_id = ?1 AND user_id = ?2", &[&id, &uid])?;
            Ok(((), true))
        })
        .await
    }

    /// Saves a reviewer's decision as a new label (with its audit event) and releases the
    /// item's lease, in one transaction. A stale `base` gives `Conflict` with the current
    /// label; someone else's live lease gives `Leased`.
    pub async fn decide(&self, id: i64, user: &User, d: Decision) -> ReviewResult<SaveOutcome> {
        need_label(user)?;
        if d.action == DecisionAction::Reject && !user.can(Permission::Review) {
            return Err(ReviewError::Forbidden(format!(
                "{} is an {}: only reviewers and admins reject\n  hint: skip the item instead",
                user.name, user.role
            )));
        }
        if let Some(a) = &d.answer {
            check_answer(a)?;
        }
        if d.action == DecisionAction::Edit && d.answer.is_none() {
            return Err(ReviewError::BadRequest("an edit needs an answer".into()));
        }
        let user = user.clone();
        let out = write_tx(self, move |tx| {
            let found = current_label(tx, id)?;
            if found.id != d.base {
                return Ok((SaveOutcome::Conflict { current: found.label }, false));
            }
            let now = now_ms();
            check_lease(tx, id, &user, now)?;
            if let Some(cur) = &found.label
                && cur.status.is_reviewed()
                && cur.actor != user.name
                && !user.can(Permission::Review)
            {
                return Err(ReviewError::Forbidden(format!(
                    "{} already decided on item {id}; only a reviewer can change that",
                    cur.actor
                )));
            }
            // The candidate's answer and error: all a decision takes from it.
            let candidate = match d.candidate_id {
                Some(cid) => Some(
                    tx.optional(
                        "SELECT answer, error FROM candidates WHERE id = ?1 AND item_id = ?2",
                        &[&cid, &id],
                        |r| Ok((cid, r.get::<Option<String>>(0)?, r.get::<Option<String>>(1)?)),
                    )?
                    .ok_or_else(|| {
                        ReviewError::BadRequest(format!("candidate {cid} is not a candidate of item {id}"))
                    })?,
                ),
                None => None,
            };
            let current_answer = found.label.as_ref().map(|l| l.answer.clone()).unwrap_or_default();
            let (status, answer) = match d.action {
                DecisionAction::Accept => match &candidate {
                    Some((cid, answer, error)) => match (answer, error) {
                        (Some(text), None) => {
                            (LabelStatus::Accepted, Answer { text: Some(text.clone()), all: current_answer.all })
                        }
                        _ => {
                            return Err(ReviewError::BadRequest(format!(
                                "candidate {cid} has no answer to accept\n  hint: edit to type one"
                            )));
                        }
                    },
                    None if !current_answer.is_empty() => (LabelStatus::Accepted, current_answer),
                    None => {
                        return Err(ReviewError::BadRequest(
                            "nothing to accept: the item has no answer and no candidate\n  hint: edit to type one"
                                .into(),
                        ));
                    }
                },
                DecisionAction::Edit => (LabelStatus::Edited, d.answer.clone().unwrap_or_default()),
                DecisionAction::Reject => match &candidate {
                    Some((_, answer, _)) => {
                        (LabelStatus::Rejected, Answer { text: answer.clone(), all: current_answer.all })
                    }
                    None => (LabelStatus::Rejected, current_answer),
                },
                DecisionAction::Skip => (LabelStatus::Skipped, current_answer),
            };
            let save = LabelSave {
                status,
                answer,
                base: found.id,
                actor: user.name.clone(),
                action: d.action.as_str().into(),
                lead_time_ms: d.lead_time_ms.map(|t| t.clamp(0, MAX_LEAD_MS)),
            };
            let out = save_on(tx, id, found, save)?;
            let saved = matches!(out, SaveOutcome::Saved { .. });
            if saved {
                tx.execute("DELETE FROM leases WHERE item_id = ?1", &[&id])?;
            }
            Ok((out, saved))
        })
        .await?;
        if matches!(out, SaveOutcome::Saved { .. }) {
            self.sync_audit_head().await?;
        }
        Ok(out)
    }

    /// Restores the label the current one replaced, as a new label (action `undo`); the
    /// item goes back to `user` under a lease when it needs review again. Annotators undo
    /// only their own decisions.
    pub async fn undo(&self, id: i64, user: &User, base: Option<i64>, lease_ms: i64) -> ReviewResult<SaveOutcome> {
        need_label(user)?;
        let user = user.clone();
        let out = write_tx(self, move |tx| {
            let found = current_label(tx, id)?;
            if found.id != base {
                return Ok((SaveOutcome::Conflict { current: found.label }, false));
            }
            let Some(cur) = found.label.clone() else {
                return Err(ReviewError::BadRequest(format!("nothing to undo: item {id} has no label")));
            };
            if cur.actor != user.name && !user.can(Permission::Review) {
                return Err(ReviewError::Forbidden(format!(
                    "{} made this label; annotators undo only their own decisions",
                    cur.actor
                )));
            }
            let prev: Option<i64> = tx.one("SELECT prev_id FROM labels WHERE id = ?1", &[&cur.id], |r| r.get(0))?;
            let Some(prev) = prev.and_then(|p| label_by_id(tx, p).transpose()).transpose()? else {
                return Err(ReviewError::BadRequest(format!("nothing to undo: item {id} has had only this label")));
            };
            let now = now_ms();
            check_lease(tx, id, &user, now)?;
            let status = prev.status;
            let save = LabelSave {
                status,
                answer: prev.answer,
                base: Some(cur.id),
                actor: user.name.clone(),
                action: "undo".into(),
                lead_time_ms: None,
            };
            let out = save_on(tx, id, found, save)?;
            if matches!(status, LabelStatus::Pending | LabelStatus::Imported) {
                grant_checked(tx, id, &user, now, lease_ms)?;
            } else {
                tx.execute("DELETE FROM leases WHERE item_id = ?1", &[&id])?;
            }
            Ok((out, true))
        })
        .await?;
        self.sync_audit_head().await?;
        Ok(out)
    }

    /// Items in id order after `after`, for browsing (any status unless filtered).
    pub async fn list_items(&self, filter: &QueueFilter, after: i64, limit: usize) -> ReviewResult<Vec<ItemSummary>> {
        let mut params = vec![SqlValue::Int(after)];
        let mut conds = vec!["q.item_id > ?"];
        if let Some(s) = filter.status()? {
            conds.push("q.status = ?");
            params.push(SqlValue::Text(s.as_str().into()));
        }
        conds.extend(filter.conditions(self.db().dialect(), &mut params)?);
        params.push(SqlValue::Int(limit.clamp(1, 500) as i64));
        let sql = format!(
            "SELECT q.item_id, i.task, substr(i.question, 1, 300), q.status, q.label_id, q.conf, q.flags, q.model
             FROM review_queue q JOIN items i ON i.id = q.item_id
             WHERE {} ORDER BY q.item_id LIMIT ?",
            conds.join(" AND ")
        );
        Ok(self
            .db()
            .read(move |c| {
                c.query(&sql, &params_of(&params), |r| {
                    Ok(ItemSummary {
                        id: r.get(0)?,
                        task: r.get(1)?,
                        question: r.get(2)?,
                        status: r.get(3)?,
                        label_id: r.get(4)?,
                        confidence: r.get(5)?,
                        flags: split_flags(r.get::<Option<String>>(6)?.as_deref()),
                        model: r.get(7)?,
                    })
                })
            })
            .await?)
    }

    /// The values the queue filters can take.
    pub async fn review_facets(&self) -> ReviewResult<Facets> {
        Ok(self
            .db()
            .read(|c| {
                let strings = |sql: &str| -> Result<Vec<String>, StoreError> { c.query(sql, &[], |r| r.get(0)) };
                let mut flags: Vec<String> = strings(
                    "SELECT DISTINCT flags FROM review_queue WHERE flags IS NOT NULL AND flags != ',,' LIMIT 1000",
                )?
                .iter()
                .flat_map(|f| split_flags(Some(f)))
                .collect();
                flags.sort();
                flags.dedup();
                let mut tags = strings(match c.dialect() {
                    Dialect::Sqlite => {
                        "SELECT DISTINCT t.value FROM items i, json_each(i.tags) t
                         WHERE i.tags IS NOT NULL AND t.type = 'text' LIMIT 200"
                    }
                    Dialect::Postgres => {
                        "SELECT DISTINCT t #>> '{}' FROM items i, jsonb_array_elements(CAST(i.tags AS jsonb)) t
                         WHERE i.tags IS NOT NULL AND jsonb_typeof(t) = 'string' LIMIT 200"
                    }
                })?;
                tags.sort();
                Ok(Facets {
                    statuses: LabelStatus::ALL.iter().map(|s| s.as_str().to_string()).collect(),
                    tasks: vec![Task::Vqa.as_str().into(), Task::Caption.as_str().into()],
                    splits: strings("SELECT DISTINCT split FROM items WHERE split IS NOT NULL ORDER BY 1 LIMIT 100")?,
                    models: strings("SELECT DISTINCT model FROM candidates ORDER BY 1 LIMIT 100")?,
                    flags,
                    tags,
                })
            })
            .await?)
    }

    /// Every label an item has had, newest first, as `LabelView`s (re-exported for the
    /// item history; the audit events come from `audit_log`).
    pub async fn item_labels(&self, id: i64) -> ReviewResult<Vec<LabelView>> {
        self.db().read(move |c| Ok(current_label_id(c, id))).await??;
        Ok(self.label_history(id).await?)
    }
}

/// Gathered parameters as a statement takes them.
fn params_of(values: &[SqlValue]) -> Vec<&dyn Param> {
    values.iter().map(|v| v as &dyn Param).collect()
}

pub(crate) fn split_flags(f: Option<&str>) -> Vec<String> {
    f.unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_refuse_nonsense() {
        let bad = QueueFilter { status: Some("done".into()), ..Default::default() };
        assert!(matches!(bad.queue_sql(Dialect::Sqlite, &mut Vec::new()), Err(ReviewError::BadRequest(_))));
        let bad = QueueFilter { min_conf: Some(0.9), max_conf: Some(0.1), ..Default::default() };
        assert!(matches!(bad.queue_sql(Dialect::Sqlite, &mut Vec::new()), Err(ReviewError::BadRequest(_))));
        let bad = QueueFilter { task: Some("detect".into()), ..Default::default() };
        assert!(matches!(bad.queue_sql(Dialect::Sqlite, &mut Vec::new()), Err(ReviewError::BadRequest(_))));
        let empty = QueueFilter { status: Some(" ".into()), split: Some(String::new()), ..Default::default() };
        let mut p = Vec::new();
        let (cond, _) = empty.queue_sql(Dialect::Sqlite, &mut p).unwrap();
        assert_eq!(cond, "q.need = 1");
        assert!(p.is_empty());
    }
}
