//! Who is calling: a session cookie (browsers) or a bearer API token (scripts).
//!
//! Cookies are `HttpOnly; SameSite=Strict`, and `Secure` behind TLS. Cookie-authenticated
//! requests that change something must also carry `X-CSRF-Token` (derived from the
//! session secret, handed to the page by `/api/me` and the login answer) and may not come
//! from another origin; bearer tokens are not ambient credentials and need neither.
//! Failed logins are throttled per user name and per client address, in memory: the
//! state is about this process's attackers, persisting it would turn every failed guess
//! into a database write (the very load an attacker wants), and a restart only forgets
//! counts that an attacker cannot reset at will.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mmloop_store::review::{Permission, Session, User, UserUpdate};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::{ApiError, ApiJson};

pub const COOKIE: &str = "mmloop_session";

/// An authenticated caller.
pub struct Caller {
    pub user: User,
    /// The session secret when the caller came with a cookie.
    pub session: Option<String>,
}

impl Caller {
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.user.can(p) {
            Ok(())
        } else {
            let what = match p {
                Permission::Read => "read this project",
                Permission::Label => "label items",
                Permission::Review => "review others' work",
                Permission::ManageUsers => "manage users",
            };
            Err(ApiError::forbidden(format!("{} is a {} and may not {what}", self.user.name, self.user.role)))
        }
    }
}

/// The CSRF token of a session: a hash of its secret, so nothing more is stored.
pub fn csrf_token(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"mmloop/csrf/v1\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Refuses requests a browser marks as coming from another site, and any whose `Origin`
/// is not this server.
pub fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if h("sec-fetch-site").is_some_and(|s| s == "cross-site" || s == "same-site") {
        return Err(ApiError::forbidden("cross-site request refused"));
    }
    if let Some(origin) = h("origin") {
        let host = h("x-forwarded-host").or(h("host")).unwrap_or_default();
        let same = origin.strip_prefix("http://").or(origin.strip_prefix("https://")).is_some_and(|o| o == host);
        if !same {
            return Err(ApiError::forbidden(format!("requests from {origin} are refused")));
        }
    }
    Ok(())
}

/// Who a secret (session cookie or API token) stood for, remembered for a moment so that
/// a reviewer's burst of requests costs one lookup. Changes made through this server (log
/// out, role, disable, revoke, password) clear it at once; changes made by `mmloop user`
/// from another process take effect within `AUTH_CACHE_TTL`.
#[derive(Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, Remembered>>,
}

/// A user, when we looked them up, and when their session ends (tokens: never here).
type Remembered = (User, Instant, Option<i64>);

const AUTH_CACHE_TTL: Duration = Duration::from_secs(2);

impl AuthCache {
    fn get(&self, key: &str) -> Option<User> {
        let now_ms = mmloop_now_ms();
        let map = self.entries.lock().expect("auth cache");
        map.get(key)
            .filter(|(_, at, expires)| at.elapsed() < AUTH_CACHE_TTL && expires.is_none_or(|e| e > now_ms))
            .map(|(u, _, _)| u.clone())
    }

    fn put(&self, key: String, user: User, expires_ms: Option<i64>) {
        let mut map = self.entries.lock().expect("auth cache");
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(key, (user, Instant::now(), expires_ms));
    }

    /// Forgets everything (after any change to users, sessions or tokens).
    pub fn clear(&self) {
        self.entries.lock().expect("auth cache").clear();
    }
}

