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

/// How password guesses are throttled. Attempts are counted when they start (before the
/// slow password check), so parallel guesses cannot slip past the limit.
///
/// - per user name *and* address: `per_user_ip` attempts in `window`, then 429 until the
///   oldest leaves the window — an attacker only locks themselves out;
/// - per address, any name: `per_ip` attempts in `window`, then 429;
/// - per user name, any address: past `per_user` attempts in `window` every further
///   attempt is slowed down (a delay doubling from 250 ms up to `max_delay`) but never
///   refused, so guessing from many addresses stays slow while the real user still gets in.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    pub per_user_ip: usize,
    pub per_ip: usize,
    pub per_user: usize,
    pub window: Duration,
    pub max_delay: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_user_ip: 5,
            per_ip: 50,
            per_user: 10,
            window: Duration::from_secs(300),
            max_delay: Duration::from_secs(2),
        }
    }
}

pub struct Limiter {
    limits: LoginLimits,
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// An attempt let through: how long to slow it down, and the keys it was counted under.
pub struct Attempt {
    pub delay: Duration,
    user: String,
    pair: String,
    ip: String,
}

impl Limiter {
    pub fn new(limits: LoginLimits) -> Self {
        Limiter { limits, attempts: Mutex::new(HashMap::new()) }
    }

