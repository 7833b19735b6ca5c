//! The tamper-evident audit log: every mutation appends an event in the same transaction
//! as the change, and each event's hash covers the previous one
//! (`hash = sha256(domain ‖ seq ‖ prev_hash ‖ at ‖ actor ‖ action ‖ entity ‖ before ‖ after)`).
//! Editing, deleting or reordering any row breaks the chain; deleting the newest rows is
//! caught by the head anchor kept outside the database (`.mmloop/audit-head`) and by the
//! chain positions recorded in versions.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use mmloop_core::{Digest, canonical_json};

use crate::sql::{Conn, Dialect, Row};
use crate::{Store, StoreError};

/// One audit event as stored.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub entity: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub hash: String,
}

/// What `audit verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    pub events: u64,
    pub head: Option<(i64, String)>,
    pub problems: Vec<AuditProblem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A break in the chain, with the event it was found at.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditProblem {
    /// The event's content does not match its hash: it was edited.
    Edited { seq: i64 },
    /// Events are missing before this one.
    Missing { after_seq: i64, next_seq: i64 },
    /// The event does not follow the one before it: rows were reordered or replaced.
    Broken { seq: i64 },
    /// The newest events recorded outside the database are gone.
    Truncated { anchored_seq: i64, last_seq: i64 },
    /// The anchor (or a version) names an event whose hash differs.
    AnchorMismatch { seq: i64, source: String },
    /// The log has events but the head anchor outside the database is gone.
    AnchorMissing { last_seq: i64 },
    /// An item's stored fields no longer match the digest recorded at import.
    ItemChanged { item: i64 },
    /// A label's status or answer no longer matches the digest recorded when it was saved.
    LabelChanged { label: i64, item: i64 },
    /// A committed version's content no longer matches its id.
    VersionChanged { version: i64, why: String },
    /// More problems of one kind than are listed.
    More { what: String, count: u64 },
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditProblem::Edited { seq } => {
                write!(f, "event {seq} was edited (its hash no longer matches its content)")
            }
            AuditProblem::Missing { after_seq, next_seq } => {
                write!(f, "events {}..{} are missing (deleted)", after_seq + 1, next_seq - 1)
            }
            AuditProblem::Broken { seq } => {
                write!(f, "event {seq} does not follow the event before it (rows reordered or replaced)")
            }
            AuditProblem::Truncated { anchored_seq, last_seq } => write!(
                f,
                "the log ends at event {last_seq} but event {anchored_seq} was recorded: the newest events were deleted"
            ),
            AuditProblem::AnchorMismatch { seq, source } => {
                write!(f, "event {seq} differs from the hash recorded in {source}")
            }
            AuditProblem::AnchorMissing { last_seq } => write!(
                f,
                "the head anchor .mmloop/audit-head is missing (the log ends at event {last_seq}): deleting the newest events would go unnoticed"
            ),
            AuditProblem::ItemChanged { item } => {
                write!(f, "item {item} was edited in the database (its content no longer matches its digest)")
            }
            AuditProblem::LabelChanged { label, item } => write!(
                f,
                "label {label} of item {item} was edited in the database (its answer or status no longer matches its digest)"
            ),
            AuditProblem::VersionChanged { version, why } => write!(f, "version v{version} changed: {why}"),
            AuditProblem::More { what, count } => write!(f, "{count} more {what}"),
        }
    }
}

/// The hashed fields of one event, as stored.
struct EventFields<'a> {
    seq: i64,
    prev: &'a [u8],
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    entity: &'a str,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

