//! Which pending model answers may be accepted without review, with a certificate: the
//! decisions of audit samples certify, per task (and optionally per question type), the
//! lowest score threshold whose auto-accepted answers have an error rate ≤ ε with
//! probability ≥ 1 − δ (`mmloop_metrics::selective`, Learn-Then-Test with fixed-sequence
//! testing). δ is split evenly over the groups tested (Bonferroni), so the guarantee holds
//! for every group at once — and therefore for all auto-accepted answers together.
//!
//! The score is the model's confidence, or (`ScoreKind::Calibrated`) a logistic model of
//! the confidence's log-odds, the answer's length and its risk flags, learned on a share of
//! the audited answers and certified on the rest: the halves are disjoint, so the
//! certificate stays valid, and a score that sees the flags can separate right from wrong
//! answers better than the confidence alone. Pure: no I/O.

use std::collections::BTreeMap;

use mmloop_core::Task;
use mmloop_metrics::selective::{Certificate, CertifyOptions, PValue, certify, logistic, logistic_at};
use serde::Serialize;

use crate::routing::{Audited, PoolItem, Verdict};

/// Which score the threshold applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    Confidence,
    Calibrated,
}

impl std::str::FromStr for ScoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "confidence" => Ok(ScoreKind::Confidence),
            "calibrated" => Ok(ScoreKind::Calibrated),
            _ => Err(format!("unknown score {s:?}; expected confidence or calibrated")),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteOptions {
    pub epsilon: f64,
    pub delta: f64,
    pub score: ScoreKind,
    /// One threshold per question type (VQAv2's `question_type`) within each task.
    pub per_type: bool,
    /// No threshold with fewer audited answers above it is certified.
    pub min_n: usize,
    /// Share of a group's audited answers that trains the calibrated score.
    pub train_share: f64,
    /// Binomial tail (exact for a wrong/right loss) or Hoeffding–Bentkus.
    pub p_value: PValue,
}

impl RouteOptions {
    pub fn new(epsilon: f64, delta: f64) -> RouteOptions {
        RouteOptions {
            epsilon,
            delta,
            score: ScoreKind::Confidence,
            per_type: false,
            min_n: 30,
            train_share: 0.2,
            p_value: PValue::Binomial,
        }
    }

    /// Checks the numbers a person typed.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            return Err(format!("--epsilon {} must be between 0 and 1", self.epsilon));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("--delta {} must be between 0 and 1", self.delta));
        }
        if !(self.train_share > 0.0 && self.train_share < 1.0) {
            return Err(format!("the training share {} must be between 0 and 1", self.train_share));
        }
        Ok(())
    }
}

/// A score learned from audited answers: logistic regression on the confidence's
/// log-odds, ln(1 + answer characters) and one indicator per risk flag seen in training.
#[derive(Clone, Debug, Serialize)]
pub struct Calibrator {
    pub flags: Vec<String>,
    /// Bias first, then one weight per feature in the order above.
    pub weights: Vec<f64>,
    pub trained_on: usize,
}

impl Calibrator {
    fn features(&self, score: f64, flags: &[String], answer: Option<&str>) -> Vec<f64> {
        let s = score.clamp(1e-6, 1.0 - 1e-6);
        let mut x = vec![(s / (1.0 - s)).ln(), (answer.map_or(0, |a| a.chars().count()) as f64).ln_1p()];
        x.extend(self.flags.iter().map(|f| f64::from(u8::from(flags.contains(f)))));
        x
    }

    /// The learned probability that the answer is right.
    pub fn score(&self, score: f64, flags: &[String], answer: Option<&str>) -> f64 {
        logistic_at(&self.weights, &self.features(score, flags, answer))
    }

    fn fit(train: &[&Audited]) -> Option<Calibrator> {
        let rights = train.iter().filter(|a| a.verdict == Verdict::Correct).count();
        if train.len() < 20 || rights == 0 || rights == train.len() {
            return None;
        }
        let mut flags: Vec<String> = train.iter().flat_map(|a| a.flags.iter().cloned()).collect();
        flags.sort();
        flags.dedup();
        flags.truncate(16);
        let mut c = Calibrator { flags, weights: Vec::new(), trained_on: train.len() };
        let x: Vec<Vec<f64>> =
            train.iter().map(|a| c.features(a.score.unwrap_or(0.0), &a.flags, a.answer.as_deref())).collect();
        let y: Vec<bool> = train.iter().map(|a| a.verdict == Verdict::Correct).collect();
        c.weights = logistic(&x, &y, 1e-2, 50);
        Some(c)
    }
}

/// The certificate of one group of items.
#[derive(Clone, Debug, Serialize)]
pub struct GroupPlan {
    /// `vqa`, `caption`, or `vqa/<question type>`.
    pub group: String,
    pub task: Task,
    pub question_type: Option<String>,
    /// Audited answers decided, and still waiting for a person.
    pub audited: usize,
    pub open: usize,
    /// This group's share of δ.
    pub delta: f64,
    /// Certified on the model's confidence, all audited answers.
    pub confidence: Certificate,
    /// Certified on the learned score, on the audited answers it was not trained on.
    pub calibrated: Option<Certificate>,
    pub calibrator: Option<Calibrator>,
    /// The score applied, its threshold (`None`: nothing certified), and what it accepts.
    pub score: ScoreKind,
    pub threshold: Option<f64>,
    pub pool: usize,
    pub accept: usize,
}

