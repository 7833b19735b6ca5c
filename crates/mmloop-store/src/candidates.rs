//! Model candidates and the runs that make them. A pre-annotation run asks which items
//! still need a candidate for its params hash (model + prompt + generation settings), so a
//! rerun resumes where the last one stopped; it stores candidates a batch at a time, each
//! batch in one transaction with its audit event, so a killed run loses at most the batch
//! in flight. A candidate that failed (unreadable image, refused request) is stored with its
//! error and is not retried unless asked.

use mmloop_core::{Candidate, Digest, Finish, RiskFlag, RunStatus, Task, canonical_json};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::labels::{ItemView, item_view};
use crate::sql::{Conn, Row};
use crate::{Store, StoreError};

/// Which items a run answers.
#[derive(Clone, Debug, Default)]
pub struct PendingFilter {
    /// Also items someone has decided on (accepted, edited, rejected, skipped); by default
    /// only items nobody has decided on: no label, pending or imported.
    pub all: bool,
    pub split: Option<String>,
    pub task: Option<Task>,
    /// Answer again items whose candidate for this params hash failed.
    pub retry_errors: bool,
}

/// A candidate to store: a model's answer to one item, or why it has none.
#[derive(Clone, Debug, Serialize)]
pub struct NewCandidate {
    pub item_id: i64,
    /// The answer, or the error that stopped it (unreadable image, refused request).
    pub outcome: Result<Candidate, String>,
    /// How the generation ended; kept beside the confidence's numbers.
    pub finish: Option<Finish>,
    /// JSON: OpenAI's `{"content": [...]}`.
    pub logprobs: Option<Value>,
}

impl NewCandidate {
    pub fn answered(item_id: i64, candidate: Candidate) -> Self {
        NewCandidate { item_id, outcome: Ok(candidate), finish: None, logprobs: None }
    }

    pub fn failed(item_id: i64, error: impl Into<String>) -> Self {
        NewCandidate { item_id, outcome: Err(error.into()), finish: None, logprobs: None }
    }

    /// `confidence_detail` as stored: the confidence's numbers with the finish beside them.
    fn detail_json(&self) -> Option<String> {
        let detail = self.outcome.as_ref().ok()?.detail.as_ref()?;
        let mut v = serde_json::to_value(detail).expect("detail serializes");
        if let (Some(f), Value::Object(o)) = (&self.finish, &mut v) {
            o.insert("finish_reason".into(), f.finish_reason.clone().into());
            o.insert("completion_tokens".into(), f.completion_tokens.into());
            o.insert("prompt_tokens".into(), f.prompt_tokens.into());
        }
        Some(canonical_json(&v))
    }
}

/// A stored candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCandidate {
    pub id: i64,
    pub item_id: i64,
    pub run_id: Option<i64>,
    pub model: String,
    pub outcome: Result<Candidate, String>,
    pub finish: Option<Finish>,
    pub logprobs: Option<Value>,
    pub created_at: String,
}

/// A run as recorded.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunView {
    pub id: i64,
    pub kind: String,
    pub actor: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RunStatus,
    pub config: Value,
    pub summary: Option<Value>,
    pub version: Option<String>,
}

const PENDING_SQL: &str = "
    SELECT i.id FROM items i
    WHERE i.id > ?1
      AND NOT EXISTS (SELECT 1 FROM candidates c
                      WHERE c.item_id = i.id AND c.params_hash = ?2 AND (?3 = 0 OR c.error IS NULL))
      AND (?4 = 1 OR i.label_id IS NULL
           OR (SELECT l.status FROM labels l WHERE l.id = i.label_id) IN ('pending', 'imported'))
      AND (?5 IS NULL OR i.split = ?5)
      AND (?6 IS NULL OR i.task = ?6)
    ORDER BY i.id LIMIT ?7";

fn json_text(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(canonical_json)
}

fn parse_json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

/// A candidate's risk flags, in the order the rules raised them.
pub(crate) fn flags_of<'c>(c: impl Into<Conn<'c>>, candidate_id: i64) -> Result<Vec<RiskFlag>, StoreError> {
    c.into().query(
        "SELECT flag, why, span_start, span_end FROM candidate_flags WHERE candidate_id = ?1 ORDER BY pos",
        &[&candidate_id],
        |r| {
            let span = match (r.get::<Option<i64>>(2)?, r.get::<Option<i64>>(3)?) {
                (Some(a), Some(b)) => Some([a as usize, b as usize]),
                _ => None,
            };
            Ok(RiskFlag { flag: r.get(0)?, why: r.get(1)?, span })
        },
    )
}

