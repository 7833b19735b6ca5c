//! Online A/B experiments: their definition, the exposures `mmloop serve` records and the
//! outcomes clients report, each audited; and the per-arm summary `mmloop ab status` reads.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Store, StoreError};

/// One arm: its name in the experiment and the model that answers (the served model's name
/// or one of its adapters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub model: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub name: String,
    pub seed: String,
    pub arms: Vec<Arm>,
    pub weights: Vec<f64>,
}

/// An answered request of an experiment.
#[derive(Clone, Debug, Serialize)]
pub struct Exposure {
    pub experiment: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub arm: String,
    pub latency_ms: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub confidence: Option<f64>,
}

/// What a client says of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Accept,
    Edit,
    Reject,
    ThumbsUp,
    ThumbsDown,
    /// A number in [0, 1] the client computed.
    Value,
}

impl OutcomeKind {
    /// The outcome as a success value: accepted as is (or liked) = 1, anything else = 0.
    pub fn value(self, given: Option<f64>) -> Result<f64, String> {
        match (self, given) {
            (OutcomeKind::Value, Some(v)) if (0.0..=1.0).contains(&v) => Ok(v),
            (OutcomeKind::Value, _) => Err("outcome \"value\" needs a value between 0 and 1".into()),
            (OutcomeKind::Accept | OutcomeKind::ThumbsUp, _) => Ok(1.0),
            (OutcomeKind::Edit | OutcomeKind::Reject | OutcomeKind::ThumbsDown, _) => Ok(0.0),
        }
    }
}

/// An arm's numbers. Assignment is per user, so the analysis unit is the user (a request
/// without a user is its own unit): `units` exposed, and over the units with an outcome the
/// sum (and sum of squares) of each unit's mean outcome — outcomes of one user are not
/// independent, their mean is. Request-level counts are kept beside them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmSummary {
    pub arm: String,
    pub model: String,
    pub exposures: u64,
    pub outcomes: u64,
    pub units: u64,
    pub units_with_outcome: u64,
    pub unit_sum: f64,
    pub unit_sum_sq: f64,
    pub mean_latency_ms: Option<f64>,
    pub mean_confidence: Option<f64>,
}