/// What a route run would do.
#[derive(Clone, Debug, Serialize)]
pub struct RoutePlan {
    pub options: RouteOptions,
    pub groups: Vec<GroupPlan>,
    /// Pending answers the certificates apply to, and those accepted.
    pub pool: usize,
    pub accepted: usize,
    /// The share of the pool's review the run saves.
    pub review_saved: f64,
    /// (item, its label when planned, the candidate accepted).
    #[serde(skip)]
    pub accept: Vec<(i64, Option<i64>, i64)>,
}

fn group_key(task: Task, question_type: Option<&str>, per_type: bool) -> (Task, Option<String>) {
    (task, per_type.then(|| question_type.unwrap_or("other").to_string()))
}

/// Certifies each group from its audited answers and picks the pending answers at or above
/// its threshold.
pub fn plan(audited: &[Audited], pool: &[PoolItem], opts: &RouteOptions) -> RoutePlan {
    type Key = (Task, Option<String>);
    let mut by_group: BTreeMap<Key, (Vec<&Audited>, usize, Vec<&PoolItem>)> = BTreeMap::new();
    for a in audited.iter().filter(|a| a.score.is_some()) {
        let e = by_group.entry(group_key(a.task, a.question_type.as_deref(), opts.per_type)).or_default();
        match a.verdict {
            Verdict::Open => e.1 += 1,
            _ => e.0.push(a),
        }
    }
    for p in pool {
        by_group.entry(group_key(p.task, p.question_type.as_deref(), opts.per_type)).or_default().2.push(p);
    }
    let tested = by_group.values().filter(|g| !g.0.is_empty()).count().max(1);
    let delta = opts.delta / tested as f64;
    let certify_opts =
        CertifyOptions { min_n: opts.min_n, p_value: opts.p_value, ..CertifyOptions::new(opts.epsilon, delta) };
    let mut groups = Vec::new();
    let mut accept = Vec::new();
    for ((task, question_type), (decided, open, items)) in by_group {
        let pairs: Vec<(f64, bool)> =
            decided.iter().map(|a| (a.score.unwrap_or(0.0), a.verdict == Verdict::Correct)).collect();
        let confidence = certify(&pairs, &certify_opts);
        // Which audited answers train is fixed by their place in the random sample (every
        // k-th), not by what has been decided so far, so later decisions never move the split.
        let every = (1.0 / opts.train_share).round().max(2.0) as i64;
        let (train, held): (Vec<&Audited>, Vec<&Audited>) = decided.iter().partition(|a| a.pos % every == 0);
        let calibrator = Calibrator::fit(&train);
        let calibrated = calibrator.as_ref().map(|c| {
            let held: Vec<(f64, bool)> = held
                .iter()
                .map(|a| {
                    (c.score(a.score.unwrap_or(0.0), &a.flags, a.answer.as_deref()), a.verdict == Verdict::Correct)
                })
                .collect();
            certify(&held, &certify_opts)
        });
        let threshold = match opts.score {
            ScoreKind::Confidence => confidence.threshold,
            ScoreKind::Calibrated => calibrated.as_ref().and_then(|c| c.threshold),
        };
        let mut n_accept = 0;
        if let Some(t) = threshold {
            for p in &items {
                let s = match (opts.score, &calibrator) {
                    (ScoreKind::Calibrated, Some(c)) => c.score(p.score, &p.flags, Some(&p.answer)),
                    _ => p.score,
                };
                if s >= t {
                    accept.push((p.item_id, p.label_id, p.candidate_id));
                    n_accept += 1;
                }
            }
        }
        groups.push(GroupPlan {
            group: match &question_type {
                Some(q) => format!("{task}/{q}"),
                None => task.to_string(),
            },
            task,
            question_type,
            audited: decided.len(),
            open,
            delta,
            confidence,
            calibrated,
            calibrator,
            score: opts.score,
            threshold,
            pool: items.len(),
            accept: n_accept,
        });
    }
    let accepted = accept.len();
    RoutePlan {
        options: opts.clone(),
        groups,
        pool: pool.len(),
        accepted,
        review_saved: if pool.is_empty() { 0.0 } else { accepted as f64 / pool.len() as f64 },
        accept,
    }
}

/// One point of the risk–coverage curve: answers scoring ≥ `threshold` are `coverage` of
/// the audited ones, and `error` of them are wrong.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub threshold: f64,
    pub coverage: f64,
    pub error: f64,
}

