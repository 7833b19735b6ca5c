//! The mmloop review server: the REST API (documented at `/api/openapi.json`), accounts
//! with sessions, CSRF protection, API tokens and login throttling, and the review UI
//! (plain HTML, CSS and ES modules embedded in the binary, no CDN).
//!
//! Handlers are thin: they extract the request, call the store, and map its errors to
//! status codes. This crate holds no SQL and no model code, never serves a file named by
//! a request (images come from the store's image table by id), and never answers a
//! request other than the login page and static assets without a session or an API token.

pub mod ab_report;
mod api;
mod assets;
mod auth;
mod error;
pub mod requests;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use mmloop_store::Store;
use mmloop_store::review::Facets;

pub use auth::LoginLimits;
pub use error::ApiError;

/// How the server behaves; the defaults suit a team on one machine.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How long an item handed out stays with its reviewer without a renewal.
    pub lease: Duration,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Mark cookies `Secure` always (they are also when a proxy says
    /// `X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// Largest request body accepted.
    pub body_limit: usize,
    pub login_limits: LoginLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for login throttling);
    /// from anyone else the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            lease: Duration::from_secs(300),
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookies: false,
            body_limit: 256 * 1024,
            login_limits: LoginLimits::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub cfg: Arc<ServerConfig>,
    pub limiter: Arc<auth::Limiter>,
    /// Password hashing is deliberately slow: at most two at a time.
    pub hash_gate: Arc<tokio::sync::Semaphore>,
    pub facets: Arc<Mutex<Option<(Instant, Facets)>>>,
    pub auth: Arc<auth::AuthCache>,
}

impl AppState {
    pub fn lease_ms(&self) -> i64 {
        self.cfg.lease.as_millis() as i64
    }
}

/// The whole application: API routes, pages and assets.
pub fn router(store: Store, cfg: ServerConfig) -> Router {
    let state = AppState {
        store,
        limiter: Arc::new(auth::Limiter::new(cfg.login_limits.clone())),
        cfg: Arc::new(cfg.clone()),
        hash_gate: Arc::new(tokio::sync::Semaphore::new(2)),
        facets: Arc::new(Mutex::new(None)),
        auth: Arc::new(auth::AuthCache::default()),
    };
    let api = Router::new()
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/me", get(auth::me))
        .route("/me/password", post(auth::change_password))
        .route("/openapi.json", get(api::openapi))
        .route("/items", get(api::list_items))
        .route("/items/next", post(api::next_item))
        .route("/items/{id}", get(api::get_item))
        .route("/items/{id}/history", get(api::item_history))
        .route("/items/{id}/lease", post(api::lease).delete(api::release))
        .route("/items/{id}/decision", post(api::decide))
        .route("/items/{id}/undo", post(api::undo))
        .route("/images/{id}", get(api::image))
        .route("/stats", get(api::stats))
        .route("/experiments", get(api::experiments))
        .route("/experiments/{name}", get(api::experiment))
        .route("/facets", get(api::facets))
        .route("/audit", get(api::audit))
        .route("/users", get(api::list_users).post(api::add_user))
        .route("/users/{name}", axum::routing::patch(api::update_user))
        .route("/tokens", get(api::list_tokens).post(api::add_token))
        .route("/tokens/{id}", axum::routing::delete(api::revoke_token))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed);
    Router::new()
        .nest("/api", api)
        .route("/", get(assets::review_page))
        .route("/stats", get(assets::review_page))
        .route("/experiments", get(assets::review_page))
        .route("/users", get(assets::review_page))
        .route("/login", get(assets::login_page))
        .route("/assets/{file}", get(assets::asset))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(cfg.body_limit))
        .layer(axum::middleware::map_response(assets::security_headers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panic_response))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    store: Store,
    listener: tokio::net::TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(store, cfg);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives right after the server announced its
/// URL still shuts it down gracefully.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