impl Store {
    /// Creates an experiment, or checks that one of the same name has the same arms and
    /// weights (a restarted server continues it; a changed split is an error: it would
    /// re-bucket users mid-experiment).
    pub async fn ab_start(&self, e: Experiment, actor: &str) -> Result<Experiment, StoreError> {
        let actor = actor.to_string();
        let out = self
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let existing: Option<(String, String, String)> =
                    conn.optional("SELECT seed, arms, weights FROM ab_experiments WHERE name = ?1", &[&e.name], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                if let Some((seed, arms, weights)) = existing {
                    let old = Experiment {
                        name: e.name.clone(),
                        seed,
                        arms: serde_json::from_str(&arms).map_err(|x| StoreError::Internal(x.to_string()))?,
                        weights: serde_json::from_str(&weights).map_err(|x| StoreError::Internal(x.to_string()))?,
                    };
                    if old.arms != e.arms || old.weights != e.weights {
                        return Err(StoreError::Config(format!(
                            "experiment {:?} already runs with other arms or weights\n  hint: name a new experiment (changing the split mid-way re-buckets users)",
                            e.name
                        )));
                    }
                    return Ok(old);
                }
                conn.execute(
                    "INSERT INTO ab_experiments (name, seed, arms, weights, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    &[&e.name, &e.seed, &serde_json::to_string(&e.arms).unwrap_or_default(), &serde_json::to_string(&e.weights).unwrap_or_default(), &crate::now(), &actor],
                )?;
                let after = serde_json::to_value(&e).unwrap_or_default();
                crate::audit::append(conn, &actor, "ab.start", &format!("experiment:{}", e.name), None, Some(&after))?;
                tx.commit()?;
                Ok(e)
            })
            .await?;
        self.sync_audit_head().await?;
        Ok(out)
    }

    pub async fn ab_experiment(&self, name: &str) -> Result<Option<Experiment>, StoreError> {
        let name = name.to_string();
        self.db()
            .read(move |c| {
                let row: Option<(String, String, String)> =
                    c.optional("SELECT seed, arms, weights FROM ab_experiments WHERE name = ?1", &[&name], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                row.map(|(seed, arms, weights)| {
                    Ok(Experiment {
                        name: name.clone(),
                        seed,
                        arms: serde_json::from_str(&arms).map_err(|x| StoreError::Internal(x.to_string()))?,
                        weights: serde_json::from_str(&weights).map_err(|x| StoreError::Internal(x.to_string()))?,
                    })
                })
                .transpose()
            })
            .await
    }

    /// Records an answered request of an experiment (audited).
    pub async fn ab_expose(&self, x: Exposure) -> Result<(), StoreError> {
        self.ab_expose_many(vec![x]).await
    }

    /// Records answered requests in one transaction, each audited: one commit for however
    /// many requests a busy server finished meanwhile.
    pub async fn ab_expose_many(&self, xs: Vec<Exposure>) -> Result<(), StoreError> {
        if xs.is_empty() {
            return Ok(());
        }
        self.db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                for x in &xs {
                    conn.execute(
                        "INSERT INTO ab_exposures (experiment, request_id, user_id, arm, latency_ms, prompt_tokens,
                                                   completion_tokens, confidence, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        &[
                            &x.experiment,
                            &x.request_id,
                            &x.user_id,
                            &x.arm,
                            &x.latency_ms,
                            &(x.prompt_tokens as i64),
                            &(x.completion_tokens as i64),
                            &x.confidence,
                            &crate::now(),
                        ],
                    )?;
                    let after = serde_json::to_value(x).unwrap_or_default();
                    let entity = format!("experiment:{}", x.experiment);
                    crate::audit::append(conn, "serve", "ab.exposure", &entity, None, Some(&after))?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.sync_audit_head().await
    }

    /// Records what a client says of a request's answer (audited); an unknown request id is
    /// an error.
    pub async fn ab_outcome(
        &self,
        request_id: &str,
        outcome: OutcomeKind,
        value: Option<f64>,
        actor: &str,
    ) -> Result<String, StoreError> {
        let v = outcome.value(value).map_err(StoreError::Config)?;
        let (request_id, actor) = (request_id.to_string(), actor.to_string());
        let experiment = self
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let experiment: Option<String> =
                    conn.optional("SELECT experiment FROM ab_exposures WHERE request_id = ?1", &[&request_id], |r| {
                        r.get(0)
                    })?;
                let Some(experiment) = experiment else {
                    return Err(StoreError::NotFound(format!("no experiment request {request_id:?}")));
                };
                conn.execute(
                    "INSERT INTO ab_outcomes (request_id, outcome, value, created_at, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[&request_id, &serde_json::to_value(outcome).unwrap_or_default().as_str(), &v, &crate::now(), &actor],
                )?;
                let after = json!({"request_id": request_id, "outcome": outcome, "value": v});
                crate::audit::append(conn, &actor, "ab.outcome", &format!("experiment:{experiment}"), None, Some(&after))?;
                tx.commit()?;
                Ok(experiment)
            })
            .await?;
        self.sync_audit_head().await?;
        Ok(experiment)
    }

    /// Each arm's numbers, in the experiment's arm order; a request's latest outcome counts.
    pub async fn ab_summary(&self, name: &str) -> Result<Vec<ArmSummary>, StoreError> {
        let Some(e) = self.ab_experiment(name).await? else {
            return Err(StoreError::NotFound(format!("no experiment {name:?}")));
        };
        let name = name.to_string();
        self.db()
            .read(move |c| {
                let mut out = Vec::with_capacity(e.arms.len());
                for arm in &e.arms {
                    let (exposures, latency, confidence): (i64, Option<f64>, Option<f64>) = c.one(
                        "SELECT COUNT(*), AVG(latency_ms), AVG(confidence) FROM ab_exposures WHERE experiment = ?1 AND arm = ?2",
                        &[&name, &arm.name],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                    let (units, outcomes): (i64, i64) = c.one(
                        "SELECT COUNT(DISTINCT COALESCE(user_id, request_id)),
                                (SELECT COUNT(*) FROM ab_exposures x WHERE x.experiment = ?1 AND x.arm = ?2
                                   AND EXISTS (SELECT 1 FROM ab_outcomes o WHERE o.request_id = x.request_id))
                         FROM ab_exposures WHERE experiment = ?1 AND arm = ?2",
                        &[&name, &arm.name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    // Each unit's mean over its requests' latest outcomes.
                    let (with, sum, sum_sq): (i64, Option<f64>, Option<f64>) = c.one(
                        "SELECT COUNT(*), SUM(m), SUM(m * m) FROM (
                           SELECT AVG(o.value) AS m
                           FROM ab_exposures x JOIN ab_outcomes o ON o.id =
                                (SELECT MAX(id) FROM ab_outcomes WHERE request_id = x.request_id)
                           WHERE x.experiment = ?1 AND x.arm = ?2
                           GROUP BY COALESCE(x.user_id, x.request_id)) AS units",
                        &[&name, &arm.name],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                    out.push(ArmSummary {
                        arm: arm.name.clone(),
                        model: arm.model.clone(),
                        exposures: exposures as u64,
                        outcomes: outcomes as u64,
                        units: units as u64,
                        units_with_outcome: with as u64,
                        unit_sum: sum.unwrap_or(0.0),
                        unit_sum_sq: sum_sq.unwrap_or(0.0),
                        mean_latency_ms: latency,
                        mean_confidence: confidence,
                    });
                }
                Ok(out)
            })
            .await
    }
}

/// One arm against the control (the first arm).
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub arm: String,
    pub against: String,
    /// The always-valid comparison with the data so far; `None` before both arms have two
    /// users with outcomes and some variation.
    pub sequential: Option<mmloop_metrics::ab::Sequential>,
    pub recommendation: String,
}

/// The experiment as it stood after `units` users with outcomes (in the order of their
/// first outcome, each with their mean outcome now): per-arm rates and each comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Look {
    pub units: u64,
    /// Per arm: its users with outcomes so far and their mean outcome.
    pub arms: Vec<(u64, Option<f64>)>,
    /// Per comparison (arms after the first).
    pub comparisons: Vec<Option<mmloop_metrics::ab::Sequential>>,
}

