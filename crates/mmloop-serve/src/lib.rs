//! `mmloop serve`: an OpenAI-compatible server for the embedded engine, a drop-in for the
//! clients of vLLM, SGLang and `swift deploy`.
//!
//! - `POST /v1/chat/completions`: text and image parts, sampling fields (vLLM's extras
//!   included), `n`, `stop`, `logprobs` + `top_logprobs`, streaming (SSE), `usage`; each
//!   choice also carries `mmloop: {confidence, confidence_detail, flags}` — the numbers and
//!   risk rules of `mmloop infer`.
//! - `GET /v1/models`, `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`.
//! - An online A/B experiment: requests for its name are split between arms by a sticky
//!   hash of the user; exposures and `POST /v1/feedback` outcomes go to an [`ExperimentLog`].
//!   An arm may be another OpenAI-compatible server (gateway mode: the request is proxied
//!   there, its answer scored from the returned logprobs); a server whose arms are all
//!   upstream runs without a model of its own.
//! - `GET /health`, `GET /metrics` (Prometheus text, vLLM's metric names).
//!
//! Concurrent requests share the engine's forward passes (continuous batching). The crate
//! knows nothing of projects or the review server.

mod ab;
mod chat;
mod error;
mod gateway;
mod media;
mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mmloop_engine::embedded::EmbeddedBackend;
use mmloop_engine::{AnnotatorOptions, Backend, GenParams, RuleSet, Scorer};
use serde::Deserialize;
use serde_json::json;

pub use ab::{AbConfig, Arm, ArmTarget, ExperimentLog, ExposureRecord, Upstream};
pub use error::ApiError;
pub use metrics::Metrics;

/// How the server behaves; [`ServeConfig::new`] gives vLLM's defaults where it has one.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The base model's name in `/v1/models` and the requests' `model` field.
    pub served_model_name: String,
    /// Bearer token required on `/v1/*` (`/health` and `/metrics` stay open).
    pub api_key: Option<String>,
    /// Images one request may carry.
    pub limit_mm_per_prompt: usize,
    /// `file://` image URLs are read only under this folder; without it they are refused.
    pub allowed_local_media_path: Option<PathBuf>,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
    /// One image's bytes, however it arrives.
    pub max_image_bytes: usize,
    /// Time allowed to fetch an `http(s)` image.
    pub fetch_timeout: Duration,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// Whether `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` are served (vLLM's
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
    pub runtime_lora_updating: bool,
    /// Prompt plus completion tokens allowed (`None`: the checkpoint's `max_position_embeddings`).
    pub max_model_len: Option<usize>,
    /// When not empty, `http(s)` images are fetched only from these hosts (redirects included),
    /// as vLLM's `--allowed-media-domains`.
    pub allowed_media_domains: Vec<String>,
    /// An online experiment: requests for its name are split between its arms.
    pub ab: Option<AbConfig>,
}

impl ServeConfig {
    pub fn new(served_model_name: impl Into<String>) -> ServeConfig {
        ServeConfig {
            served_model_name: served_model_name.into(),
            api_key: None,
            limit_mm_per_prompt: 8,
            allowed_local_media_path: None,
            max_body_bytes: 64 << 20,
            max_image_bytes: 20 << 20,
            fetch_timeout: Duration::from_secs(10),
            max_n: 16,
            runtime_lora_updating: false,
            max_model_len: None,
            allowed_media_domains: Vec::new(),
            ab: None,
        }
    }
}

/// What the handlers share.
pub struct Server {
    /// The model served here; `None`: a gateway whose arms are all upstream.
    pub(crate) backend: Option<Arc<EmbeddedBackend>>,
    /// The confidence and risk flags of every answer, local or proxied.
    pub(crate) scorer: Scorer,
    pub(crate) config: ServeConfig,
    pub(crate) metrics: Metrics,
    /// Fetches images.
    pub(crate) http: reqwest::Client,
    /// Talks to upstream arms: no overall timeout (answers take what they take), kept-alive
    /// connections.
    pub(crate) upstream: reqwest::Client,
    pub(crate) created: u64,
    /// The experiment's exposures on their way to its log.
    pub(crate) exposures: Option<ab::ExposureWriter>,
    /// Requests in flight per adapter: an adapter in use cannot be unloaded.
    pub(crate) adapter_uses: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// A request's hold on an adapter, released when the request ends.
pub(crate) struct AdapterUse {
    name: String,
    uses: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for AdapterUse {
    fn drop(&mut self) {
        let mut uses = self.uses.lock().expect("adapter uses");
        if let Some(n) = uses.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                uses.remove(&self.name);
            }
        }
    }
}

