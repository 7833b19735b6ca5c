//! `mmloop review` as a process: SIGKILL while reviewers are saving, restart, and every
//! acknowledged save is there, leases held before the kill still hold (and expire as
//! they would have), the audit chain verifies; SIGTERM shuts down gracefully. Also the
//! `mmloop user` commands a script uses.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{json, ok};
use serde_json::{Value, json};

/// Starts `mmloop review` on a free port; returns the child and its URL.
fn start(project: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["review", project, "--port", "0"])
        .args(extra)
        .env("MMLOOP_ACTOR", common::ACTOR)
        .env("MMLOOP_ADMIN_PASSWORD", "admin password")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().trim_end_matches('/').to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "no URL printed: {line:?}");
    (child, url)
}

fn add_user(project: &str, name: &str, role: &str) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["user", "add", project, name, "--role", role, "--password-stdin"])
        .env("MMLOOP_ACTOR", common::ACTOR)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"a good password\n").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = json(&["user", "token", project, name, "--token-name", "test"]);
    t["token"].as_str().unwrap().to_string()
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    fn new(url: &str, token: &str) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Api { http, url: url.to_string(), token: token.to_string() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let mut rb = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

/// Decisions acknowledged to the reviewers: (item, label).
type Acked = Arc<std::sync::Mutex<Vec<(i64, i64)>>>;

/// Waits until `n` decisions are acknowledged; fails with `stalled` after a minute.
async fn wait_for_acks(acked: &Acked, n: usize, stalled: &str) {
    let start = std::time::Instant::now();
    while acked.lock().unwrap().len() < n {
        assert!(start.elapsed() < Duration::from_secs(60), "{stalled}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_reviewing_loses_no_acknowledged_save() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p").display().to_string();
    ok(&["init", &project, "--example"]);
    let tokens: Vec<String> = (0..4).map(|i| add_user(&project, &format!("r{i}"), "reviewer")).collect();
    let holder = add_user(&project, "holder", "annotator");
    let (mut child, url) = start(&project, &["--lease-secs", "4"]);

    // One user takes an item and keeps it.
    let h = Api::new(&url, &holder);
    let (s, held) = h.call(reqwest::Method::POST, "/api/items/next", Some(serde_json::json!({}))).await.unwrap();
    assert_eq!(s, 200);
    let held_id = held["item"]["id"].as_i64().unwrap();

    // Four reviewers save as fast as they can; the server is killed in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Default::default();
    let mut tasks = Vec::new();
    for t in &tokens {
        let api = Api::new(&url, t);
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok((200, item)) =
                    api.call(reqwest::Method::POST, "/api/items/next", Some(serde_json::json!({}))).await
                else {
                    break;
                };
                let id = item["item"]["id"].as_i64().unwrap();
                let body = json!({"action": "accept", "base": item["item"]["label"]["id"], "lead_time_ms": 10});
                match api.call(reqwest::Method::POST, &format!("/api/items/{id}/decision"), Some(body)).await {
                    Ok((200, r)) => acked.lock().unwrap().push((id, r["label"]["id"].as_i64().unwrap())),
                    Ok((s, r)) => panic!("save refused: {s} {r}"),
                    Err(_) => break,
                }
            }
        }));
    }
    wait_for_acks(&acked, 20, "reviewers made no progress").await;
    child.kill().unwrap(); // SIGKILL, with saves in flight
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20);

    // Restart: every acknowledged save is the item's label (nobody else touched those items).
    let (mut child, url) = start(&project, &["--lease-secs", "4"]);
    let r0 = Api::new(&url, &tokens[0]);
    for (item, label) in &acked {
        let (s, v) = r0.call(reqwest::Method::GET, &format!("/api/items/{item}"), None).await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(v["item"]["label"]["id"].as_i64(), Some(*label), "item {item}: acknowledged save lost");
        assert_eq!(v["item"]["label"]["status"], "accepted");
    }
    // The lease taken before the kill still holds: the holder gets the item back, others don't.
    let (_, again) =
        h_api(&url, &holder).call(reqwest::Method::POST, "/api/items/next", Some(serde_json::json!({}))).await.unwrap();
    assert_eq!(again["item"]["id"].as_i64(), Some(held_id), "the lease did not survive the restart");
    let (s, v) = r0.call(reqwest::Method::POST, &format!("/api/items/{held_id}/lease"), None).await.unwrap();
    assert_eq!((s, v["error"].as_str()), (409, Some("leased")));
    // And it expires on time after the restart.
    tokio::time::sleep(Duration::from_millis(4300)).await;
    let (s, _) = r0.call(reqwest::Method::POST, &format!("/api/items/{held_id}/lease"), None).await.unwrap();
    assert_eq!(s, 200, "an expired lease is free again after a restart");

    // SIGTERM: a graceful stop, exit status 0.
    kill(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown failed: {status:?}");
    ok(&["audit", "verify", &project]);
    let log = json(&["audit", "log", &project, "-n", "500"]);
    let saves = log.as_array().unwrap().iter().filter(|e| e["action"] == "label.save").count();
    assert!(saves >= acked.len(), "{saves} save events for {} acknowledged saves", acked.len());
}