/// SQL: the names of candidate `c`'s flags joined by [`FLAG_SEP`], NULL without flags.
pub(crate) fn flag_names_sql(d: crate::sql::Dialect) -> &'static str {
    match d {
        crate::sql::Dialect::Sqlite => {
            "(SELECT group_concat(f.flag, char(31) ORDER BY f.pos) FROM candidate_flags f WHERE f.candidate_id = c.id)"
        }
        crate::sql::Dialect::Postgres => {
            "(SELECT string_agg(f.flag, chr(31) ORDER BY f.pos) FROM candidate_flags f WHERE f.candidate_id = c.id)"
        }
    }
}
const FLAG_SEP: char = '\u{1f}';

/// The flag names of a [`FLAG_NAMES`] column.
pub(crate) fn flag_names(joined: Option<String>) -> Vec<String> {
    joined.map(|j| j.split(FLAG_SEP).map(String::from).collect()).unwrap_or_default()
}

const CANDIDATE_COLS: &str =
    "id, item_id, run_id, model, answer, confidence, confidence_detail, logprobs, error, created_at";

fn row_candidate(c: Conn, r: &Row) -> Result<StoredCandidate, StoreError> {
    let id: i64 = r.get(0)?;
    let detail: Option<Value> = parse_json(r.get(6)?);
    let outcome = match r.get::<Option<String>>(8)? {
        Some(error) => Err(error),
        None => Ok(Candidate {
            answer: r.get::<Option<String>>(4)?.unwrap_or_default(),
            confidence: r.get(5)?,
            detail: detail.clone().and_then(|d| serde_json::from_value(d).ok()),
            flags: flags_of(c, id)?,
        }),
    };
    Ok(StoredCandidate {
        id,
        item_id: r.get(1)?,
        run_id: r.get(2)?,
        model: r.get(3)?,
        outcome,
        finish: detail.and_then(|d| serde_json::from_value(d).ok()),
        logprobs: parse_json(r.get(7)?),
        created_at: r.get(9)?,
    })
}

const RUN_COLUMNS: &str = "id, kind, actor, started_at, finished_at, status, config, summary, version";

fn run_view(r: &Row) -> Result<RunView, StoreError> {
    Ok(RunView {
        id: r.get(0)?,
        kind: r.get(1)?,
        actor: r.get(2)?,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
        status: r
            .get::<String>(5)?
            .parse()
            .map_err(|e: mmloop_core::ParseEnumError| StoreError::Internal(format!("runs.status: {e}")))?,
        config: parse_json(r.get(6)?).unwrap_or(Value::Null),
        summary: parse_json(r.get(7)?),
        version: r.get(8)?,
    })
}

impl Store {
    /// Records the start of a run (`infer`, `train`, `eval`) with its full configuration.
    /// Secrets in it (API keys, URL credentials) are removed first: the configuration goes
    /// into the audit chain, which every reviewer reads and nobody can edit afterwards.
    pub async fn start_run(&self, kind: &str, actor: &str, config: Value) -> Result<i64, StoreError> {
        self.start_run_on(kind, actor, config, None).await
    }

