//! The REST API handlers: extract, check the caller's permission, call the store, shape
//! the answer. Items leave here without the server's file paths: images are named by id
//! and fetched from `/api/images/{id}`.

use std::time::{Duration, Instant};

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mmloop_store::SaveOutcome;
use mmloop_store::review::{Permission, Role};

use crate::requests::{DecisionIn, QueueQuery, UserUpdateIn};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::views::ReviewItemOut;

const OPENAPI: &str = include_str!("openapi.json");

/// Audit events as the API shows them: what the server's disk looks like stays on the
/// server. Absolute paths become file names and recorded command lines are left out (the
/// full record stays in the database, where `mmloop audit log` reads it).
fn public_events(events: Vec<mmloop_store::AuditEvent>) -> Vec<mmloop_store::AuditEvent> {
    fn clean(v: &mut Value) {
        match v {
            Value::String(s) => {
                let p = std::path::Path::new(s.as_str());
                if p.is_absolute()
                    && let Some(name) = p.file_name()
                {
                    *s = name.to_string_lossy().into_owned();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(clean),
            Value::Object(o) => {
                o.shift_remove("command");
                o.values_mut().for_each(clean);
            }
            _ => {}
        }
    }
    events
        .into_iter()
        .map(|mut e| {
            for v in [&mut e.before, &mut e.after].into_iter().flatten() {
                clean(v);
            }
            e
        })
        .collect()
}

fn saved(out: SaveOutcome) -> Response {
    match out {
        SaveOutcome::Saved { label } => axum::Json(json!({"label": label})).into_response(),
        SaveOutcome::Conflict { current } => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the item changed since you loaded it: nothing was saved\n  hint: look at the current label and decide again",
        )
        .with("current", json!(current))
        .into_response(),
    }
}

pub async fn openapi(c: Caller) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}