/// Two `mmloop review` processes on one PostgreSQL database (two folders whose mmloop.toml
/// names it), reviewers on both saving as fast as they can; one server is killed with SIGKILL
/// mid-save. The other goes on serving; every save either server acknowledged is the item's
/// label; no item was handed to two reviewers at once; the audit chain is one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_postgres_and_kill_9_of_one_loses_no_acknowledged_save() {
    let Some(pg) = mmloop_store::testing::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a").display().to_string();
    ok(&["init", &a, "--example", "--database", &pg.url]);
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(dir.path().join("a/mmloop.toml"), b.join("mmloop.toml")).unwrap();
    let b = b.display().to_string();
    let tokens: Vec<String> = (0..6).map(|i| add_user(&a, &format!("r{i}"), "reviewer")).collect();
    let (mut server_a, url_a) = start(&a, &[]);
    let (mut server_b, url_b) = start(&b, &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Default::default();
    let holding = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<i64, usize>::new()));
    let mut tasks = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let api = Api::new(if i % 2 == 0 { &url_a } else { &url_b }, t);
        let (stop, acked, holding) = (stop.clone(), acked.clone(), holding.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok((200, item)) =
                    api.call(reqwest::Method::POST, "/api/items/next", Some(serde_json::json!({}))).await
                else {
                    break;
                };
                let Some(id) = item["item"]["id"].as_i64() else { break };
                if let Some(other) = holding.lock().unwrap().insert(id, i) {
                    panic!("item {id} handed to reviewer {i} while reviewer {other} held it");
                }
                let body = json!({"action": "edit", "answer": {"text": format!("r{i}")},
                                  "base": item["item"]["label"]["id"], "lead_time_ms": 10});
                let saved = api.call(reqwest::Method::POST, &format!("/api/items/{id}/decision"), Some(body)).await;
                holding.lock().unwrap().remove(&id);
                match saved {
                    Ok((200, r)) => acked.lock().unwrap().push((id, r["label"]["id"].as_i64().unwrap())),
                    Ok((s, r)) => panic!("save refused: {s} {r}"),
                    Err(_) => break,
                }
            }
        }));
    }
    wait_for_acks(&acked, 16, "reviewers made no progress").await;
    server_a.kill().unwrap(); // SIGKILL, with saves in flight
    server_a.wait().unwrap();
    // Server B keeps serving its reviewers.
    let before = acked.lock().unwrap().len();
    wait_for_acks(&acked, before + 6, "the other server stopped too").await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let r0 = Api::new(&url_b, &tokens[1]);
    for (item, label) in &acked {
        let (s, v) = r0.call(reqwest::Method::GET, &format!("/api/items/{item}"), None).await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(v["item"]["label"]["id"].as_i64(), Some(*label), "item {item}: acknowledged save lost");
    }
    let mut items: Vec<i64> = acked.iter().map(|(i, _)| *i).collect();
    items.sort_unstable();
    items.dedup();
    assert_eq!(items.len(), acked.len(), "an item was decided twice from the default queue");
    kill(&server_b, "-TERM");
    assert!(server_b.wait().unwrap().success());
    ok(&["audit", "verify", &a]);
    ok(&["audit", "verify", &b]);
}

fn h_api(url: &str, token: &str) -> Api {
    Api::new(url, token)
}

#[test]
fn user_commands_manage_accounts_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p").display().to_string();
    ok(&["init", &project]);
    let token = add_user(&project, "alice", "annotator");
    assert!(token.starts_with("mmt_"));
    let users = json(&["user", "list", &project]);
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["role"], "annotator");
    ok(&["user", "role", &project, "alice", "reviewer"]);
    ok(&["user", "disable", &project, "alice"]);
    let users = json(&["user", "list", &project]);
    assert_eq!((users[0]["role"].as_str(), users[0]["disabled"].as_bool()), (Some("reviewer"), Some(true)));
    let tokens = json(&["user", "tokens", &project]);
    assert_eq!(tokens[0]["user"], "alice");
    assert!(!tokens.to_string().contains(&token), "token listed in clear");
    ok(&["user", "revoke", &project, &tokens[0]["id"].to_string()]);
    let err = common::fails(&["user", "add", &project, "bob", "--role", "boss", "--password-stdin"]);
    assert!(err.contains("admin, reviewer, annotator, viewer"), "{err}");
    let err = common::fails(&["user", "add", &project, "carol"]);
    assert!(err.contains("--password-stdin"), "{err}");
    // Without users and without a terminal, `review` says how to make the admin.
    let p2 = dir.path().join("q").display().to_string();
    ok(&["init", &p2]);
    let out = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["review", &p2, "--port", "0"])
        .env_remove("MMLOOP_ADMIN_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MMLOOP_ADMIN_PASSWORD"));
    let log = json(&["audit", "log", &project, "-n", "50"]);
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["user.add", "token.create", "user.role", "user.disable", "token.revoke"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

/// A project whose first user was added as a reviewer still gets an admin when the server
/// starts (someone must be able to manage users from the browser); a name taken by a
/// non-admin is refused with a hint instead of being promoted silently.
#[test]
fn review_makes_an_admin_when_users_exist_but_none_is_admin() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p").display().to_string();
    ok(&["init", &project]);
    add_user(&project, "bob", "reviewer");
    let (mut child, _) = start(&project, &[]);
    kill(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    let users = json(&["user", "list", &project]);
    let admin = users.as_array().unwrap().iter().find(|u| u["name"] == "admin").expect("an admin was made");
    assert_eq!(admin["role"], "admin");
    // Admin taken by a reviewer: refuse with the way out.
    let q = dir.path().join("q").display().to_string();
    ok(&["init", &q]);
    add_user(&q, "admin", "reviewer");
    let out = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["review", &q, "--port", "0"])
        .env("MMLOOP_ADMIN_PASSWORD", "admin password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no active admin") && err.contains("mmloop user role"), "{err}");
}