impl Server {
    /// A server for a loaded model (`None`: a gateway to upstream arms only); `rules` are
    /// the risk rules of the `mmloop` fields.
    pub fn new(backend: Option<Arc<EmbeddedBackend>>, rules: RuleSet, config: ServeConfig) -> Arc<Server> {
        let scorer = Scorer::new(rules, AnnotatorOptions::new(GenParams::greedy(1)));
        let domains = config.allowed_media_domains.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let allowed =
                domains.is_empty() || attempt.url().host_str().is_some_and(|h| domains.iter().any(|d| d == h));
            if attempt.previous().len() >= 3 || !allowed { attempt.stop() } else { attempt.follow() }
        });
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .redirect(redirects)
            .build()
            .expect("an HTTP client");
        let upstream = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // No byte from an upstream for this long: it hangs (streams send every token).
            .read_timeout(Duration::from_secs(600))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .expect("an HTTP client");
        Arc::new(Server {
            metrics: Metrics::new(&config.served_model_name),
            exposures: config.ab.as_ref().map(ab::ExposureWriter::start),
            backend,
            scorer,
            config,
            http,
            upstream,
            created: unix_now(),
            adapter_uses: Arc::default(),
        })
    }

    /// Queues an answered request of the experiment for its log: `tag` is its arm and user,
    /// the latency runs from `arrived` to now.
    pub(crate) fn expose(
        &self,
        tag: &chat::AbTag,
        request_id: &str,
        arrived: std::time::Instant,
        prompt_tokens: u64,
        completion_tokens: u64,
        confidence: Option<f64>,
    ) {
        let (Some(ab), Some(w)) = (&self.config.ab, &self.exposures) else { return };
        w.push(ExposureRecord {
            experiment: ab.name.clone(),
            request_id: request_id.to_string(),
            user_id: tag.user.clone(),
            arm: tag.arm.clone(),
            latency_ms: arrived.elapsed().as_secs_f64() * 1e3,
            prompt_tokens,
            completion_tokens,
            confidence,
        });
    }

    /// Writes the exposures still queued; the server takes no more. `serve` calls it when
    /// it stops.
    pub async fn close(&self) {
        if let Some(w) = &self.exposures {
            w.close().await;
        }
    }

    /// The model served here, or a 404 on a gateway that has none.
    pub(crate) fn local(&self) -> Result<&Arc<EmbeddedBackend>, ApiError> {
        self.backend.as_ref().ok_or_else(|| {
            let only = self.config.ab.as_ref().map_or(String::new(), |ab| format!("; ask for model {:?}", ab.name));
            ApiError::not_found(format!("this server is a gateway and serves no model of its own{only}"), Some("model"))
        })
    }

    /// `None`: the base model; `Some(adapter)` with a hold on it for the request's life; an
    /// error for a name that is neither.
    pub(crate) fn resolve_model(&self, model: Option<&str>) -> Result<(Option<String>, Option<AdapterUse>), ApiError> {
        let backend = self.local()?;
        match model {
            None => Ok((None, None)),
            Some(m) if m == self.config.served_model_name => Ok((None, None)),
            Some(m) => {
                let mut uses = self.adapter_uses.lock().expect("adapter uses");
                if !backend.adapters().iter().any(|(n, _)| n == m) {
                    return Err(ApiError::not_found(format!("The model `{m}` does not exist."), Some("model")));
                }
                *uses.entry(m.to_string()).or_default() += 1;
                Ok((Some(m.to_string()), Some(AdapterUse { name: m.to_string(), uses: self.adapter_uses.clone() })))
            }
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The routes, with the API key check on `/v1/*`.
pub fn router(server: Arc<Server>) -> Router {
    let mut v1 = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models))
        .route("/v1/feedback", post(ab::feedback));
    if server.config.runtime_lora_updating {
        v1 = v1
            .route("/v1/load_lora_adapter", post(load_adapter))
            .route("/v1/unload_lora_adapter", post(unload_adapter));
    }
    let v1 = v1.layer(middleware::from_fn_with_state(server.clone(), require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(|| async { axum::http::StatusCode::OK }))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::not_found("no such route".into(), None) })
        .layer(axum::extract::DefaultBodyLimit::max(server.config.max_body_bytes))
        .with_state(server)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Streamed tokens are small writes: without TCP_NODELAY each waits for the client's
    // delayed ACK (≈ 40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("TCP_NODELAY not set on a connection: {e}");
        }
    });
    let served = axum::serve(listener, router(server.clone())).with_graceful_shutdown(shutdown).await;
    server.close().await;
    served
}

