//! `mmloop review` (serve the review UI) and `mmloop user` (accounts and API tokens).
//! Thin: it asks for passwords, parses flags and prints; the store and the server do the
//! work, and nothing here touches SQL or HTTP.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::{Context, bail};
use console::{Term, style};
use mmloop_server::ServerConfig;
use mmloop_store::Store;
use mmloop_store::review::{Role, User, UserUpdate};

use crate::cli::{ReviewArgs, UserCommand};
use crate::ui;

fn parse_role(s: &str) -> anyhow::Result<Role> {
    Ok(s.parse::<Role>()?)
}

/// A password from the first line of standard input, or asked twice on the terminal.
fn read_password(from_stdin: bool, what: &str) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            bail!("standard input held no password");
        }
        return Ok(pw);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what}: no terminal to ask for a password\n  hint: pass --password-stdin and pipe it in");
    }
    let term = Term::stderr();
    term.write_str(&format!("{what}: "))?;
    let pw = term.read_secure_line()?;
    term.write_str("Repeat it: ")?;
    let again = term.read_secure_line()?;
    if pw != again {
        bail!("the two passwords differ");
    }
    Ok(pw)
}

/// The CLI acts with the project owner's full power (it can open the database anyway).
fn cli_admin(actor: &str) -> User {
    User {
        id: 0,
        name: actor.to_string(),
        role: Role::Admin,
        disabled: false,
        created_at: String::new(),
        created_by: String::new(),
    }
}

pub async fn review(a: ReviewArgs, actor: &str) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    // Someone must be able to manage users from the browser: without an active admin (a new
    // project, or one whose users were all added as reviewers), make one.
    if !store.has_active_admin().await? {
        let name = std::env::var("MMLOOP_ADMIN_USER").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| "admin".into());
        if let Some(u) = store.user(&name).await? {
            bail!(
                "this project has no active admin, and the user {name:?} exists as a {}{}\n  hint: make someone admin with `mmloop user role {} NAME admin` (or `mmloop user enable`), or set MMLOOP_ADMIN_USER to a new name",
                u.role,
                if u.disabled { " (disabled)" } else { "" },
                a.project.display()
            );
        }
        let password = match std::env::var("MMLOOP_ADMIN_PASSWORD") {
            Ok(p) if !p.is_empty() => p,
            _ if std::io::stdin().is_terminal() => {
                eprintln!(
                    "This project has no admin: choose a password for the admin account {}.",
                    style(&name).bold()
                );
                read_password(false, "Admin password")?
            }
            _ => bail!(
                "this project has no active admin and there is no terminal to ask for the admin password\n  hint: set MMLOOP_ADMIN_PASSWORD (and MMLOOP_ADMIN_USER to name the account), or run `mmloop user add {} admin --role admin --password-stdin`",
                a.project.display()
            ),
        };
        if store.ensure_admin(&name, &password, actor).await?.is_some() {
            ui::ok(format!("created the admin account {name}"));
        }
    }
    // Before the URL is announced: a signal from then on stops the server gracefully.
    let shutdown = mmloop_server::shutdown_signal();
    let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_ipv6() { format!("[{}]", addr.ip()) } else { addr.ip().to_string() };
    let url = format!("http://{host}:{}/", addr.port());
    if !addr.ip().is_loopback() && !a.secure_cookies {
        ui::warn("listening beyond this machine without TLS: passwords and cookies travel in clear");
        ui::hint(
            "put a TLS proxy in front (it should send X-Forwarded-Proto: https), or pass --secure-cookies behind one",
        );
    }
    ui::ok(format!("reviewing {} at {}", store.config().project.name, style(&url).bold()));
    eprintln!("  Ctrl-C stops the server (requests in flight finish first)");
    println!("{url}");
    let cfg = ServerConfig {
        lease: Duration::from_secs(a.lease_secs.max(1)),
        session_ttl: Duration::from_secs(a.session_hours.max(1) * 3600),
        secure_cookies: a.secure_cookies,
        trusted_proxies: a.trusted_proxy.clone(),
        ..Default::default()
    };
    mmloop_server::serve(store.clone(), listener, cfg, shutdown).await?;
    store.close();
    ui::ok("stopped");
    Ok(())
}