fn event_hash(e: &EventFields) -> [u8; 32] {
    let EventFields { seq, prev, at, actor, action, entity, before, after } = *e;
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"mmloop/event/v1");
    field(&seq.to_le_bytes());
    field(prev);
    field(at.as_bytes());
    field(actor.as_bytes());
    field(action.as_bytes());
    field(entity.as_bytes());
    for v in [before, after] {
        match v {
            None => field(b"\x00"),
            Some(s) => {
                field(b"\x01");
                field(s.as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// Appends an event inside the caller's transaction; returns its sequence number.
///
/// The chain stays single with many writers: on SQLite the caller holds the database's one
/// write lock; on PostgreSQL every writing transaction holds the write lock (see `pg.rs`), so
/// no two transactions read the same head. The database's own head anchor (PostgreSQL's
/// `audit_head`, which only moves forward) follows in the same transaction.
pub(crate) fn append<'c>(
    conn: impl Into<Conn<'c>>,
    actor: &str,
    action: &str,
    entity: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<i64, StoreError> {
    let conn = conn.into();
    let current = match crate::pg::group_head() {
        Some(known) => known,
        None => head(conn)?,
    };
    let (seq, prev) = match current {
        Some((s, h)) => (s + 1, h),
        None => (1, vec![0u8; 32]),
    };
    let at = crate::now();
    let before = before.map(canonical_json);
    let after = after.map(canonical_json);
    let hash = event_hash(&EventFields {
        seq,
        prev: &prev,
        at: &at,
        actor,
        action,
        entity,
        before: before.as_deref(),
        after: after.as_deref(),
    });
    let hash = hash.to_vec();
    conn.execute(
        "INSERT INTO events (seq, at, actor, action, entity, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        &[&seq, &at, &actor, &action, &entity, &before, &after, &prev, &hash],
    )?;
    if conn.dialect() == Dialect::Postgres && !crate::pg::group_appended(seq, &hash) {
        conn.execute(
            "INSERT INTO audit_head (one, seq, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            &[&seq, &hash],
        )?;
    }
    Ok(seq)
}

/// The newest event: its sequence number and hash.
pub(crate) fn head<'c>(conn: impl Into<Conn<'c>>) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    conn.into().optional("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", &[], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn row_event(r: &Row) -> Result<AuditEvent, StoreError> {
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(AuditEvent {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        entity: r.get(4)?,
        before: parse(r.get(5)?),
        after: parse(r.get(6)?),
        hash: hex::encode(r.get::<Vec<u8>>(7)?),
    })
}

impl Store {
    /// Rewrites the head anchor outside the database after a mutation. Concurrent callers
    /// share one rewrite: when this returns, the anchor names an event at least as new as
    /// any committed before the call. The file is written off the async threads.
    pub(crate) async fn sync_audit_head(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let anchor = &self.inner.anchor;
        let ticket = anchor.requested.fetch_add(1, SeqCst) + 1;
        let _turn = anchor.lock.lock().await;
        if anchor.done.load(SeqCst) >= ticket {
            return Ok(());
        }
        let upto = anchor.requested.load(SeqCst);
        let path = self.paths().audit_head.clone();
        let head = self.db().read(|c| head(c)).await?;
        if let Some((seq, hash)) = head {
            let text = format!("{seq} {}\n", hex::encode(hash));
            tokio::task::spawn_blocking(move || crate::fs::write_atomic(&path, text.as_bytes()))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
        }
        anchor.done.store(upto, SeqCst);
        Ok(())
    }

    /// Events, newest first, optionally only those about one entity (e.g. `item:42`).
    pub async fn audit_log(&self, entity: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.db()
            .read(move |c| {
                let limit = limit as i64;
                match entity {
                    Some(entity) => c.query(
                        "SELECT seq, at, actor, action, entity, before, after, hash FROM events
                         WHERE entity = ?1 ORDER BY seq DESC LIMIT ?2",
                        &[&entity, &limit],
                        row_event,
                    ),
                    None => c.query(
                        "SELECT seq, at, actor, action, entity, before, after, hash FROM events
                         ORDER BY seq DESC LIMIT ?1",
                        &[&limit],
                        row_event,
                    ),
                }
            })
            .await
    }

    /// Recomputes the whole chain and checks it against the anchors, then recomputes
    /// every item, label and version digest (see `versions::verify_content`).
    pub async fn audit_verify(&self) -> Result<AuditReport, StoreError> {
        let anchor = self.file_anchor()?;
        self.db().read(move |c| verify_chain(c, anchor)).await
    }

    /// The head anchor in `.mmloop/audit-head`: `None` when the file is missing.
    pub(crate) fn file_anchor(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let path = &self.paths().audit_head;
        let text = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::IoPath { path: path.clone(), source: e }),
        };
        let parsed = text
            .trim()
            .split_once(' ')
            .and_then(|(seq, hash)| Some((seq.parse::<i64>().ok()?, hex::decode(hash).ok()?)));
        match parsed {
            Some(a) => Ok(Some(a)),
            None => Err(StoreError::Config(format!(
                "{} is not an audit anchor (expected `<seq> <hex hash>`)",
                path.display()
            ))),
        }
    }
}

/// Recomputes the chain in `c` and checks it against `anchor` (the folder's file, when
/// present), the database's own anchor and the versions' positions, then every item, label
/// and version digest.
pub(crate) fn verify_chain(c: Conn, anchor: Option<(i64, Vec<u8>)>) -> Result<AuditReport, StoreError> {
    let anchor_present = anchor.is_some();
    let mut report = AuditReport::default();
    let mut prev_seq = 0i64;
    let mut prev_hash = vec![0u8; 32];
    let mut hashes = std::collections::HashMap::new();
    let sql = "SELECT seq, at, actor, action, entity, before, after, prev_hash, hash FROM events ORDER BY seq";
    c.each(sql, &[], |r| {
        let seq: i64 = r.get(0)?;
        let (at, actor, action, entity): (String, String, String, String) =
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let (before, after): (Option<String>, Option<String>) = (r.get(5)?, r.get(6)?);
        let stored_prev: Vec<u8> = r.get(7)?;
        let hash: Vec<u8> = r.get(8)?;
        report.events += 1;
        if seq != prev_seq + 1 {
            report.problems.push(AuditProblem::Missing { after_seq: prev_seq, next_seq: seq });
        }
        let expect = event_hash(&EventFields {
            seq,
            prev: &stored_prev,
            at: &at,
            actor: &actor,
            action: &action,
            entity: &entity,
            before: before.as_deref(),
            after: after.as_deref(),
        });
        if expect.as_slice() != hash.as_slice() {
            report.problems.push(AuditProblem::Edited { seq });
        } else if stored_prev != prev_hash && seq == prev_seq + 1 {
            report.problems.push(AuditProblem::Broken { seq });
        }
        hashes.insert(seq, hash.clone());
        prev_seq = seq;
        prev_hash = hash;
        Ok(())
    })?;
    report.head = (prev_seq > 0).then(|| (prev_seq, hex::encode(&prev_hash)));
    let mut anchors: Vec<(i64, Vec<u8>, String)> = Vec::new();
    if let Some((seq, hash)) = anchor {
        anchors.push((seq, hash, ".mmloop/audit-head".into()));
    }
    // On PostgreSQL the database keeps an anchor of its own (the folder's file only
    // knows the writes of the servers that share the folder).
    let kept = match c.dialect() {
        Dialect::Postgres => c.optional("SELECT seq, hash FROM audit_head", &[], |r| Ok((r.get(0)?, r.get(1)?)))?,
        Dialect::Sqlite => None,
    };
    let anchored_in_db = kept.is_some();
    if let Some((seq, hash)) = kept {
        anchors.push((seq, hash, "the database's audit_head table".into()));
    }
    c.each("SELECT seq, audit_seq, audit_hash FROM versions ORDER BY seq", &[], |r| {
        let vseq: i64 = r.get(0)?;
        anchors.push((r.get(1)?, r.get(2)?, format!("version v{vseq}")));
        Ok(())
    })?;
    if !anchor_present && !anchored_in_db && prev_seq > 0 {
        report.problems.push(AuditProblem::AnchorMissing { last_seq: prev_seq });
    }
    for (seq, hash, source) in anchors {
        match hashes.get(&seq) {
            Some(h) if *h == hash => {}
            Some(_) => report.problems.push(AuditProblem::AnchorMismatch { seq, source }),
            None if seq > prev_seq && !report.problems.iter().any(|p| matches!(p, AuditProblem::Truncated { .. })) => {
                report.problems.push(AuditProblem::Truncated { anchored_seq: seq, last_seq: prev_seq });
            }
            None => {} // reported already (missing, or truncated)
        }
    }
    report.problems.extend(crate::versions::verify_content(c)?);
    Ok(report)
}

/// Coalesces rewrites of the head anchor (see `Store::sync_audit_head`).
#[derive(Default)]
pub(crate) struct AnchorSync {
    lock: tokio::sync::Mutex<()>,
    /// Rewrites asked for so far, and the number covered by the last finished one.
    requested: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

/// The digest of the newest event, for versions to record.
pub(crate) fn head_digest<'c>(conn: impl Into<Conn<'c>>) -> Result<(i64, Digest), StoreError> {
    let (seq, hash) = head(conn)?.unwrap_or((0, vec![0u8; 32]));
    Ok((seq, Digest::from_slice(&hash).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use crate::test_support::project;

    /// Every write leaves one event, the events form one chain that verifies, and the head
    /// anchored outside the database is the chain's last event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_chained_and_the_head_is_anchored() {
        let (_dir, store) = project(2).await;
        let before = store.audit_verify().await.unwrap();
        assert!(before.ok(), "{:?}", before.problems);
        let run = store.start_run("infer", "ann", serde_json::json!({})).await.unwrap();
        let after = store.audit_verify().await.unwrap();
        assert!(after.ok(), "{:?}", after.problems);
        assert_eq!(after.events, before.events + 1);
        let events = store.audit_log(None, 100).await.unwrap();
        assert_eq!(events.len() as u64, after.events);
        let newest = &events[0];
        assert_eq!((newest.actor.as_str(), newest.entity.clone()), ("ann", format!("run:{run}")));
        assert!(events.windows(2).all(|w| w[0].seq == w[1].seq + 1), "one chain, newest first");
        let head = std::fs::read_to_string(&store.paths().audit_head).unwrap();
        assert_eq!(head.trim(), format!("{} {}", newest.seq, newest.hash));
        assert_eq!(after.head.map(|(seq, _)| seq), Some(newest.seq));
        store.close();
    }
}
