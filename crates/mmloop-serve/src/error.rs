//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the
//! HTTP status an OpenAI client maps to its exception classes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: String, param: Option<&'static str>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, kind: "BadRequestError", message, param }
    }

    pub fn not_found(message: String, param: Option<&'static str>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, kind: "NotFoundError", message, param }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "AuthenticationError",
            message: "a valid API key is required: Authorization: Bearer <key>".into(),
            param: None,
        }
    }

    pub fn internal(message: String) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, kind: "InternalServerError", message, param: None }
    }

    /// An upstream arm that could not be reached or answered nonsense.
    pub fn bad_gateway(message: String) -> ApiError {
        ApiError { status: StatusCode::BAD_GATEWAY, kind: "BadGatewayError", message, param: None }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status.as_u16()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A request body as it arrived: its bytes, or why they could not be read (too large).
pub type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// A JSON body, or a 4xx that says what is wrong with it.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError {
        status: e.status(),
        kind: if e.status() == StatusCode::PAYLOAD_TOO_LARGE { "RequestTooLargeError" } else { "BadRequestError" },
        message: e.body_text(),
        param: None,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
}

/// An engine error as the client should see it: its own request's fault (4xx) or ours.
pub fn engine_error(e: mmloop_engine::EngineError) -> ApiError {
    use mmloop_engine::EngineError as E;
    match e {
        E::Image { .. } | E::Config(_) | E::Unsupported(_) => ApiError::bad_request(e.to_string(), None),
        other => ApiError::internal(other.to_string()),
    }
}
