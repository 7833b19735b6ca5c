//! The numbers of the stats page: progress, reviewers' throughput, and how often reviewers
//! accept, edit or reject model answers by confidence bucket and by risk flag — the data
//! that later sets the confidence threshold below which answers go to a person.
//! Read-only; computed on demand from the queue and the labels.

use std::collections::BTreeMap;

use rusqlite::Connection;
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

fn reviewers(c: &Connection) -> Result<Vec<ReviewerStats>, StoreError> {
    let mut st = c.prepare(
        "SELECT actor, action, COUNT(*), SUM(lead_time_ms), COUNT(lead_time_ms), MIN(at), MAX(at), SUM(at >= ?1)
         FROM labels WHERE action IN ('accept', 'edit', 'reject', 'skip', 'undo') GROUP BY actor, action",
    )?;
    let mut by: BTreeMap<String, (ReviewerStats, i64, i64)> = BTreeMap::new();
    let mut rows = st.query([hour_ago()])?;
    while let Some(r) = rows.next()? {
        let actor: String = r.get(0)?;
        let action: String = r.get(1)?;
        let n = r.get::<_, i64>(2)? as u64;
        let (lead_sum, lead_n): (Option<i64>, i64) = (r.get(3)?, r.get(4)?);
        let (first, last): (String, String) = (r.get(5)?, r.get(6)?);
        let recent = r.get::<_, Option<i64>>(7)?.unwrap_or(0) as u64;
        let e = by.entry(actor.clone()).or_insert_with(|| {
            (ReviewerStats { actor, first_at: first.clone(), last_at: last.clone(), ..Default::default() }, 0, 0)
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
            e.0.last_hour += recent;
            e.1 += lead_sum.unwrap_or(0);
            e.2 += lead_n;
        }
        if first < e.0.first_at {
            e.0.first_at = first;
        }
        if last > e.0.last_at {
            e.0.last_at = last;
        }
    }
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
                {
                    let mut st = c.prepare(
                        "SELECT status, COUNT(*), SUM(need), SUM(has_cand = 1) FROM review_queue GROUP BY status",
                    )?;
                    let mut rows = st.query([])?;
                    while let Some(r) = rows.next()? {
                        let n = r.get::<_, i64>(1)? as u64;
                        by_status.insert(r.get::<_, String>(0)?, n);
                        items += n;
                        to_review += r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64;
                        with_candidates += r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64;
                    }
                }
                let leased: i64 =
                    c.query_row("SELECT COUNT(*) FROM leases WHERE until_ms > ?1", [now_ms()], |r| r.get(0))?;

                let mut buckets: Vec<BucketStats> = (0..10)
                    .map(|b| BucketStats {
                        key: format!("{:.1}–{:.1}", b as f64 / 10.0, (b + 1) as f64 / 10.0),
                        lo: Some(b as f64 / 10.0),
                        hi: Some((b + 1) as f64 / 10.0),
                        ..Default::default()
                    })
                    .collect();
                let mut unknown = BucketStats { key: "unknown".into(), ..Default::default() };
                {
                    let mut st = c.prepare(
                        "SELECT CASE WHEN conf IS NULL THEN -1 ELSE MAX(MIN(CAST(conf * 10 AS INTEGER), 9), 0) END AS b,
                                status, COUNT(*)
                         FROM review_queue WHERE has_cand = 1 AND status IN ('accepted', 'edited', 'rejected')
                         GROUP BY b, status",
                    )?;
                    let mut rows = st.query([])?;
                    while let Some(r) = rows.next()? {
                        let b: i64 = r.get(0)?;
                        let status: String = r.get(1)?;
                        let n = r.get::<_, i64>(2)? as u64;
                        match usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
                            Some(bucket) => bucket.add(&status, n),
                            None => unknown.add(&status, n),
                        }
                    }
                }
                buckets.push(unknown);

                let mut flags: BTreeMap<String, BucketStats> = BTreeMap::new();
                {
                    let mut st = c.prepare(
                        "SELECT flags, status, COUNT(*) FROM review_queue
                         WHERE has_cand = 1 AND status IN ('accepted', 'edited', 'rejected') GROUP BY flags, status",
                    )?;
                    let mut rows = st.query([])?;
                    while let Some(r) = rows.next()? {
                        let f: Option<String> = r.get(0)?;
                        let status: String = r.get(1)?;
                        let n = r.get::<_, i64>(2)? as u64;
                        let mut names = split_flags(f.as_deref());
                        if names.is_empty() {
                            names.push("(no flag)".into());
                        }
                        for name in names {
                            flags
                                .entry(name.clone())
                                .or_insert_with(|| BucketStats { key: name, ..Default::default() })
                                .add(&status, n);
                        }
                    }
                }
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
