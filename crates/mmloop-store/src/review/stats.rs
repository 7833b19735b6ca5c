//! The numbers of the stats page: progress, reviewers' throughput, and how often reviewers
//! accept, edit or reject model answers by confidence bucket and by risk flag — the data
//! that later sets the confidence threshold below which answers go to a person.
//! Read-only; read from tallies the store keeps as the queue and the labels change
//! (`queue_tally`, `reviewer_tally`), so the page costs the same at 1M items as at 100.

use std::collections::BTreeMap;

use crate::sql::Conn;
use serde::Serialize;

use super::queue::split_flags;
use super::{ReviewResult, now_ms};
use crate::{Store, StoreError};

#[derive(Clone, Debug, Serialize)]
pub struct ReviewStats {
    pub items: u64,
    pub by_status: BTreeMap<String, u64>,
    /// Items nobody in this project has decided on (the default queue).
    pub to_review: u64,
    pub with_candidates: u64,
    pub leased: u64,
    pub reviewers: Vec<ReviewerStats>,
    /// Ten buckets of the primary candidate's confidence, plus `unknown`.
    pub by_confidence: Vec<BucketStats>,
    pub by_flag: Vec<BucketStats>,
}

/// What one person decided. `items_per_hour` counts time spent deciding (the sum of lead
/// times), so breaks do not lower it.
#[derive(Clone, Debug, Serialize, Default)]
pub struct ReviewerStats {
    pub actor: String,
    pub decisions: u64,
    pub accepted: u64,
    pub edited: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub undone: u64,
    pub mean_lead_time_ms: Option<f64>,
    pub items_per_hour: Option<f64>,
    pub last_hour: u64,
    pub first_at: String,
    pub last_at: String,
}

/// Decisions on items whose model answer fell in one bucket (a confidence range or a flag).
#[derive(Clone, Debug, Serialize, Default)]
pub struct BucketStats {
    pub key: String,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub decided: u64,
    pub accepted: u64,
    pub edited: u64,
    pub rejected: u64,
    pub acceptance_rate: Option<f64>,
    pub edit_rate: Option<f64>,
    pub reject_rate: Option<f64>,
}

impl BucketStats {
    fn add(&mut self, status: &str, n: u64) {
        match status {
            "accepted" => self.accepted += n,
            "edited" => self.edited += n,
            "rejected" => self.rejected += n,
            _ => return,
        }
        self.decided += n;
    }

    fn finish(mut self) -> Self {
        let d = self.decided as f64;
        if self.decided > 0 {
            self.acceptance_rate = Some(self.accepted as f64 / d);
            self.edit_rate = Some(self.edited as f64 / d);
            self.reject_rate = Some(self.rejected as f64 / d);
        }
        self
    }
}

fn hour_ago() -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn reviewers(c: Conn) -> Result<Vec<ReviewerStats>, StoreError> {
    let mut recent: BTreeMap<String, u64> = BTreeMap::new();
    c.each(
        "SELECT actor, COUNT(*) FROM labels
         WHERE at >= ?1 AND action IN ('accept', 'edit', 'reject', 'skip') GROUP BY actor",
        &[&hour_ago()],
        |r| {
            recent.insert(r.get(0)?, r.get::<i64>(1)? as u64);
            Ok(())
        },
    )?;
    let mut by: BTreeMap<String, (ReviewerStats, i64, i64)> = BTreeMap::new();
    c.each("SELECT actor, action, n, lead_sum, lead_n, first_at, last_at FROM reviewer_tally", &[], |r| {
        let actor: String = r.get(0)?;
        let action: String = r.get(1)?;
        let n = r.get::<i64>(2)? as u64;
        let (lead_sum, lead_n): (i64, i64) = (r.get(3)?, r.get(4)?);
        let (first, last): (String, String) = (r.get(5)?, r.get(6)?);
        let e = by.entry(actor.clone()).or_insert_with(|| {
            let last_hour = recent.get(&actor).copied().unwrap_or(0);
            (
                ReviewerStats {
                    actor,
                    first_at: first.clone(),
                    last_at: last.clone(),
                    last_hour,
                    ..Default::default()
                },
                0,
                0,
            )
        });
        match action.as_str() {
            "accept" => e.0.accepted += n,
            "edit" => e.0.edited += n,
            "reject" => e.0.rejected += n,
            "skip" => e.0.skipped += n,
            _ => e.0.undone += n,
        }
        if action != "undo" {
            e.0.decisions += n;
            e.1 += lead_sum;
            e.2 += lead_n;
        }
        if first < e.0.first_at {
            e.0.first_at = first;
        }
        if last > e.0.last_at {
            e.0.last_at = last;
        }
        Ok(())
    })?;
    Ok(by
        .into_values()
        .map(|(mut s, lead_sum, lead_n)| {
            if lead_n > 0 {
                s.mean_lead_time_ms = Some(lead_sum as f64 / lead_n as f64);
                if lead_sum > 0 {
                    s.items_per_hour = Some(lead_n as f64 * 3_600_000.0 / lead_sum as f64);
                }
            }
            s
        })
        .collect())
}

