//! Errors as HTTP answers: every failure is a status code and a JSON body
//! `{"error": code, "message": text}` a script can act on. Bad input (too large, not JSON,
//! wrong fields, unknown ids) is a 4xx; a 500 means a bug or a broken disk, never the
//! client's fault. Extractor wrappers here turn axum's plain-text rejections into the same
//! JSON shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mmloop_store::{ReviewError, StoreError};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// More fields for the body (e.g. `current` for a conflict).
    pub extra: Vec<(&'static str, Value)>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), extra: Vec::new(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn with(mut self, key: &'static str, v: Value) -> Self {
        self.extra.push((key, v));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            eprintln!("mmloop review: {} {}", self.status, self.message);
        }
        let mut body = json!({"error": self.code, "message": self.message});
        for (k, v) in self.extra {
            body[k] = v;
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<ReviewError> for ApiError {
    fn from(e: ReviewError) -> Self {
        let msg = e.to_string();
        match e {
            ReviewError::BadRequest(_) => ApiError::bad_request(msg),
            ReviewError::Forbidden(_) => ApiError::forbidden(msg),
            ReviewError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
            ReviewError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "exists", msg),
            ReviewError::Leased { item, user, seconds_left } => ApiError::new(StatusCode::CONFLICT, "leased", msg)
                .with("lease", json!({"item_id": item, "user": user, "seconds_left": seconds_left})),
            ReviewError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ItemNotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("item {id} not found"))
            }
            StoreError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "closed", "the server is shutting down")
            }
            e if e.is_busy() => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the project's database is busy (another mmloop process, such as an import, is writing): nothing was saved\n  hint: try again in a moment",
                );
                a.retry_after = Some(2);
                a
            }
            StoreError::Image { ref source, .. } => {
                let (status, code) = match source {
                    mmloop_store::ImageError::Missing(_) => (StatusCode::NOT_FOUND, "image_missing"),
                    _ => (StatusCode::CONFLICT, "image_changed"),
                };
                let hint = source.hint().map(|h| format!("\n  hint: {h}")).unwrap_or_default();
                ApiError::new(status, code, format!("{e}{hint}"))
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
        }
    }
}

/// `axum::Json` whose rejections are JSON errors (400 bad JSON, 415 wrong content type,
/// 413 too large, 422 wrong fields).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ => "bad_json",
    };
    let status = if status.is_client_error() { status } else { StatusCode::BAD_REQUEST };
    ApiError::new(status, code, r.body_text())
}

/// `axum::extract::Path` with JSON rejections (400 for an id that is not a number).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    let status = if r.status().is_client_error() { r.status() } else { StatusCode::BAD_REQUEST };
    ApiError::new(status, "bad_path", r.body_text())
}

/// `axum::extract::Query` with JSON rejections.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such page or API route: {}", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A handler panicked: answer 500 in JSON instead of dropping the connection.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error (a bug: please report it)")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_database_is_503_with_retry_after_not_500() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error { code: rusqlite::ErrorCode::DatabaseBusy, extended_code: 5 },
            Some("database is locked".into()),
        );
        let e: ApiError = StoreError::Sqlite(busy).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "busy");
        let resp = e.into_response();
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "2");
        let other: ApiError = StoreError::Internal("boom".into()).into();
        assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
