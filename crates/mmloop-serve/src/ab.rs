//! Online A/B: requests for the experiment's name go to one of its arms (the base model or an
//! adapter) by a sticky hash of the user (GrowthBook's scheme, `mmloop_metrics::ab`); each
//! answered request is logged as an exposure, and `POST /v1/feedback` records how its answer
//! fared. Where the log goes is the caller's (`mmloop serve --project` writes to the project).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

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
    /// Several exposures at once (one transaction, where the log has them); by default one
    /// after the other.
    async fn exposures(&self, xs: Vec<ExposureRecord>) -> Result<(), String> {
        for x in xs {
            self.exposure(x).await?;
        }
        Ok(())
    }
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

/// Exposures on their way to the log. An answer goes out without waiting for its exposure
/// to be written (a durable write costs a disk flush, more than a gateway may add); a
/// background task writes whatever has gathered in one go, so a busy server pays one flush
/// for many requests. Feedback on a request whose exposure is still on its way waits for it,
/// so a client that answers at once finds its request. A crash loses at most the exposures
/// of the last moment, never an outcome (outcomes are written before they are acknowledged).
pub(crate) struct ExposureWriter {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<ExposureRecord>>>,
    pending: Arc<std::sync::Mutex<HashSet<String>>>,
    written: watch::Receiver<u64>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ExposureWriter {
    /// Starts the writer (inside a Tokio runtime).
    pub(crate) fn start(ab: &AbConfig) -> ExposureWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<ExposureRecord>();
        let (done, written) = watch::channel(0u64);
        let pending: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let (log, name, waiting) = (ab.log.clone(), ab.name.clone(), pending.clone());
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 4096).await > 0 {
                let ids: Vec<String> = batch.iter().map(|x| x.request_id.clone()).collect();
                let xs = std::mem::take(&mut batch);
                if let Err(e) = log.exposures(xs.clone()).await {
                    // One bad row must not cost the batch: each on its own, once more.
                    eprintln!("experiment {name}: {} exposure(s) written one by one after: {e}", ids.len());
                    for x in xs {
                        let id = x.request_id.clone();
                        if let Err(e) = log.exposure(x).await {
                            eprintln!("experiment {name}: the exposure of {id} was not recorded: {e}");
                        }
                    }
                }
                let mut w = waiting.lock().expect("pending exposures");
                ids.iter().for_each(|id| {
                    w.remove(id);
                });
                drop(w);
                done.send_modify(|n| *n += 1);
            }
        });
        ExposureWriter {
            tx: std::sync::Mutex::new(Some(tx)),
            pending,
            written,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues an exposure; it is written shortly after.
    pub(crate) fn push(&self, x: ExposureRecord) {
        let tx = self.tx.lock().expect("exposure queue");
        let Some(tx) = tx.as_ref() else {
            eprintln!(
                "experiment {}: the server is stopping; the exposure of {} was not recorded",
                x.experiment, x.request_id
            );
            return;
        };
        let id = x.request_id.clone();
        self.pending.lock().expect("pending exposures").insert(id.clone());
        if tx.send(x).is_err() {
            self.pending.lock().expect("pending exposures").remove(&id);
            eprintln!("experiment: the exposure writer has stopped; the exposure of {id} was not recorded");
        }
    }

    /// Returns once the exposure of `request_id` (if it is on its way) has been written, or
    /// after 30 s (a stalled database: the outcome then finds what it finds).
    pub(crate) async fn settled(&self, request_id: &str) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.wait_written(request_id)).await;
    }

    async fn wait_written(&self, request_id: &str) {
        let mut written = self.written.clone();
        loop {
            written.borrow_and_update();
            if !self.pending.lock().expect("pending exposures").contains(request_id) {
                return;
            }
            if written.changed().await.is_err() {
                return;
            }
        }
    }

    /// Writes what is queued and stops taking more.
    pub(crate) async fn close(&self) {
        self.tx.lock().expect("exposure queue").take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// `POST /v1/feedback {id, outcome, value?}`: accept, edit, reject, thumbs_up, thumbs_down,
/// or `value` with a number in [0, 1].
pub async fn feedback(State(s): State<Arc<Server>>, body: Body) -> Result<Response, ApiError> {
    let f: Feedback = parse_json(body)?;
    let (Some(ab), Some(writer)) = (&s.config.ab, &s.exposures) else {
        return Err(ApiError::not_found("this server runs no experiment".into(), None));
    };
    writer.settled(&f.id).await;
    ab.log.outcome(&f.id, &f.outcome, f.value).await.map_err(|(status, message)| match status {
        404 => ApiError::not_found(message, Some("id")),
        400 => ApiError::bad_request(message, Some("outcome")),
        _ => ApiError::internal(message),
    })?;
    Ok(axum::Json(json!({"id": f.id, "recorded": true})).into_response())
}