    /// [`Store::start_run`] for a run that reads a committed version (its id, hex).
    pub async fn start_run_on(
        &self,
        kind: &str,
        actor: &str,
        config: Value,
        version: Option<String>,
    ) -> Result<i64, StoreError> {
        let (kind, actor) = (kind.to_string(), actor.to_string());
        let config = mmloop_core::redact::value(&config);
        let id = self
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let id: i64 = conn.one(
                    "INSERT INTO runs (kind, actor, started_at, status, config, version)
                     VALUES (?1, ?2, ?3, 'running', ?4, ?5) RETURNING id",
                    &[&kind, &actor, &crate::now(), &canonical_json(&config), &version],
                    |r| r.get(0),
                )?;
                let after = match &version {
                    Some(v) => json!({"run": id, "kind": kind, "config": config, "version": v}),
                    None => json!({"run": id, "kind": kind, "config": config}),
                };
                crate::audit::append(conn, &actor, &format!("{kind}.start"), &format!("run:{id}"), None, Some(&after))?;
                tx.commit()?;
                Ok(id)
            })
            .await?;
        self.sync_audit_head().await?;
        Ok(id)
    }

    /// Records how a run ended (`done`, `failed`, `interrupted`) and what it did.
    pub async fn finish_run(
        &self,
        run_id: i64,
        actor: &str,
        status: RunStatus,
        summary: Value,
    ) -> Result<(), StoreError> {
        let actor = actor.to_string();
        let summary = mmloop_core::redact::value(&summary);
        self.db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let kind: Option<String> =
                    conn.optional("SELECT kind FROM runs WHERE id = ?1", &[&run_id], |r| r.get(0))?;
                let kind = kind.ok_or_else(|| StoreError::Internal(format!("run {run_id} not found")))?;
                conn.execute(
                    "UPDATE runs SET status = ?1, finished_at = ?2, summary = ?3 WHERE id = ?4",
                    &[&status.as_str(), &crate::now(), &canonical_json(&summary), &run_id],
                )?;
                let after = json!({"run": run_id, "status": status, "summary": summary});
                crate::audit::append(
                    conn,
                    &actor,
                    &format!("{kind}.finish"),
                    &format!("run:{run_id}"),
                    None,
                    Some(&after),
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.sync_audit_head().await
    }

    /// A run by id.
    pub async fn run(&self, run_id: i64) -> Result<Option<RunView>, StoreError> {
        self.db()
            .read(move |c| c.optional(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), &[&run_id], run_view))
            .await
    }

    /// Every run, newest first; only those of `kind` when given.
    pub async fn runs(&self, kind: Option<&str>) -> Result<Vec<RunView>, StoreError> {
        let kind = kind.map(String::from);
        self.db()
            .read(move |c| {
                c.query(
                    &format!("SELECT {RUN_COLUMNS} FROM runs WHERE ?1 IS NULL OR kind = ?1 ORDER BY id DESC"),
                    &[&kind],
                    run_view,
                )
            })
            .await
    }

    /// How many items still need a candidate for `params_hash`.
    pub async fn count_pending_candidates(
        &self,
        params_hash: Digest,
        filter: &PendingFilter,
    ) -> Result<u64, StoreError> {
        let f = filter.clone();
        self.db()
            .read(move |c| {
                let sql =
                    format!("SELECT COUNT(*) FROM ({}) AS pending", PENDING_SQL.replace("ORDER BY i.id LIMIT ?7", ""));
                let n: i64 = c.one(
                    &sql,
                    &[
                        &0i64,
                        &params_hash.0.to_vec(),
                        &f.retry_errors,
                        &f.all,
                        &f.split,
                        &f.task.map(|t| t.to_string()),
                    ],
                    |r| r.get(0),
                )?;
                Ok(n as u64)
            })
            .await
    }

    /// Up to `limit` items after `after_id` (in id order) that still need a candidate for
    /// `params_hash`, with their images.
    pub async fn pending_candidates(
        &self,
        params_hash: Digest,
        filter: &PendingFilter,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<ItemView>, StoreError> {
        let f = filter.clone();
        let dot = self.paths().dot.clone();
        self.db()
            .read(move |c| {
                let ids: Vec<i64> = c.query(
                    PENDING_SQL,
                    &[
                        &after_id,
                        &params_hash.0.to_vec(),
                        &f.retry_errors,
                        &f.all,
                        &f.split,
                        &f.task.map(|t| t.to_string()),
                        &(limit as i64),
                    ],
                    |r| r.get(0),
                )?;
                ids.into_iter().map(|id| item_view(c, &dot, id)).collect()
            })
            .await
    }

    /// Stores a batch of candidates from run `run_id` in one transaction with one audit
    /// event (the items, how many failed, and a digest of the rows).
    pub async fn add_candidates(
        &self,
        run_id: Option<i64>,
        model: &str,
        params_hash: Digest,
        actor: &str,
        rows: Vec<NewCandidate>,
    ) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let (model, actor) = (model.to_string(), actor.to_string());
        let n = self
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let now = crate::now();
                let mut digest = sha2::Sha256::new();
                {
                    for r in &rows {
                        let exists: bool =
                            conn.one("SELECT EXISTS (SELECT 1 FROM items WHERE id = ?1)", &[&r.item_id], |x| x.get(0))?;
                        if !exists {
                            return Err(StoreError::ItemNotFound(r.item_id));
                        }
                        let answer = r.outcome.as_ref().ok();
                        let candidate_id: i64 = conn.one(
                            "INSERT INTO candidates (item_id, run_id, model, params_hash, answer, confidence,
                                 confidence_detail, logprobs, error, created_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                            &[
                                &r.item_id,
                                &run_id,
                                &model,
                                &params_hash.0.to_vec(),
                                &answer.map(|a| &a.answer),
                                &answer.and_then(|a| a.confidence),
                                &r.detail_json(),
                                &json_text(&r.logprobs),
                                &r.outcome.as_ref().err(),
                                &now,
                            ],
                            |row| row.get(0),
                        )?;
                        for (pos, f) in answer.map_or(&[][..], |a| &a.flags).iter().enumerate() {
                            let span = f.span.map(|[a, b]| (a as i64, b as i64));
                            conn.execute(
                                "INSERT INTO candidate_flags (candidate_id, pos, flag, why, span_start, span_end)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                &[
                                    &candidate_id,
                                    &(pos as i64),
                                    &f.flag,
                                    &f.why,
                                    &span.map(|s| s.0),
                                    &span.map(|s| s.1),
                                ],
                            )?;
                        }
                        digest.update(canonical_json(&serde_json::to_value(r).expect("candidate serializes")));
                        digest.update(b"\n");
                    }
                }
                let items: Vec<i64> = rows.iter().map(|r| r.item_id).collect();
                let errors = rows.iter().filter(|r| r.outcome.is_err()).count();
                let after = json!({
                    "run": run_id,
                    "model": model,
                    "params_hash": hex::encode(params_hash.0),
                    "items": items,
                    "errors": errors,
                    "rows_sha256": hex::encode(digest.finalize()),
                });
                let entity = match run_id {
                    Some(r) => format!("run:{r}"),
                    None => "candidates".into(),
                };
                crate::audit::append(conn, &actor, "candidates.add", &entity, None, Some(&after))?;
                tx.commit()?;
                Ok(rows.len())
            })
            .await?;
        self.sync_audit_head().await?;
        Ok(n)
    }

    /// An item's candidates, newest first.
    pub async fn candidates_of(&self, item_id: i64) -> Result<Vec<StoredCandidate>, StoreError> {
        self.db()
            .read(move |c| {
                c.query(
                    &format!("SELECT {CANDIDATE_COLS} FROM candidates WHERE item_id = ?1 ORDER BY id DESC"),
                    &[&item_id],
                    |r| row_candidate(c, r),
                )
            })
            .await
    }

    /// Candidates from one run, in item order.
    pub async fn run_candidates(&self, run_id: i64) -> Result<Vec<StoredCandidate>, StoreError> {
        self.db()
            .read(move |c| {
                c.query(
                    &format!("SELECT {CANDIDATE_COLS} FROM candidates WHERE run_id = ?1 ORDER BY item_id, id"),
                    &[&run_id],
                    |r| row_candidate(c, r),
                )
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use mmloop_core::{Candidate, Digest, RiskFlag, RunStatus};
    use serde_json::json;

    use crate::NewCandidate;
    use crate::test_support::project;

    fn answer(item_id: i64, flags: Vec<RiskFlag>) -> NewCandidate {
        NewCandidate::answered(item_id, Candidate { answer: "red".into(), confidence: Some(0.5), detail: None, flags })
    }

    fn flags(c: &crate::StoredCandidate) -> Option<&[RiskFlag]> {
        c.outcome.as_ref().ok().map(|c| &c.flags[..])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn candidates_keep_their_flags_typed_and_a_batch_is_all_or_nothing() {
        let (_dir, store) = project(3).await;
        let hedge = RiskFlag { flag: "hedge".into(), why: "says maybe".into(), span: Some([0, 5]) };
        let run = store.start_run("infer", "test", json!({"model": "m"})).await.unwrap();
        let n = store
            .add_candidates(
                Some(run),
                "m",
                Digest([1; 32]),
                "test",
                vec![answer(1, vec![hedge.clone()]), answer(2, vec![])],
            )
            .await
            .unwrap();
        assert_eq!(n, 2);
        let got = store.candidates_of(1).await.unwrap();
        assert_eq!(flags(&got[0]), Some(&[hedge][..]));
        assert_eq!(flags(&store.candidates_of(2).await.unwrap()[0]), Some(&[][..]));
        // A failed answer keeps its error and no answer at all.
        store
            .add_candidates(Some(run), "m", Digest([1; 32]), "test", vec![NewCandidate::failed(3, "timeout")])
            .await
            .unwrap();
        assert_eq!(store.candidates_of(3).await.unwrap()[0].outcome, Err("timeout".into()));
        // An unknown item fails the whole batch: the good row in it is not stored either.
        let err = store
            .add_candidates(Some(run), "m", Digest([1; 32]), "test", vec![answer(2, vec![]), answer(99, vec![])])
            .await
            .unwrap_err();
        assert!(matches!(err, crate::StoreError::ItemNotFound(99)), "{err}");
        assert_eq!(store.candidates_of(2).await.unwrap().len(), 1);
        assert_eq!(store.run_candidates(run).await.unwrap().len(), 3);
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_starts_running_and_ends_with_its_status_audited() {
        let (_dir, store) = project(1).await;
        let run = store.start_run("infer", "test", json!({"model": "m"})).await.unwrap();
        assert_eq!(store.run(run).await.unwrap().unwrap().status, RunStatus::Running);
        store.finish_run(run, "test", RunStatus::Interrupted, json!({"answered": 0})).await.unwrap();
        let view = store.run(run).await.unwrap().unwrap();
        assert_eq!(view.status, RunStatus::Interrupted);
        assert!(view.finished_at.is_some());
        let events = store.audit_log(Some(format!("run:{run}")), 10).await.unwrap();
        assert!(events.iter().any(|e| e.after.as_ref().is_some_and(|a| a["status"] == "interrupted")), "{events:?}");
        assert!(store.audit_verify().await.unwrap().ok());
        store.close();
    }
}