    /// Counts an attempt for `user` from `ip` now, or says how long to wait.
    pub fn begin(&self, user: &str, ip: IpAddr) -> Result<Attempt, Duration> {
        let now = Instant::now();
        let window = self.limits.window;
        let name = user.to_lowercase();
        let (user_key, pair_key, ip_key) = (format!("u:{name}"), format!("p:{name}@{ip}"), format!("ip:{ip}"));
        let mut map = self.attempts.lock().expect("limiter");
        if map.len() > 50_000 {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let mut live = |key: &str| -> (usize, Option<Instant>) {
            let q = map.entry(key.to_string()).or_default();
            while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                q.pop_front();
            }
            (q.len(), q.front().copied())
        };
        let mut wait: Option<Duration> = None;
        for (key, limit) in [(&pair_key, self.limits.per_user_ip), (&ip_key, self.limits.per_ip)] {
            let (n, oldest) = live(key);
            if n >= limit
                && let Some(oldest) = oldest
            {
                let w = window.saturating_sub(now.duration_since(oldest)).max(Duration::from_secs(1));
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        let (n_user, _) = live(&user_key);
        let over = n_user.saturating_sub(self.limits.per_user.saturating_sub(1));
        let delay = if over == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(250u64.saturating_mul(1 << (over - 1).min(16))).min(self.limits.max_delay)
        };
        for key in [&user_key, &pair_key, &ip_key] {
            let q = map.entry(key.clone()).or_default();
            q.push_back(now);
            // Nothing past the largest limit is ever looked at.
            let cap = self.limits.per_ip.max(self.limits.per_user_ip).max(self.limits.per_user) + 1;
            while q.len() > cap {
                q.pop_front();
            }
        }
        Ok(Attempt { delay, user: user_key, pair: pair_key, ip: ip_key })
    }

    /// A correct password: this user's attempts (from everywhere) are forgotten, and this
    /// one no longer counts against the address (many people may share one).
    pub fn succeeded(&self, a: Attempt) {
        let mut map = self.attempts.lock().expect("limiter");
        map.remove(&a.user);
        map.remove(&a.pair);
        if let Some(q) = map.get_mut(&a.ip) {
            q.pop_back();
        }
    }

    /// Refuses an attempt over the limits with 429 and `Retry-After`.
    pub fn check(&self, user: &str, ip: IpAddr) -> Result<Attempt, ApiError> {
        self.begin(user, ip).map_err(|wait| {
            let secs = wait.as_secs().max(1);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many failed attempts: try again in {secs} seconds"),
            );
            e.retry_after = Some(secs);
            e
        })
    }
}

/// The client's address: the peer, or — only when the peer is one of the trusted proxies —
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.into_iter().rev().find(|ip| !trusted.contains(ip)).unwrap_or(peer)
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
    let ip = client_ip(addr.ip(), &headers, &st.cfg.trusted_proxies);
    let attempt = st.limiter.check(&body.username, ip)?;
    if !attempt.delay.is_zero() {
        tokio::time::sleep(attempt.delay).await;
    }
    let user = {
        let _permit = st.hash_gate.acquire().await.map_err(|_| ApiError::unauthorized("shutting down"))?;
        st.store.verify_login(&body.username, &body.password).await?
    };
    let Some(user) = user else {
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    st.limiter.succeeded(attempt);
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

/// Checks the caller's own password again (before changing it or minting a token),
/// throttled like logins.
pub async fn confirm_password(
    st: &AppState,
    c: &Caller,
    addr: SocketAddr,
    headers: &HeaderMap,
    password: &str,
) -> Result<(), ApiError> {
    let ip = client_ip(addr.ip(), headers, &st.cfg.trusted_proxies);
    let attempt = st.limiter.check(&c.user.name, ip)?;
    if !attempt.delay.is_zero() {
        tokio::time::sleep(attempt.delay).await;
    }
    let ok = {
        let _permit = st.hash_gate.acquire().await.map_err(|_| ApiError::unauthorized("shutting down"))?;
        password.len() <= 1024 && st.store.verify_login(&c.user.name, password).await?.is_some()
    };
    if !ok {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong_password", "the current password is wrong"));
    }
    st.limiter.succeeded(attempt);
    Ok(())
}

/// `POST /api/me/password`: changes one's own password (ends every session and revokes
/// every API token of the user, this session too).
pub async fn change_password(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    c: Caller,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Response, ApiError> {
    c.require(Permission::Read)?;
    confirm_password(&st, &c, addr, &headers, &body.current).await?;
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

    fn limits() -> LoginLimits {
        LoginLimits {
            per_user_ip: 3,
            per_ip: 100,
            per_user: 4,
            window: Duration::from_secs(60),
            max_delay: Duration::from_secs(2),
        }
    }

    #[test]
    fn attempts_count_when_they_start() {
        let l = Limiter::new(limits());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // Three attempts in flight at once (none finished): the fourth is refused.
        let held: Vec<Attempt> = (0..3).map(|_| l.begin("Alice", ip).unwrap()).collect();
        assert!(l.begin("alice", ip).is_err(), "names are compared without case");
        assert!(l.begin("bob", ip).is_ok());
        l.succeeded(held.into_iter().next().unwrap());
        assert!(l.begin("alice", ip).is_ok(), "a success forgets the user's attempts");
    }

    #[test]
    fn successful_logins_do_not_use_up_the_address() {
        let l = Limiter::new(LoginLimits { per_ip: 3, ..limits() });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..10 {
            let a = l.begin(&format!("user{i}"), ip).unwrap();
            l.succeeded(a);
        }
        assert!(l.begin("someone", ip).is_ok());
    }

    #[test]
    fn other_addresses_are_slowed_down_not_locked_out() {
        let l = Limiter::new(limits());
        let attacker: IpAddr = "10.0.0.66".parse().unwrap();
        let admin: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            l.begin("admin", attacker).unwrap();
        }
        assert!(l.begin("admin", attacker).is_err());
        // The real admin from elsewhere is let through, at first without delay.
        assert_eq!(l.begin("admin", admin).unwrap().delay, Duration::ZERO);
        // Guesses from many addresses slow every attempt on the name down, up to the cap.
        for i in 0..20 {
            let _ = l.begin("admin", IpAddr::from([10, 1, 0, i]));
        }
        let a = l.begin("admin", admin).unwrap();
        assert_eq!(a.delay, Duration::from_secs(2));
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 5.6.7.8"));
        let peer: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &[]), peer, "no trusted proxy: the header is ignored");
        assert_eq!(client_ip(peer, &h, &[proxy]), peer, "from an untrusted peer: ignored");
        assert_eq!(client_ip(proxy, &h, &[proxy]), "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }
}
