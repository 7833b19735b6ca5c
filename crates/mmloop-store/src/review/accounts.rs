//! Accounts: users with a role, argon2id password hashes, login sessions and API tokens.
//!
//! Session cookies and API tokens are 256-bit random secrets; the database keeps only their
//! sha256, so a copy of the project folder lets no one in. Every change to a user or a token
//! is an audit event. This module never sees a request: throttling failed logins and
//! cookies are the server's job.

use std::str::FromStr;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use mmloop_core::ParseEnumError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{ReviewError, ReviewResult, now_ms, write_tx};
use crate::sql::{Conn, Row};
use crate::{Store, StoreError};

/// What a user may do. Ordered from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads items, images, history and stats.
    Viewer,
    /// Also takes items from the queue and labels them (accept, edit, skip, undo own).
    Annotator,
    /// Also rejects candidates, overrules others' decisions, reads the audit log.
    Reviewer,
    /// Also manages users and everyone's API tokens.
    Admin,
}

/// One kind of action, granted by roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    Read,
    Label,
    Review,
    ManageUsers,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Annotator, Role::Reviewer, Role::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Annotator => "annotator",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }

    /// The one table of who may do what.
    pub const fn can(self, p: Permission) -> bool {
        match p {
            Permission::Read => true,
            Permission::Label => !matches!(self, Role::Viewer),
            Permission::Review => matches!(self, Role::Reviewer | Role::Admin),
            Permission::ManageUsers => matches!(self, Role::Admin),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| ParseEnumError {
            kind: "role",
            value: s.into(),
            expected: "admin, reviewer, annotator, viewer",
        })
    }
}

/// A user as stored (never with the password hash).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: String,
    pub created_by: String,
}

impl User {
    pub fn can(&self, p: Permission) -> bool {
        !self.disabled && self.role.can(p)
    }
}

/// A live login session.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: User,
    pub expires_ms: i64,
}

/// A secret shown once (a session cookie value or an API token), with when it expires.
#[derive(Clone, Debug)]
pub struct NewSecret {
    pub secret: String,
    pub expires_ms: Option<i64>,
}

/// An API token as listed (never the token itself).
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub user: String,
    pub name: String,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_at: Option<String>,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

const TOKEN_PREFIX: &str = "mmt_";
pub(crate) const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

fn check_name(name: &str) -> ReviewResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ReviewError::BadRequest(format!(
            "user name {name:?} is not allowed\n  hint: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

fn check_password(pw: &str) -> ReviewResult<()> {
    let n = pw.chars().count();
    if n < MIN_PASSWORD {
        return Err(ReviewError::BadRequest(format!(
            "the password is too short: use at least {MIN_PASSWORD} characters"
        )));
    }
    if pw.len() > MAX_PASSWORD {
        return Err(ReviewError::BadRequest(format!("the password is too long (over {MAX_PASSWORD} bytes)")));
    }
    Ok(())
}

/// argon2id with the crate's defaults (m = 19 MiB, t = 2, p = 1: OWASP's recommendation).
fn hash_password(pw: &str) -> ReviewResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ReviewError::Store(StoreError::Internal(format!("password hashing: {e}"))))
}

fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the user does not exist, so that a wrong name takes as
/// long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("mmloop-no-such-user").unwrap_or_default())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ReviewResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ReviewError::Store(StoreError::Internal(e.to_string())))
}

pub(crate) fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

const USER_COLS: &str = "id, name, role, disabled, created_at, created_by";

pub(crate) fn row_user(r: &Row) -> Result<User, StoreError> {
    let role: String = r.get(2)?;
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        role: role.parse().unwrap_or(Role::Viewer),
        disabled: r.get(3)?,
        created_at: r.get(4)?,
        created_by: r.get(5)?,
    })
}

fn user_by_name(c: Conn, name: &str) -> ReviewResult<Option<User>> {
    Ok(c.optional(&format!("SELECT {USER_COLS} FROM users WHERE name = ?1"), &[&name], row_user)?)
}

fn active_admins(c: Conn) -> ReviewResult<i64> {
    Ok(c.one("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0", &[], |r| r.get(0))?)
}