fn mmloop_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        if let Some(h) = parts.headers.get(header::AUTHORIZATION) {
            let token = h
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 256)
                .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <API token>`"))?;
            let key = format!("t:{token}");
            if let Some(user) = st.auth.get(&key) {
                return Ok(Caller { user, session: None });
            }
            let user = st
                .store
                .token_user(token)
                .await?
                .ok_or_else(|| ApiError::unauthorized("the API token is unknown, revoked or expired"))?;
            st.auth.put(key, user.clone(), None);
            return Ok(Caller { user, session: None });
        }
        let secret = cookie_value(&parts.headers, COOKIE)
            .ok_or_else(|| ApiError::unauthorized("log in first (POST /api/login), or send an API token"))?;
        let key = format!("s:{secret}");
        let session = match st.auth.get(&key) {
            Some(user) => Session { user, expires_ms: 0 },
            None => {
                let s = st
                    .store
                    .session(&secret)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("the session has expired or ended: log in again"))?;
                st.auth.put(key, s.user.clone(), Some(s.expires_ms));
                s
            }
        };
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            check_origin(&parts.headers)?;
            let sent = parts.headers.get("x-csrf-token").map(|v| v.as_bytes()).unwrap_or_default();
            if !ct_eq(sent, csrf_token(&secret).as_bytes()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "missing or wrong X-CSRF-Token header (GET /api/me gives the token)",
                ));
            }
        }
        Ok(Caller { user: session.user, session: Some(secret) })
    }
}

/// How many failed logins are allowed in a window before the name (or the address) must
/// wait.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    pub per_user: usize,
    pub per_ip: usize,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits { per_user: 5, per_ip: 50, window: Duration::from_secs(300) }
    }
}

pub struct Limiter {
    limits: LoginLimits,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Limiter {
    pub fn new(limits: LoginLimits) -> Self {
        Limiter { limits, failures: Mutex::new(HashMap::new()) }
    }

    fn keys(&self, user: &str, ip: IpAddr) -> [(String, usize); 2] {
        [(format!("u:{}", user.to_lowercase()), self.limits.per_user), (format!("ip:{ip}"), self.limits.per_ip)]
    }

    /// How long to wait when either key has used up its failures.
    fn blocked(&self, user: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter");
        let mut wait = None;
        for (key, limit) in self.keys(user, ip) {
            if let Some(q) = map.get_mut(&key) {
                while q.front().is_some_and(|t| now.duration_since(*t) >= self.limits.window) {
                    q.pop_front();
                }
                if q.len() >= limit
                    && let Some(oldest) = q.front()
                {
                    let w = self.limits.window.saturating_sub(now.duration_since(*oldest));
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        wait
    }

    fn failure(&self, user: &str, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter");
        if map.len() > 50_000 {
            let window = self.limits.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for (key, limit) in self.keys(user, ip) {
            let q = map.entry(key).or_default();
            q.push_back(now);
            while q.len() > limit {
                q.pop_front();
            }
        }
    }

    fn success(&self, user: &str) {
        self.failures.lock().expect("limiter").remove(&format!("u:{}", user.to_lowercase()));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

fn behind_tls(st: &AppState, headers: &HeaderMap) -> bool {
    st.cfg.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
        .expect("cookie is ASCII")
}

fn me_json(st: &AppState, user: &User, session: Option<&str>) -> serde_json::Value {
    json!({
        "user": user,
        "csrf": session.map(csrf_token),
        "can": {
            "label": user.can(Permission::Label),
            "review": user.can(Permission::Review),
            "manage_users": user.can(Permission::ManageUsers),
        },
        "lease_seconds": st.cfg.lease.as_secs(),
        "project": st.store.config().project.name,
    })
}

/// `POST /api/login`: starts a session (cookie) for a name and password.
pub async fn login(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    check_origin(&headers)?;
    if body.username.len() > 128 || body.password.len() > 1024 {
        return Err(ApiError::bad_request("user name or password too long"));
    }
    if let Some(wait) = st.limiter.blocked(&body.username, addr.ip()) {
        let secs = wait.as_secs().max(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed logins: try again in {secs} seconds"),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    let user = {
        let _permit = st.hash_gate.acquire().await.map_err(|_| ApiError::unauthorized("shutting down"))?;
        st.store.verify_login(&body.username, &body.password).await?
    };
    let Some(user) = user else {
        st.limiter.failure(&body.username, addr.ip());
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    st.limiter.success(&body.username);
    let ttl = st.cfg.session_ttl.as_millis() as i64;
    let secret = st.store.create_session(&user, ttl).await?;
    let mut resp = axum::Json(me_json(&st, &user, Some(&secret.secret))).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&secret.secret, st.cfg.session_ttl.as_secs() as i64, behind_tls(&st, &headers)),
    );
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `POST /api/logout`: ends the session.
pub async fn logout(State(st): State<AppState>, headers: HeaderMap, c: Caller) -> Result<Response, ApiError> {
    if let Some(s) = &c.session {
        st.store.end_session(s).await?;
    }
    st.auth.clear();
    let mut resp = axum::Json(json!({"ok": true})).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0, behind_tls(&st, &headers)));
    Ok(resp)
}

/// `GET /api/me`: who is logged in, what they may do, and the CSRF token.
pub async fn me(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let mut resp = axum::Json(me_json(&st, &c.user, c.session.as_deref())).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    current: String,
    new: String,
}

/// `POST /api/me/password`: changes one's own password (ends every session, this one too).
pub async fn change_password(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    let ok = {
        let _permit = st.hash_gate.acquire().await.map_err(|_| ApiError::unauthorized("shutting down"))?;
        st.store.verify_login(&c.user.name, &body.current).await?.is_some()
    };
    if !ok {
        return Err(ApiError::bad_request("the current password is wrong"));
    }
    let update = UserUpdate { password: Some(body.new), ..Default::default() };
    let user = st.store.update_user(&c.user.name, update, &c.user.name).await?;
    st.auth.clear();
    Ok(axum::Json(json!({"user": user, "relogin": true})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_parse_and_csrf_compares() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; mmloop_session=abc ; b=2"));
        assert_eq!(cookie_value(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&h, "zz"), None);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_ne!(csrf_token("s1"), csrf_token("s2"));
    }

    #[test]
    fn origins_are_checked() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(check_origin(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_origin(&h).is_err());
    }

    #[test]
    fn the_limiter_blocks_after_the_limit_and_forgets_on_success() {
        let l = Limiter::new(LoginLimits { per_user: 3, per_ip: 100, window: Duration::from_secs(60) });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.blocked("Alice", ip).is_none());
            l.failure("Alice", ip);
        }
        assert!(l.blocked("alice", ip).is_some(), "names are compared without case");
        assert!(l.blocked("bob", ip).is_none());
        l.success("alice");
        assert!(l.blocked("alice", ip).is_none());
    }
}
