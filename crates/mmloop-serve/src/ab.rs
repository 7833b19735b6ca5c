//! Online A/B: requests for the experiment's name go to one of its arms (the base model or an
//! adapter) by a sticky hash of the user (GrowthBook's scheme, `mmloop_metrics::ab`); each
//! answered request is logged as an exposure, and `POST /v1/feedback` records how its answer
//! fared. Where the log goes is the caller's (`mmloop serve --project` writes to the project).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::Server;
use crate::error::{ApiError, Body, parse_json};

/// An answered request of the experiment.
#[derive(Clone, Debug)]
pub struct ExposureRecord {
    pub experiment: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub arm: String,
    pub latency_ms: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub confidence: Option<f64>,
}

/// Where exposures and outcomes are kept.
#[async_trait::async_trait]
pub trait ExperimentLog: Send + Sync {
    async fn exposure(&self, x: ExposureRecord) -> Result<(), String>;
    /// `Err((status, message))`: 404 for an unknown request, 400 for a bad outcome, 500 when
    /// it could not be kept.
    async fn outcome(&self, request_id: &str, outcome: &str, value: Option<f64>) -> Result<(), (u16, String)>;
}

#[derive(Clone)]
pub struct AbConfig {
    /// The experiment's name: requests naming it as their model are split.
    pub name: String,
    /// The assignment hash's salt.
    pub seed: String,
    /// (arm name, adapter answering it; `None`: the base model).
    pub arms: Vec<(String, Option<String>)>,
    /// Summing to 1, one per arm.
    pub weights: Vec<f64>,
    pub log: Arc<dyn ExperimentLog>,
}

impl std::fmt::Debug for AbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbConfig").field("name", &self.name).field("arms", &self.arms).finish()
    }
}

impl AbConfig {
    /// The arm of a request: by the user's hash when a user is named, else at random.
    pub fn arm_for(&self, user: Option<&str>) -> usize {
        let by_hash = match user {
            Some(u) => mmloop_metrics::ab::assign(&self.seed, u, &self.weights),
            None => mmloop_metrics::ab::assign(
                &self.seed,
                &format!("request-{:032x}", rand::random::<u128>()),
                &self.weights,
            ),
        };
        by_hash.unwrap_or(self.arms.len() - 1)
    }
}

#[derive(Deserialize)]
struct Feedback {
    id: String,
    outcome: String,
    #[serde(default)]
    value: Option<f64>,
}

/// `POST /v1/feedback {id, outcome, value?}`: accept, edit, reject, thumbs_up, thumbs_down,
/// or `value` with a number in [0, 1].
pub async fn feedback(State(s): State<Arc<Server>>, body: Body) -> Result<Response, ApiError> {
    let f: Feedback = parse_json(body)?;
    let Some(ab) = &s.config.ab else {
        return Err(ApiError::not_found("this server runs no experiment".into(), None));
    };
    ab.log.outcome(&f.id, &f.outcome, f.value).await.map_err(|(status, message)| match status {
        404 => ApiError::not_found(message, Some("id")),
        400 => ApiError::bad_request(message, Some("outcome")),
        _ => ApiError::internal(message),
    })?;
    Ok(axum::Json(json!({"id": f.id, "recorded": true})).into_response())
}