fn row_token(r: &Row) -> Result<TokenInfo, StoreError> {
    Ok(TokenInfo {
        id: r.get(0)?,
        user: r.get(1)?,
        name: r.get(2)?,
        prefix: r.get(3)?,
        created_at: r.get(4)?,
        created_by: r.get(5)?,
        expires_ms: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

const TOKEN_COLS: &str = "t.id, u.name, t.name, t.prefix, t.created_at, t.created_by, t.expires_ms, t.revoked_at";

fn token_by_id(c: Conn, id: i64) -> Result<Option<TokenInfo>, StoreError> {
    c.optional(
        &format!("SELECT {TOKEN_COLS} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?1"),
        &[&id],
        row_token,
    )
}

impl Store {
    /// How many users exist (zero before the first admin is made).
    pub async fn user_count(&self) -> ReviewResult<u64> {
        Ok(self.db().read(|c| Ok(c.one("SELECT COUNT(*) FROM users", &[], |r| r.get::<i64>(0))? as u64)).await?)
    }

    /// Creates a user. `password: None` makes an account that can only use API tokens.
    pub async fn create_user(&self, name: &str, role: Role, password: Option<&str>, actor: &str) -> ReviewResult<User> {
        self.create_user_inner(name, role, password, actor, false).await?.ok_or_else(unreachable_none)
    }

    /// Creates the admin `name` when the project has no active admin; `None` when it has one.
    /// A user of that name who is not an active admin is refused: nobody is promoted silently.
    pub async fn ensure_admin(&self, name: &str, password: &str, actor: &str) -> ReviewResult<Option<User>> {
        self.create_user_inner(name, Role::Admin, Some(password), actor, true).await
    }

    /// Whether some enabled user is an admin (someone can manage users from the browser).
    pub async fn has_active_admin(&self) -> ReviewResult<bool> {
        Ok(self.db().read(|c| active_admins(c).map_err(into_store)).await? > 0)
    }

    async fn create_user_inner(
        &self,
        name: &str,
        role: Role,
        password: Option<&str>,
        actor: &str,
        // Only when there is no active admin (`ensure_admin`).
        only_first: bool,
    ) -> ReviewResult<Option<User>> {
        check_name(name)?;
        let hash = match password {
            Some(pw) => {
                check_password(pw)?;
                let pw = pw.to_string();
                Some(blocking(move || hash_password(&pw)).await??)
            }
            None => None,
        };
        let (name, actor) = (name.to_string(), actor.to_string());
        let out = write_tx(self, move |tx| {
            if only_first && active_admins(tx)? > 0 {
                return Ok((None, false));
            }
            if user_by_name(tx, &name)?.is_some() {
                return Err(ReviewError::Exists(format!("user {name:?} already exists")));
            }
            tx.execute(
                "INSERT INTO users (name, role, password_hash, disabled, created_at, created_by)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                &[&name, &role.as_str(), &hash, &crate::now(), &actor],
            )?;
            crate::audit::append(
                tx,
                &actor,
                "user.add",
                &format!("user:{name}"),
                None,
                Some(&json!({"name": name, "role": role, "password": hash.is_some()})),
            )?;
            Ok((user_by_name(tx, &name)?, true))
        })
        .await?;
        if out.is_some() {
            self.sync_audit_head().await?;
        }
        Ok(out)
    }

    pub async fn user(&self, name: &str) -> ReviewResult<Option<User>> {
        let name = name.to_string();
        self.db().read(move |c| user_by_name(c, &name).map_err(into_store)).await.map_err(from_store)
    }

    pub async fn users(&self) -> ReviewResult<Vec<User>> {
        Ok(self.db().read(|c| c.query(&format!("SELECT {USER_COLS} FROM users ORDER BY name"), &[], row_user)).await?)
    }

    /// Changes a user's role, disabled flag or password, each an audit event. Disabling a
    /// user or changing their password ends their sessions; a new password also revokes
    /// their API tokens; disabling frees their leases. The last active admin can be neither demoted nor disabled.
    pub async fn update_user(&self, name: &str, update: UserUpdate, actor: &str) -> ReviewResult<User> {
        let hash = match &update.password {
            Some(pw) => {
                check_password(pw)?;
                let pw = pw.clone();
                Some(blocking(move || hash_password(&pw)).await??)
            }
            None => None,
        };
        let (name, actor) = (name.to_string(), actor.to_string());
        let user = write_tx(self, move |tx| {
            let u = user_by_name(tx, &name)?.ok_or_else(|| ReviewError::NotFound(format!("user {name:?}")))?;
            let entity = format!("user:{name}");
            let last_admin = u.role == Role::Admin && !u.disabled && active_admins(tx)? <= 1;
            if let Some(role) = update.role.filter(|r| *r != u.role) {
                if last_admin {
                    return Err(ReviewError::BadRequest(format!(
                        "{name} is the last admin\n  hint: make another user admin first"
                    )));
                }
                tx.execute("UPDATE users SET role = ?1 WHERE id = ?2", &[&role.as_str(), &u.id])?;
                crate::audit::append(
                    tx,
                    &actor,
                    "user.role",
                    &entity,
                    Some(&json!({"role": u.role})),
                    Some(&json!({"role": role})),
                )?;
            }
            if let Some(disabled) = update.disabled.filter(|d| *d != u.disabled) {
                if disabled && last_admin {
                    return Err(ReviewError::BadRequest(format!(
                        "{name} is the last admin\n  hint: make another user admin first"
                    )));
                }
                tx.execute("UPDATE users SET disabled = ?1 WHERE id = ?2", &[&disabled, &u.id])?;
                if disabled {
                    tx.execute("DELETE FROM sessions WHERE user_id = ?1", &[&u.id])?;
                    tx.execute("DELETE FROM leases WHERE user_id = ?1", &[&u.id])?;
                }
                let action = if disabled { "user.disable" } else { "user.enable" };
                crate::audit::append(
                    tx,
                    &actor,
                    action,
                    &entity,
                    Some(&json!({"disabled": u.disabled})),
                    Some(&json!({"disabled": disabled})),
                )?;
            }
            if let Some(hash) = &hash {
                tx.execute("UPDATE users SET password_hash = ?1 WHERE id = ?2", &[&hash, &u.id])?;
                tx.execute("DELETE FROM sessions WHERE user_id = ?1", &[&u.id])?;
                // A new password is the answer to a leak: credentials made with the old one go too.
                let revoked = tx.execute(
                    "UPDATE api_tokens SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL",
                    &[&crate::now(), &u.id],
                )?;
                crate::audit::append(
                    tx,
                    &actor,
                    "user.password",
                    &entity,
                    None,
                    Some(&json!({"changed": true, "tokens_revoked": revoked})),
                )?;
            }
            let u = user_by_name(tx, &name)?.ok_or_else(|| ReviewError::NotFound(format!("user {name:?}")))?;
            Ok((u, true))
        })
        .await?;
        self.sync_audit_head().await?;
        Ok(user)
    }

    /// Checks a name and password (argon2id, off the async threads). `None` for a wrong
    /// name, a wrong password, a disabled user or one without a password, all alike.
    pub async fn verify_login(&self, name: &str, password: &str) -> ReviewResult<Option<User>> {
        let n = name.to_string();
        let found: Option<(User, Option<String>)> = self
            .db()
            .read(move |c| {
                c.optional(&format!("SELECT {USER_COLS}, password_hash FROM users WHERE name = ?1"), &[&n], |r| {
                    Ok((row_user(r)?, r.get::<Option<String>>(6)?))
                })
            })
            .await?;
        let pw = password.to_string();
        blocking(move || match found {
            Some((u, Some(hash))) if !u.disabled && pw.len() <= MAX_PASSWORD => {
                verify_password(&pw, &hash).then_some(u)
            }
            _ => {
                let _ = verify_password(&pw, dummy_hash());
                None
            }
        })
        .await
    }

    /// Starts a session for a user who just logged in; the secret goes in the cookie.
    pub async fn create_session(&self, user: &User, ttl_ms: i64) -> ReviewResult<NewSecret> {
        let secret = random_hex(32);
        let hash = secret_hash(&secret);
        let now = now_ms();
        let expires = now + ttl_ms;
        let (uid, name) = (user.id, user.name.clone());
        self.db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                conn.execute("DELETE FROM sessions WHERE expires_ms < ?1", &[&now])?;
                conn.execute(
                    "INSERT INTO sessions (token_hash, user_id, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                    &[&hash, &uid, &now, &expires],
                )?;
                crate::audit::append(conn, &name, "user.login", &format!("user:{name}"), None, None)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.sync_audit_head().await?;
        Ok(NewSecret { secret, expires_ms: Some(expires) })
    }

    /// The live session a cookie names: not expired, its user not disabled.
    pub async fn session(&self, secret: &str) -> ReviewResult<Option<Session>> {
        let hash = secret_hash(secret);
        Ok(self
            .db()
            .read(move |c| {
                c.optional(
                    "SELECT u.id, u.name, u.role, u.disabled, u.created_at, u.created_by, s.expires_ms
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1",
                    &[&hash],
                    |r| Ok(Session { user: row_user(r)?, expires_ms: r.get(6)? }),
                )
            })
            .await?
            .filter(|s| !s.user.disabled && s.expires_ms > now_ms()))
    }

    pub async fn end_session(&self, secret: &str) -> ReviewResult<()> {
        let hash = secret_hash(secret);
        self.db()
            .write(move |c| {
                c.execute("DELETE FROM sessions WHERE token_hash = ?1", &[&hash])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Makes an API token for `owner`; the token is returned once and stored as a hash.
    pub async fn create_token(
        &self,
        owner: &str,
        name: &str,
        expires_ms: Option<i64>,
        actor: &str,
    ) -> ReviewResult<(TokenInfo, NewSecret)> {
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ReviewError::BadRequest("a token name has 1 to 100 characters".into()));
        }
        if expires_ms.is_some_and(|e| e <= now_ms()) {
            return Err(ReviewError::BadRequest("the token would expire in the past".into()));
        }
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32));
        let hash = secret_hash(&secret);
        let prefix: String = secret.chars().take(12).collect();
        let (owner, name, actor) = (owner.to_string(), name.to_string(), actor.to_string());
        let info = write_tx(self, move |tx| {
            let u = user_by_name(tx, &owner)?.ok_or_else(|| ReviewError::NotFound(format!("user {owner:?}")))?;
            let id: i64 = tx.one(
                "INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at, created_by, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                &[&u.id, &name, &hash, &prefix, &crate::now(), &actor, &expires_ms],
                |r| r.get(0),
            )?;
            crate::audit::append(
                tx,
                &actor,
                "token.create",
                &format!("token:{id}"),
                None,
                Some(&json!({"user": owner, "name": name, "prefix": prefix, "expires_ms": expires_ms})),
            )?;
            let t = token_by_id(tx, id)?.ok_or_else(|| ReviewError::NotFound(format!("token {id}")))?;
            Ok((t, true))
        })
        .await?;
        self.sync_audit_head().await?;
        let expires = info.expires_ms;
        Ok((info, NewSecret { secret, expires_ms: expires }))
    }

    /// API tokens, newest first; only `owner`'s when given.
    pub async fn tokens(&self, owner: Option<&str>) -> ReviewResult<Vec<TokenInfo>> {
        let owner = owner.map(String::from);
        Ok(self
            .db()
            .read(move |c| {
                c.query(
                    &format!(
                        "SELECT {TOKEN_COLS} FROM api_tokens t JOIN users u ON u.id = t.user_id
                         WHERE (?1 IS NULL OR u.name = ?1) ORDER BY t.id DESC"
                    ),
                    &[&owner],
                    row_token,
                )
            })
            .await?)
    }

    /// Revokes a token; its owner or an admin may.
    pub async fn revoke_token(&self, id: i64, by: &User) -> ReviewResult<TokenInfo> {
        let by = by.clone();
        let info = write_tx(self, move |tx| {
            let t = token_by_id(tx, id)?.ok_or_else(|| ReviewError::NotFound(format!("token {id}")))?;
            if t.user != by.name && !by.can(Permission::ManageUsers) {
                // Someone else's token is, to this user, a token that does not exist.
                return Err(ReviewError::NotFound(format!("token {id}")));
            }
            if t.revoked_at.is_none() {
                tx.execute("UPDATE api_tokens SET revoked_at = ?1 WHERE id = ?2", &[&crate::now(), &id])?;
                crate::audit::append(
                    tx,
                    &by.name,
                    "token.revoke",
                    &format!("token:{id}"),
                    None,
                    Some(&json!({"user": t.user, "name": t.name})),
                )?;
            }
            let t = token_by_id(tx, id)?.ok_or_else(|| ReviewError::NotFound(format!("token {id}")))?;
            Ok((t, true))
        })
        .await?;
        self.sync_audit_head().await?;
        Ok(info)
    }

    /// The user an API token acts for: not revoked, not expired, user not disabled.
    pub async fn token_user(&self, secret: &str) -> ReviewResult<Option<User>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = secret_hash(secret);
        let now = now_ms();
        Ok(self
            .db()
            .read(move |c| {
                c.optional(
                    "SELECT u.id, u.name, u.role, u.disabled, u.created_at, u.created_by
                     FROM api_tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1 AND t.revoked_at IS NULL AND (t.expires_ms IS NULL OR t.expires_ms > ?2)",
                    &[&hash, &now],
                    row_user,
                )
            })
            .await?
            .filter(|u| !u.disabled))
    }
}

fn unreachable_none() -> ReviewError {
    ReviewError::Store(StoreError::Internal("user was not created".into()))
}

fn into_store(e: ReviewError) -> StoreError {
    match e {
        ReviewError::Store(s) => s,
        other => StoreError::Internal(other.to_string()),
    }
}

fn from_store(e: StoreError) -> ReviewError {
    ReviewError::Store(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_in_order() {
        use Permission::*;
        let table: Vec<(Role, [bool; 4])> = vec![
            (Role::Viewer, [true, false, false, false]),
            (Role::Annotator, [true, true, false, false]),
            (Role::Reviewer, [true, true, true, false]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, want) in table {
            let got = [Read, Label, Review, ManageUsers].map(|p| role.can(p));
            assert_eq!(got, want, "{role}");
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("alice.b-1@x").is_ok());
        for bad in ["", "a b", "<script>", "cli:me", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
    }
}