/// The risk–coverage curve of audited answers by confidence, at most `points` points.
pub fn risk_coverage(audited: &[Audited], points: usize) -> Vec<CurvePoint> {
    let mut pairs: Vec<(f64, bool)> = audited
        .iter()
        .filter(|a| a.verdict != Verdict::Open)
        .filter_map(|a| Some((a.score?, a.verdict == Verdict::Correct)))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = pairs.len();
    let step = n.div_ceil(points.max(1)).max(1);
    let mut out = Vec::new();
    let (mut wrong, mut emitted) = (0usize, 0usize);
    for (i, (s, ok)) in pairs.iter().enumerate() {
        wrong += usize::from(!ok);
        // A point per `step` answers, placed after the last of equal scores.
        let last_of_tie = i + 1 == n || pairs[i + 1].0 < *s;
        if last_of_tie && (i + 1 >= emitted + step || i + 1 == n) {
            emitted = i + 1;
            out.push(CurvePoint {
                threshold: *s,
                coverage: (i + 1) as f64 / n as f64,
                error: wrong as f64 / (i + 1) as f64,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(i: i64, score: f64, ok: bool, flags: &[&str]) -> Audited {
        Audited {
            sample_id: 1,
            pos: i,
            item_id: i,
            candidate_id: i,
            task: Task::Vqa,
            question_type: Some(if i % 2 == 0 { "what color" } else { "how many" }.into()),
            score: Some(score),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            answer: Some("red".into()),
            verdict: if ok { Verdict::Correct } else { Verdict::Wrong },
        }
    }

    fn pool(i: i64, score: f64) -> PoolItem {
        PoolItem {
            item_id: 1000 + i,
            label_id: None,
            candidate_id: 1000 + i,
            task: Task::Vqa,
            question_type: Some("what color".into()),
            score,
            flags: Vec::new(),
            answer: "red".into(),
        }
    }

    #[test]
    fn clean_answers_certify_and_the_pool_above_the_threshold_is_accepted() {
        // 400 audited answers: above 0.5 all right, below mostly wrong.
        let a: Vec<Audited> = (0..400).map(|i| audit(i, i as f64 / 400.0, i >= 200 || i % 3 == 0, &[])).collect();
        let p: Vec<PoolItem> = (0..100).map(|i| pool(i, i as f64 / 100.0)).collect();
        let plan = plan(&a, &p, &RouteOptions::new(0.05, 0.1));
        let g = &plan.groups[0];
        let t = g.threshold.expect("certified");
        assert!((0.4..=0.8).contains(&t), "{t}");
        assert_eq!(plan.accepted, p.iter().filter(|x| x.score >= t).count());
        assert!(g.confidence.errors as f64 <= 0.05 * g.confidence.n as f64);
        // Per type: δ splits over the two groups; the pool has one type only.
        let per = super::plan(&a, &p, &RouteOptions { per_type: true, ..RouteOptions::new(0.05, 0.1) });
        assert_eq!(per.groups.len(), 2);
        assert!(per.groups.iter().all(|g| (g.delta - 0.05).abs() < 1e-12));
        assert!(per.accepted <= plan.accepted);
    }

    #[test]
    fn nothing_is_accepted_where_the_audit_cannot_certify() {
        let a: Vec<Audited> = (0..300).map(|i| audit(i, i as f64 / 300.0, i % 4 != 0, &[])).collect();
        let p: Vec<PoolItem> = (0..50).map(|i| pool(i, 0.99)).collect();
        let plan = plan(&a, &p, &RouteOptions::new(0.05, 0.1));
        assert_eq!(plan.groups[0].threshold, None);
        assert_eq!(plan.accepted, 0);
        assert_eq!(plan.review_saved, 0.0);
    }

    #[test]
    fn the_calibrated_score_learns_what_a_flag_means() {
        // Flagged answers are wrong whatever their confidence; unflagged ones are right.
        let a: Vec<Audited> = (0..1000)
            .map(|i| {
                let flagged = i % 7 == 3;
                audit(i, 0.5 + (i % 50) as f64 / 100.0, !flagged, if flagged { &["hedge"] } else { &[] })
            })
            .collect();
        let plan = plan(&a, &[], &RouteOptions { score: ScoreKind::Calibrated, ..RouteOptions::new(0.05, 0.1) });
        let g = &plan.groups[0];
        assert!(g.confidence.threshold.is_none(), "confidence alone cannot separate: {:?}", g.confidence);
        let c = g.calibrated.as_ref().expect("trained");
        assert!(c.threshold.is_some() && c.coverage > 0.7, "{c:?}");
        assert_eq!(g.calibrator.as_ref().unwrap().trained_on, 200);
    }

    #[test]
    fn the_curve_is_monotone_in_coverage() {
        let a: Vec<Audited> = (0..250).map(|i| audit(i, (i % 97) as f64 / 97.0, i % 7 != 0, &[])).collect();
        let c = risk_coverage(&a, 20);
        assert!(c.len() <= 21 && c.len() >= 10, "{}", c.len());
        assert!(c.windows(2).all(|w| w[0].coverage < w[1].coverage && w[0].threshold > w[1].threshold));
        assert_eq!(c.last().unwrap().coverage, 1.0);
    }
}