pub async fn user(cmd: UserCommand, actor: &str) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { project, name, role, password_stdin, no_password, json } => {
            let role = parse_role(&role)?;
            let store = Store::open(&project).await?;
            let password =
                if no_password { None } else { Some(read_password(password_stdin, &format!("Password for {name}"))?) };
            let user = store.create_user(&name, role, password.as_deref(), actor).await?;
            store.close();
            if json {
                return ui::json(&user);
            }
            ui::ok(format!("added {} ({})", user.name, user.role));
        }
        UserCommand::List { project, json } => {
            let store = Store::open(&project).await?;
            let users = store.users().await?;
            store.close();
            if json {
                return ui::json(&users);
            }
            if users.is_empty() {
                println!("no users yet: `mmloop review` creates the admin on its first run");
            }
            for u in users {
                let state = if u.disabled { style("disabled").red().to_string() } else { "active".into() };
                println!(
                    "{:<24} {:<10} {state:<10} since {} by {}",
                    u.name,
                    u.role.as_str(),
                    u.created_at,
                    u.created_by
                );
            }
        }
        UserCommand::Role { project, name, role } => {
            let role = parse_role(&role)?;
            let store = Store::open(&project).await?;
            let u = store.update_user(&name, UserUpdate { role: Some(role), ..Default::default() }, actor).await?;
            store.close();
            ui::ok(format!("{} is now {}", u.name, u.role));
        }
        UserCommand::Disable { project, name } => {
            let store = Store::open(&project).await?;
            let u = store.update_user(&name, UserUpdate { disabled: Some(true), ..Default::default() }, actor).await?;
            store.close();
            ui::ok(format!("disabled {}: their sessions ended and their items went back to the queue", u.name));
        }
        UserCommand::Enable { project, name } => {
            let store = Store::open(&project).await?;
            let u = store.update_user(&name, UserUpdate { disabled: Some(false), ..Default::default() }, actor).await?;
            store.close();
            ui::ok(format!("enabled {}", u.name));
        }
        UserCommand::Password { project, name, password_stdin } => {
            let store = Store::open(&project).await?;
            if store.user(&name).await?.is_none() {
                bail!("no user {name:?}\n  hint: `mmloop user list` shows who exists");
            }
            let pw = read_password(password_stdin, &format!("New password for {name}"))?;
            store.update_user(&name, UserUpdate { password: Some(pw), ..Default::default() }, actor).await?;
            store.close();
            ui::ok(format!("changed the password of {name}; their sessions ended and their API tokens were revoked"));
        }
        UserCommand::Token { project, name, token_name, expires_days, json } => {
            let store = Store::open(&project).await?;
            if expires_days == 0 || expires_days > 3650 {
                bail!("--expires-days must be between 1 and 3650");
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let expires = Some(now.as_millis() as i64 + expires_days as i64 * 86_400_000);
            let (info, secret) = store.create_token(&name, &token_name, expires, actor).await?;
            store.close();
            if json {
                return ui::json(&serde_json::json!({"token": secret.secret, "info": info}));
            }
            println!("{}", secret.secret);
            ui::ok(format!("token {} for {} (shown once: store it now)", info.id, info.user));
            ui::hint("send it as `Authorization: Bearer <token>`; `mmloop user revoke` ends it");
        }
        UserCommand::Tokens { project, name, json } => {
            let store = Store::open(&project).await?;
            let tokens = store.tokens(name.as_deref()).await?;
            store.close();
            if json {
                return ui::json(&tokens);
            }
            for t in tokens {
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:>5}  {:<20} {:<16} {}…  {state}  created {}", t.id, t.user, t.name, t.prefix, t.created_at);
            }
        }
        UserCommand::Revoke { project, id } => {
            let store = Store::open(&project).await?;
            let t = store.revoke_token(id, &cli_admin(actor)).await?;
            store.close();
            ui::ok(format!("revoked token {} ({} of {})", t.id, t.name, t.user));
        }
    }
    Ok(())
}
