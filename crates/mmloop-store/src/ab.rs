//! Online A/B experiments: their definition, the exposures `mmloop serve` records and the
//! outcomes clients report, each audited; and the per-arm summary `mmloop ab status` reads.

use rusqlite::{OptionalExtension, params};
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
                let tx = conn.transaction()?;
                let existing: Option<(String, String, String)> = tx
                    .query_row("SELECT seed, arms, weights FROM ab_experiments WHERE name = ?1", [&e.name], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
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
                tx.execute(
                    "INSERT INTO ab_experiments (name, seed, arms, weights, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        e.name,
                        e.seed,
                        serde_json::to_string(&e.arms).unwrap_or_default(),
                        serde_json::to_string(&e.weights).unwrap_or_default(),
                        crate::now(),
                        actor
                    ],
                )?;
                let after = serde_json::to_value(&e).unwrap_or_default();
                crate::audit::append(&tx, &actor, "ab.start", &format!("experiment:{}", e.name), None, Some(&after))?;
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
                let row: Option<(String, String, String)> = c
                    .query_row("SELECT seed, arms, weights FROM ab_experiments WHERE name = ?1", [&name], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
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
                let tx = conn.transaction()?;
                for x in &xs {
                    tx.prepare_cached(
                        "INSERT INTO ab_exposures (experiment, request_id, user_id, arm, latency_ms, prompt_tokens,
                                                   completion_tokens, confidence, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        x.experiment,
                        x.request_id,
                        x.user_id,
                        x.arm,
                        x.latency_ms,
                        x.prompt_tokens as i64,
                        x.completion_tokens as i64,
                        x.confidence,
                        crate::now()
                    ])?;
                    let after = serde_json::to_value(x).unwrap_or_default();
                    let entity = format!("experiment:{}", x.experiment);
                    crate::audit::append(&tx, "serve", "ab.exposure", &entity, None, Some(&after))?;
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
                let tx = conn.transaction()?;
                let experiment: Option<String> = tx
                    .query_row("SELECT experiment FROM ab_exposures WHERE request_id = ?1", [&request_id], |r| r.get(0))
                    .optional()?;
                let Some(experiment) = experiment else {
                    return Err(StoreError::NotFound(format!("no experiment request {request_id:?}")));
                };
                tx.execute(
                    "INSERT INTO ab_outcomes (request_id, outcome, value, created_at, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![request_id, serde_json::to_value(outcome).unwrap_or_default().as_str(), v, crate::now(), actor],
                )?;
                let after = json!({"request_id": request_id, "outcome": outcome, "value": v});
                crate::audit::append(&tx, &actor, "ab.outcome", &format!("experiment:{experiment}"), None, Some(&after))?;
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
                    let (exposures, latency, confidence): (i64, Option<f64>, Option<f64>) = c.query_row(
                        "SELECT COUNT(*), AVG(latency_ms), AVG(confidence) FROM ab_exposures WHERE experiment = ?1 AND arm = ?2",
                        params![name, arm.name],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                    let (units, outcomes): (i64, i64) = c.query_row(
                        "SELECT COUNT(DISTINCT COALESCE(user_id, request_id)),
                                (SELECT COUNT(*) FROM ab_exposures x WHERE x.experiment = ?1 AND x.arm = ?2
                                   AND EXISTS (SELECT 1 FROM ab_outcomes o WHERE o.request_id = x.request_id))
                         FROM ab_exposures WHERE experiment = ?1 AND arm = ?2",
                        params![name, arm.name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    // Each unit's mean over its requests' latest outcomes.
                    let (with, sum, sum_sq): (i64, Option<f64>, Option<f64>) = c.query_row(
                        "SELECT COUNT(*), SUM(m), SUM(m * m) FROM (
                           SELECT AVG(o.value) AS m
                           FROM ab_exposures x JOIN ab_outcomes o ON o.id =
                                (SELECT MAX(id) FROM ab_outcomes WHERE request_id = x.request_id)
                           WHERE x.experiment = ?1 AND x.arm = ?2
                           GROUP BY COALESCE(x.user_id, x.request_id))",
                        params![name, arm.name],
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
