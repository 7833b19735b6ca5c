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

/// Who answers an arm's requests.
#[derive(Clone, Debug, PartialEq)]
pub enum ArmTarget {
    /// This server's model: its base (`None`) or one of its adapters.
    Local(Option<String>),
    /// Another OpenAI-compatible server (vLLM, SGLang, another `mmloop serve`): requests are
    /// proxied there (gateway mode).
    Upstream(Upstream),
}

/// An OpenAI-compatible server an arm's requests are proxied to.
#[derive(Clone, PartialEq)]
pub struct Upstream {
    /// Its `/chat/completions` URL.
    pub chat_url: String,
    /// The model name it serves the arm under.
    pub model: String,
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Upstream").field("chat_url", &self.chat_url).field("model", &self.model).finish()
    }
}

impl ArmTarget {
    /// The adapter of a local arm.
    pub fn adapter(&self) -> Option<&str> {
        match self {
            ArmTarget::Local(a) => a.as_deref(),
            ArmTarget::Upstream(_) => None,
        }
    }
}

/// One arm of an experiment.
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    pub target: ArmTarget,
}

#[derive(Clone)]
pub struct AbConfig {
    /// The experiment's name: requests naming it as their model are split.
    pub name: String,
    /// The assignment hash's salt.
    pub seed: String,
    pub arms: Vec<Arm>,
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

/// Keeps an exposure; a failure is logged, never the client's error (the answer was given).
pub(crate) async fn expose(ab: &AbConfig, x: ExposureRecord) {
    let id = x.request_id.clone();
    if let Err(e) = ab.log.exposure(x).await {
        eprintln!("experiment {}: the exposure of {id} was not recorded: {e}", ab.name);
    }
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
