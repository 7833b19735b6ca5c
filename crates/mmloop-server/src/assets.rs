//! The review UI: plain HTML, CSS and ES modules compiled into the binary (works offline,
//! nothing from a CDN). Assets are public; the review page itself needs a session and
//! sends everyone else to the login page. Every answer carries a strict Content Security
//! Policy (scripts and styles only from this server, no inline script), so even a missed
//! escape could not run injected code.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{COOKIE, cookie_value};
use crate::error::{ApiError, ApiPath};

/// (name, content type, bytes) of every file the UI is made of.
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("login.html", "text/html; charset=utf-8", include_str!("../assets/login.html")),
    ("index.html", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../assets/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../assets/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../assets/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../assets/dom.js")),
    ("review.js", "text/javascript; charset=utf-8", include_str!("../assets/review.js")),
    ("viewer.js", "text/javascript; charset=utf-8", include_str!("../assets/viewer.js")),
    ("stats.js", "text/javascript; charset=utf-8", include_str!("../assets/stats.js")),
    ("experiments.js", "text/javascript; charset=utf-8", include_str!("../assets/experiments.js")),
    ("users.js", "text/javascript; charset=utf-8", include_str!("../assets/users.js")),
    ("login.js", "text/javascript; charset=utf-8", include_str!("../assets/login.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../assets/favicon.svg")),
];

fn etags() -> &'static Vec<String> {
    static E: OnceLock<Vec<String>> = OnceLock::new();
    E.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| format!("\"{}\"", &hex::encode(Sha256::digest(body.as_bytes()))[..16]))
            .collect()
    })
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let (_, mime, body) = ASSETS[i];
    let etag = &etags()[i];
    let revalidate = HeaderValue::from_static("no-cache");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())], [(header::CACHE_CONTROL, revalidate)])
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(mime)), (header::CACHE_CONTROL, revalidate)],
        [(header::ETAG, etag.clone())],
        body,
    )
        .into_response()
}

fn index_of(name: &str) -> Option<usize> {
    ASSETS.iter().position(|(n, _, _)| *n == name)
}

/// `GET /assets/{file}`: only names in the table above; nothing is read from disk.
pub async fn asset(headers: HeaderMap, ApiPath(file): ApiPath<String>) -> Result<Response, ApiError> {
    match index_of(&file).filter(|_| !file.ends_with(".html")) {
        Some(i) => Ok(serve(i, &headers)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no asset {file:?}"))),
    }
}

pub async fn login_page(headers: HeaderMap) -> Response {
    serve(index_of("login.html").expect("login page"), &headers)
}

/// `/`, `/stats`, `/users`: the app, for someone with a session; others go to log in.
pub async fn review_page(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let live = match cookie_value(&headers, COOKIE) {
        Some(s) => st.store.session(&s).await?.is_some(),
        None => false,
    };
    if !live {
        return Ok(Redirect::to("/login").into_response());
    }
    Ok(serve(index_of("index.html").expect("index page"), &headers))
}

/// Headers every answer carries.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    resp
}