/// `POST /api/items/next`: the next item for the caller, leased (a write, so a POST with
/// the CSRF check); 204 when none is left.
pub async fn next_item(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(filter): ApiQuery<QueueQuery>,
) -> Result<Response, ApiError> {
    c.require(Permission::Label)?;
    match st.store.next_item(&c.user, &filter.into(), st.lease_ms()).await? {
        Some(item) => Ok(axum::Json(ReviewItemOut::from(&item)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(flatten)]
    filter: QueueQuery,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/items`: items in id order, for browsing.
pub async fn list_items(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let items = st.store.list_items(&q.filter.into(), q.after.unwrap_or(0), q.limit.unwrap_or(50)).await?;
    Ok(axum::Json(json!({"items": items})).into_response())
}

pub async fn get_item(State(st): State<AppState>, c: Caller, ApiPath(id): ApiPath<i64>) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let item = st.store.review_item(id).await?;
    Ok(axum::Json(ReviewItemOut::from(&item)).into_response())
}

/// `GET /api/items/{id}/history`: every label the item had and its audit events.
pub async fn item_history(
    State(st): State<AppState>,
    c: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let labels = st.store.item_labels(id).await?;
    let events = st.store.audit_log(Some(format!("item:{id}")), 200).await?;
    Ok(axum::Json(json!({"labels": labels, "events": public_events(events)})).into_response())
}

pub async fn lease(State(st): State<AppState>, c: Caller, ApiPath(id): ApiPath<i64>) -> Result<Response, ApiError> {
    c.require(Permission::Label)?;
    let lease = st.store.lease_item(id, &c.user, st.lease_ms()).await?;
    Ok(axum::Json(json!({"lease": lease})).into_response())
}

pub async fn release(State(st): State<AppState>, c: Caller, ApiPath(id): ApiPath<i64>) -> Result<Response, ApiError> {
    c.require(Permission::Label)?;
    st.store.release_item(id, &c.user).await?;
    Ok(axum::Json(json!({"released": id})).into_response())
}

/// `POST /api/items/{id}/decision`: accept, edit, reject or skip; 409 when stale.
pub async fn decide(
    State(st): State<AppState>,
    c: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(d): ApiJson<DecisionIn>,
) -> Result<Response, ApiError> {
    c.require(Permission::Label)?;
    Ok(saved(st.store.decide(id, &c.user, d.into()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndoBody {
    base: Option<i64>,
}

/// `POST /api/items/{id}/undo`: restores the label before the current one.
pub async fn undo(
    State(st): State<AppState>,
    c: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(b): ApiJson<UndoBody>,
) -> Result<Response, ApiError> {
    c.require(Permission::Label)?;
    Ok(saved(st.store.undo(id, &c.user, b.base, st.lease_ms()).await?))
}

/// `GET /api/images/{id}`: the bytes of one image of the project's image table. The
/// content never changes under an id (images are content-addressed), so it is cacheable
/// for good, privately (it needs a login).
pub async fn image(
    State(st): State<AppState>,
    c: Caller,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("image {id} not found"));
    let etag_of = |sha: &mmloop_core::Digest| format!("\"{}\"", sha.to_hex());
    let cache = HeaderValue::from_static("private, max-age=31536000, immutable");
    // A revalidation needs no bytes: the id names the content for good.
    if let Some(tags) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let img = st.store.image(id).await?.ok_or_else(not_found)?;
        let etag = etag_of(&img.sha256);
        if tags.split(',').any(|t| t.trim() == etag) {
            return Ok(
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)], [(header::CACHE_CONTROL, cache)]).into_response()
            );
        }
    }
    let (img, bytes) = st.store.image_bytes(id).await?.ok_or_else(not_found)?;
    let etag = etag_of(&img.sha256);
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(img.mime()));
    h.insert(header::CACHE_CONTROL, cache);
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex etag"));
    Ok(resp)
}

pub async fn stats(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let s = st.store.review_stats().await?;
    let routing = st.store.routing_stats().await?;
    let training: Vec<Value> = st.store.runs(Some("train")).await?.iter().take(20).map(training_run).collect();
    Ok(axum::Json(
        json!({"project": st.store.config().project.name, "stats": s, "routing": routing, "training": training}),
    )
    .into_response())
}

/// A training run as the stats page lists it: what it trained on, how far, how well.
fn training_run(r: &mmloop_store::RunView) -> Value {
    let summary = r.summary.clone().unwrap_or(Value::Null);
    let last = |key: &str| summary[key].as_array().and_then(|a| a.last()).and_then(|p| p.get(1)).cloned();
    json!({
        "run": r.id,
        "status": r.status.as_str(),
        "actor": r.actor,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "engine": r.config.get("engine").cloned().unwrap_or(json!("mmloop")),
        "model": r.config.get("model").cloned(),
        "version": r.config.get("version").cloned(),
        "split": r.config.get("split").cloned(),
        "examples": r.config.get("examples").cloned(),
        "global_step": summary.get("global_step").cloned(),
        "max_steps": summary.get("max_steps").cloned(),
        "loss": last("losses"),
        "eval_loss": last("eval_losses"),
        "checkpoint": summary.get("last_model_checkpoint").cloned(),
    })
}

/// `GET /api/facets`: the values the filters can take (cached for half a minute: the
/// queries scan the project).
pub async fn facets(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let cached = st
        .facets
        .lock()
        .expect("facets")
        .as_ref()
        .filter(|(t, _)| t.elapsed() < Duration::from_secs(30))
        .map(|(_, f)| f.clone());
    let f = match cached {
        Some(f) => f,
        None => {
            let f = st.store.review_facets().await?;
            *st.facets.lock().expect("facets") = Some((Instant::now(), f.clone()));
            f
        }
    };
    Ok(axum::Json(f).into_response())
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    entity: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/audit`: recent audit events (reviewers and admins).
pub async fn audit(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    c.require(Permission::Review)?;
    let events = st.store.audit_log(q.entity.filter(|e| !e.is_empty()), q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(axum::Json(json!({"events": public_events(events)})).into_response())
}

pub async fn list_users(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.require(Permission::ManageUsers)?;
    Ok(axum::Json(json!({"users": st.store.users().await?})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: Role,
    #[serde(default)]
    password: Option<String>,
}

pub async fn add_user(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(u): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    c.require(Permission::ManageUsers)?;
    let user = st.store.create_user(&u.name, u.role, u.password.as_deref(), &c.user.name).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"user": user}))).into_response())
}

pub async fn update_user(
    State(st): State<AppState>,
    c: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(u): ApiJson<UserUpdateIn>,
) -> Result<Response, ApiError> {
    c.require(Permission::ManageUsers)?;
    let user = st.store.update_user(&name, u.into(), &c.user.name).await;
    st.auth.clear();
    Ok(axum::Json(json!({"user": user?})).into_response())
}

#[derive(Deserialize)]
pub struct TokensQuery {
    #[serde(default)]
    all: Option<bool>,
}

/// `GET /api/tokens`: the caller's API tokens (`?all=true`: everyone's, admins only).
pub async fn list_tokens(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<TokensQuery>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let all = q.all.unwrap_or(false);
    if all {
        c.require(Permission::ManageUsers)?;
    }
    let tokens = st.store.tokens(if all { None } else { Some(&c.user.name) }).await?;
    Ok(axum::Json(json!({"tokens": tokens})).into_response())
}

/// How long an API token lives when the request does not say.
pub const DEFAULT_TOKEN_DAYS: u32 = 90;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    /// The caller's own password, asked again: a stolen session alone cannot mint a
    /// lasting credential.
    password: String,
    #[serde(default)]
    expires_days: Option<u32>,
    /// Make it for another user (admins only).
    #[serde(default)]
    user: Option<String>,
}