async fn require_key(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.config.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let ok = given
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), key.as_bytes()));
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn models(State(s): State<Arc<Server>>) -> Response {
    let base = s.backend.as_ref().map(|_| &s.config.served_model_name);
    let mut data = Vec::new();
    if let Some(b) = &s.backend {
        data.push(json!({
            "id": base, "object": "model", "created": s.created, "owned_by": "mmloop",
            "root": b.info().resolved, "parent": null,
        }));
    }
    if let Some(ab) = &s.config.ab {
        data.push(json!({
            "id": ab.name, "object": "model", "created": s.created, "owned_by": "mmloop",
            "root": format!("experiment: {}", ab.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")),
            "parent": base,
        }));
    }
    for (name, dir) in s.backend.as_ref().map(|b| b.adapters()).unwrap_or_default() {
        data.push(json!({
            "id": name, "object": "model", "created": s.created, "owned_by": "mmloop",
            "root": dir.display().to_string(), "parent": base,
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Deserialize)]
struct LoadAdapter {
    lora_name: String,
    lora_path: Option<PathBuf>,
}

async fn load_adapter(State(s): State<Arc<Server>>, body: error::Body) -> Result<Response, ApiError> {
    let b: LoadAdapter = error::parse_json(body)?;
    let path = b.lora_path.ok_or_else(|| ApiError::bad_request("lora_path is required".into(), Some("lora_path")))?;
    if b.lora_name.is_empty() || b.lora_name == s.config.served_model_name {
        return Err(ApiError::bad_request(
            format!("{:?} cannot name an adapter: it is empty or the base model's name", b.lora_name),
            Some("lora_name"),
        ));
    }
    let backend = s.local()?;
    if backend.adapters().iter().any(|(n, _)| *n == b.lora_name) {
        return Err(ApiError::bad_request(
            format!("The lora adapter '{}' has already been loaded.", b.lora_name),
            Some("lora_name"),
        ));
    }
    backend
        .load_adapter(&b.lora_name, path)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("lora_path")))?;
    Ok(format!("Success: LoRA adapter '{}' added successfully.", b.lora_name).into_response())
}

#[derive(Deserialize)]
struct UnloadAdapter {
    lora_name: String,
}

async fn unload_adapter(State(s): State<Arc<Server>>, body: error::Body) -> Result<Response, ApiError> {
    let b: UnloadAdapter = error::parse_json(body)?;
    if let Some(ab) = &s.config.ab
        && ab.arms.iter().any(|a| a.target.adapter() == Some(b.lora_name.as_str()))
    {
        return Err(ApiError::bad_request(
            format!("The lora adapter '{}' answers an arm of experiment {:?}; it stays loaded.", b.lora_name, ab.name),
            Some("lora_name"),
        ));
    }
    let backend = s.local()?;
    // Under the lock new requests take their hold with: none can start on it meanwhile.
    let uses = s.adapter_uses.lock().expect("adapter uses");
    if let Some(n) = uses.get(&b.lora_name) {
        return Err(ApiError::bad_request(
            format!("The lora adapter '{}' is in use by {n} request(s); unload it when they are done.", b.lora_name),
            Some("lora_name"),
        ));
    }
    backend.unload_adapter(&b.lora_name).map_err(|_| {
        ApiError::not_found(format!("The lora adapter '{}' cannot be found.", b.lora_name), Some("lora_name"))
    })?;
    Ok(format!("Success: LoRA adapter '{}' removed successfully.", b.lora_name).into_response())
}

async fn metrics_text(State(s): State<Arc<Server>>) -> Response {
    let (running, waiting) = s.backend.as_ref().map_or((0, 0), |b| {
        let stats = b.engine().stats();
        (
            stats.running.load(std::sync::atomic::Ordering::SeqCst),
            stats.waiting.load(std::sync::atomic::Ordering::SeqCst),
        )
    });
    let waiting = waiting + s.metrics.preparing();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render(running, waiting))
        .into_response()
}