impl Store {
    pub async fn review_stats(&self) -> ReviewResult<ReviewStats> {
        Ok(self
            .db()
            .read(|c| {
                let mut by_status = BTreeMap::new();
                let (mut items, mut to_review, mut with_candidates) = (0u64, 0u64, 0u64);
                let mut buckets: Vec<BucketStats> = (0..10)
                    .map(|b| BucketStats {
                        key: format!("{:.1}–{:.1}", b as f64 / 10.0, (b + 1) as f64 / 10.0),
                        lo: Some(b as f64 / 10.0),
                        hi: Some((b + 1) as f64 / 10.0),
                        ..Default::default()
                    })
                    .collect();
                let mut unknown = BucketStats { key: "unknown".into(), ..Default::default() };
                let mut flags: BTreeMap<String, BucketStats> = BTreeMap::new();
                // Kept by triggers as the queue changes: a few hundred rows whatever the project's size.
                let sql = "SELECT status, status IN ('pending', 'imported'), has_cand, bucket, flags, n
                           FROM queue_tally WHERE n > 0";
                c.each(sql, &[], |r| {
                    let status: String = r.get(0)?;
                    let (need, has_cand): (bool, bool) = (r.get(1)?, r.get(2)?);
                    let (bucket, flag_list): (i64, String) = (r.get(3)?, r.get(4)?);
                    let n = r.get::<i64>(5)? as u64;
                    *by_status.entry(status.clone()).or_insert(0) += n;
                    items += n;
                    to_review += if need { n } else { 0 };
                    if !has_cand {
                        return Ok(());
                    }
                    with_candidates += n;
                    if !matches!(status.as_str(), "accepted" | "edited" | "rejected") {
                        return Ok(());
                    }
                    match usize::try_from(bucket).ok().and_then(|b| buckets.get_mut(b)) {
                        Some(bucket) => bucket.add(&status, n),
                        None => unknown.add(&status, n),
                    }
                    let mut names = split_flags(Some(&flag_list));
                    if names.is_empty() {
                        names.push("(no flag)".into());
                    }
                    for name in names {
                        flags
                            .entry(name.clone())
                            .or_insert_with(|| BucketStats { key: name, ..Default::default() })
                            .add(&status, n);
                    }
                    Ok(())
                })?;
                buckets.push(unknown);
                let leased: i64 =
                    c.one("SELECT COUNT(*) FROM leases WHERE until_ms > ?1", &[&now_ms()], |r| r.get(0))?;
                Ok(ReviewStats {
                    items,
                    by_status,
                    to_review,
                    with_candidates,
                    leased: leased as u64,
                    reviewers: reviewers(c)?,
                    by_confidence: buckets.into_iter().map(BucketStats::finish).collect(),
                    by_flag: flags.into_values().map(BucketStats::finish).collect(),
                })
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use mmloop_core::{Answer, Candidate, Digest, RiskFlag};

    use crate::NewCandidate;
    use crate::review::{Decision, DecisionAction, Role};
    use crate::test_support::project;

    /// Every row of `sql`, its columns joined, for comparing two queries' results.
    fn rows(c: &rusqlite::Connection, sql: &str) -> Vec<String> {
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        st.query_map([], |r| {
            Ok((0..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                .collect::<Result<Vec<_>, _>>()?
                .join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// The counts as the page used to compute them: a scan of the queue and the labels.
    fn scanned(c: &rusqlite::Connection) -> Vec<String> {
        let mut out = rows(
            c,
            "SELECT status, COALESCE(has_cand, 0), bucket, COALESCE(flags, ''), COUNT(*) FROM review_queue
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        );
        out.extend(rows(
            c,
            "SELECT actor, action, COUNT(*), COALESCE(SUM(lead_time_ms), 0), COUNT(lead_time_ms), MIN(at), MAX(at)
             FROM labels WHERE action IN ('accept', 'edit', 'reject', 'skip', 'undo') GROUP BY 1, 2 ORDER BY 1, 2",
        ));
        out
    }

    /// The same counts as the triggers keep them.
    fn kept(c: &rusqlite::Connection) -> Vec<String> {
        let mut out =
            rows(c, "SELECT status, has_cand, bucket, flags, n FROM queue_tally WHERE n > 0 ORDER BY 1, 2, 3, 4");
        out.extend(rows(
            c,
            "SELECT actor, action, n, lead_sum, lead_n, first_at, last_at FROM reviewer_tally ORDER BY 1, 2",
        ));
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_kept_tallies_equal_a_full_scan_after_candidates_decisions_and_undo() {
        let (_dir, store) = project(12).await;
        let hedge = RiskFlag { flag: "hedge".into(), why: String::new(), span: None };
        let short = RiskFlag { flag: "short".into(), why: String::new(), span: None };
        let rows = (1..=10)
            .map(|i: i64| {
                let flags = match i % 3 {
                    0 => vec![hedge.clone()],
                    1 => vec![hedge.clone(), short.clone()],
                    _ => vec![],
                };
                let c = Candidate { answer: format!("a{i}"), confidence: Some(i as f64 / 11.0), detail: None, flags };
                NewCandidate::answered(i, c)
            })
            .chain([NewCandidate::failed(11, "timeout")])
            .collect();
        store.add_candidates(None, "m", Digest([1; 32]), "test", rows).await.unwrap();
        // A second, newer candidate re-ranks item 1.
        let newer = Candidate { answer: "b".into(), confidence: Some(0.05), detail: None, flags: vec![short] };
        store
            .add_candidates(None, "m2", Digest([2; 32]), "test", vec![NewCandidate::answered(1, newer)])
            .await
            .unwrap();
        let ann = store.create_user("ann", Role::Reviewer, None, "test").await.unwrap();
        let bob = store.create_user("bob", Role::Annotator, None, "test").await.unwrap();
        let decision = |action, lead, candidate_id, base| Decision {
            action,
            base,
            answer: (action == DecisionAction::Edit).then(|| Answer::text("fixed")),
            candidate_id,
            lead_time_ms: lead,
        };
        for (item, user, action, lead) in [
            (1, &ann, DecisionAction::Accept, Some(900)),
            (2, &ann, DecisionAction::Edit, Some(4_000)),
            (3, &ann, DecisionAction::Reject, None),
            (4, &bob, DecisionAction::Skip, Some(300)),
            (5, &bob, DecisionAction::Accept, Some(1_200)),
            (12, &bob, DecisionAction::Edit, Some(2_000)),
            (5, &bob, DecisionAction::Edit, Some(700)),
        ] {
            let newest = store.candidates_of(item).await.unwrap().first().map(|c| c.id);
            let base = store.item(item).await.unwrap().label.map(|l| l.id);
            store.decide(item, user, decision(action, lead, newest, base)).await.unwrap();
        }
        let base = store.item(5).await.unwrap().label.map(|l| l.id);
        store.undo(5, &bob, base, 60_000).await.unwrap();
        let (scan, tally) =
            store.db().sqlite_read(|c| Ok::<_, crate::StoreError>((scanned(c), kept(c)))).await.unwrap();
        assert_eq!(tally, scan);
        let s = store.review_stats().await.unwrap();
        assert_eq!(s.items, 12);
        assert_eq!(s.with_candidates, 11);
        let ann_stats = s.reviewers.iter().find(|r| r.actor == "ann").unwrap();
        assert_eq!((ann_stats.decisions, ann_stats.last_hour, ann_stats.mean_lead_time_ms), (3, 3, Some(2_450.0)));
        let bob_stats = s.reviewers.iter().find(|r| r.actor == "bob").unwrap();
        assert_eq!((bob_stats.decisions, bob_stats.undone), (4, 1));
        let decided: u64 = s.by_confidence.iter().map(|b| b.decided).sum();
        assert_eq!(decided, 4, "accepted 1 and 5 (its edit undone), edited 2, rejected 3; 12 has no candidate");
        store.close();
    }
}