/// What `mmloop ab status`, the review server's experiments page and the HTML report show.
#[derive(Clone, Debug, Serialize)]
pub struct AbStatus {
    pub experiment: Experiment,
    pub arms: Vec<ArmSummary>,
    /// The sample-ratio-mismatch χ² p-value of the users per arm against the weights.
    pub srm_p_value: f64,
    /// The p-value is below [`SRM_THRESHOLD`]: the split is broken, results are not to be read.
    pub srm_mismatch: bool,
    pub alpha: f64,
    /// α split over the comparisons (Bonferroni).
    pub level_per_comparison: f64,
    pub tau: f64,
    pub unit: &'static str,
    pub comparisons: Vec<Comparison>,
    /// Up to 80 evenly spaced looks, the last with every user (what the plots draw).
    pub trajectory: Vec<Look>,
}

/// An SRM p-value below this stops the reading: the split is broken.
pub const SRM_THRESHOLD: f64 = 0.001;

fn stats_of(s: &ArmSummary) -> mmloop_metrics::ab::ArmStats {
    mmloop_metrics::ab::ArmStats { n: s.units_with_outcome, sum: s.unit_sum, sum_sq: s.unit_sum_sq }
}

impl Store {
    /// The experiments of the project, oldest first.
    pub async fn ab_experiments(&self) -> Result<Vec<String>, StoreError> {
        self.db()
            .read(|c| c.query("SELECT name FROM ab_experiments ORDER BY created_at, name", &[], |r| r.get(0)))
            .await
    }