/// `POST /api/tokens`: a new API token, shown once; it expires (90 days unless asked
/// otherwise, at most 10 years) and needs the caller's password again.
pub async fn add_token(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    c: Caller,
    ApiJson(t): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let owner = t.user.unwrap_or_else(|| c.user.name.clone());
    if owner != c.user.name {
        c.require(Permission::ManageUsers)?;
    }
    let days = match t.expires_days.unwrap_or(DEFAULT_TOKEN_DAYS) {
        0 => return Err(ApiError::bad_request("expires_days must be at least 1")),
        d if d > 3650 => return Err(ApiError::bad_request("expires_days is at most 3650")),
        d => d,
    };
    crate::auth::confirm_password(&st, &c, addr, &headers, &t.password).await?;
    let expires = Some(now_ms() + days as i64 * 86_400_000);
    let (info, secret) = st.store.create_token(&owner, &t.name, expires, &c.user.name).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"token": secret.secret, "info": info}))).into_response())
}

pub async fn revoke_token(
    State(st): State<AppState>,
    c: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let info = st.store.revoke_token(id, &c.user).await;
    st.auth.clear();
    let info = info?;
    Ok(axum::Json(json!({"info": info})).into_response())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `GET /api/experiments`: the project's online experiments (`mmloop serve --experiment`).
pub async fn experiments(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    Ok(axum::Json(json!({"experiments": st.store.ab_experiments().await?})).into_response())
}

#[derive(Deserialize)]
pub struct ExperimentQuery {
    #[serde(default = "default_alpha")]
    alpha: f64,
    #[serde(default = "default_tau")]
    tau: f64,
}

fn default_alpha() -> f64 {
    0.05
}

fn default_tau() -> f64 {
    0.02
}

/// `GET /api/experiments/{name}`: what `mmloop ab status` says, with its two plots as SVG
/// documents (the page shows them as images: no markup is parsed into the page).
pub async fn experiment(
    State(st): State<AppState>,
    c: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExperimentQuery>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let status = st.store.ab_status(&name, q.alpha, q.tau).await.map_err(|e| match e {
        mmloop_store::StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
        mmloop_store::StoreError::Config(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
        other => other.into(),
    })?;
    let plots = json!({"rates": crate::ab_report::rates_plot(&status),
                       "difference": crate::ab_report::difference_plot(&status)});
    Ok(axum::Json(json!({"status": status, "plots": plots})).into_response())
}