    /// Each user with an outcome (a request without a user is its own) per arm, as
    /// [`Store::ab_summary`] counts them: the arm (index) and the user's mean outcome, in the
    /// order their outcomes came (by the earliest of their requests' latest outcomes).
    async fn ab_units(&self, e: &Experiment) -> Result<Vec<(usize, f64)>, StoreError> {
        let (name, arms) = (e.name.clone(), e.arms.iter().map(|a| a.name.clone()).collect::<Vec<_>>());
        self.db()
            .read(move |c| {
                let rows = c.query(
                    "SELECT x.arm, AVG(o.value), MIN(o.id) AS first
                     FROM ab_exposures x JOIN ab_outcomes o ON o.id =
                          (SELECT MAX(id) FROM ab_outcomes WHERE request_id = x.request_id)
                     WHERE x.experiment = ?1
                     GROUP BY x.arm, COALESCE(x.user_id, x.request_id)
                     ORDER BY first",
                    &[&name],
                    |r| Ok((r.get::<String>(0)?, r.get::<f64>(1)?)),
                )?;
                let mut out = Vec::new();
                for (arm, mean) in rows {
                    if let Some(i) = arms.iter().position(|a| *a == arm) {
                        out.push((i, mean));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The experiment's analysis at level `alpha` with mixing scale `tau` (the size of the
    /// differences worth detecting): per-arm summaries, the SRM check, each arm against the
    /// first with the always-valid mSPRT, a recommendation, and the looks the plots draw.
    pub async fn ab_status(&self, name: &str, alpha: f64, tau: f64) -> Result<AbStatus, StoreError> {
        use mmloop_metrics::ab::{ArmStats, msprt, srm_pvalue};
        if !(alpha > 0.0 && alpha < 1.0 && tau > 0.0) {
            return Err(StoreError::Config("alpha must be in (0, 1) and tau positive".into()));
        }
        let Some(e) = self.ab_experiment(name).await? else {
            return Err(StoreError::NotFound(format!("no experiment {name:?}")));
        };
        if e.arms.len() < 2 {
            return Err(StoreError::Config(format!("experiment {name:?} has fewer than two arms")));
        }
        let arms = self.ab_summary(name).await?;
        let units = self.ab_units(&e).await?;
        // Users are assigned, so users are counted and compared.
        let counts: Vec<u64> = arms.iter().map(|a| a.units).collect();
        let srm = srm_pvalue(&counts, &e.weights);
        let srm_mismatch = srm < SRM_THRESHOLD;
        let level = alpha / (arms.len() - 1).max(1) as f64;
        let tau2 = tau * tau;
        let comparisons = arms[1..]
            .iter()
            .map(|arm| {
                let seq = msprt(&stats_of(&arms[0]), &stats_of(arm), tau2, level);
                let recommendation = match &seq {
                    _ if srm_mismatch => {
                        "stop: the split is broken (sample ratio mismatch); fix assignment or logging before reading results"
                    }
                    Some(q) if q.p_value <= level && q.difference > 0.0 => "stop: better than the control",
                    Some(q) if q.p_value <= level => "stop: worse than the control",
                    _ => "continue: no difference shown yet",
                };
                Comparison {
                    arm: arm.arm.clone(),
                    against: arms[0].arm.clone(),
                    sequential: seq,
                    recommendation: recommendation.into(),
                }
            })
            .collect();
        let mut trajectory = Vec::new();
        let mut running = vec![ArmStats::default(); arms.len()];
        let step = units.len().div_ceil(80).max(1);
        for (k, (arm, mean)) in units.iter().enumerate() {
            running[*arm].add(*mean);
            if (k + 1) % step == 0 || k + 1 == units.len() {
                trajectory.push(Look {
                    units: k as u64 + 1,
                    arms: running.iter().map(|s| (s.n, (s.n > 0).then(|| s.mean()))).collect(),
                    comparisons: running[1..].iter().map(|s| msprt(&running[0], s, tau2, level)).collect(),
                });
            }
        }
        Ok(AbStatus {
            experiment: e,
            arms,
            srm_p_value: srm,
            srm_mismatch,
            alpha,
            level_per_comparison: level,
            tau,
            unit: "user (a request without a user counts as one)",
            comparisons,
            trajectory,
        })
    }
}
