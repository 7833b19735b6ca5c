//! The review API against a real server on 127.0.0.1: concurrency (leases, stale saves),
//! the permission matrix (every route × every role × anonymous, by cookie and by token),
//! CSRF, login throttling, cookies, bad requests, images, undo/edit/history, filters,
//! stats and the audit trail.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{Auth, Project, Server, Spec, id_of};
use mmloop_server::{LoginLimits, ServerConfig};
use mmloop_store::review::Role;
use reqwest::Method;
use serde_json::{Value, json};

fn cfg() -> ServerConfig {
    ServerConfig::default()
}

/// Candidates with spread-out confidences for every item: item i gets (i * 37 % 100) / 100.
async fn spread(p: &Project, n: i64) {
    let rows: Vec<_> = (1..=n)
        .map(|i| {
            let conf = ((i * 37) % 100) as f64 / 100.0;
            let flags = if i % 5 == 0 { json!([{"flag": "hedge", "why": "says 'maybe'"}]) } else { json!([]) };
            (i, "m1", "an answer", Some(conf), flags)
        })
        .collect::<Vec<_>>();
    let rows: Vec<(i64, &str, &str, Option<f64>, Value)> =
        rows.iter().map(|(i, m, a, c, f)| (*i, *m, *a, *c, f.clone())).collect();
    p.candidates(&rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_reviewers_never_get_the_same_item() {
    let n = 240;
    let p = Project::new(n).await;
    spread(&p, n as i64).await;
    let mut tokens = Vec::new();
    for r in 0..16 {
        let name = format!("r{r}");
        p.user(&name, Role::Reviewer).await;
        tokens.push(p.token(&name).await);
    }
    let srv = Server::start(&p.store, cfg()).await;
    // Everyone asks at once: the first items handed out are the riskiest, all different.
    let firsts = futures_join(tokens.iter().map(|t| {
        let c = srv.bearer(t);
        async move { c.next("").await.unwrap() }
    }))
    .await;
    let first_ids: HashSet<i64> = firsts.iter().map(id_of).collect();
    assert_eq!(first_ids.len(), 16, "two reviewers got the same item");
    let confs: Vec<f64> = firsts.iter().map(|f| f["candidates"][0]["confidence"].as_f64().unwrap()).collect();
    assert!(confs.iter().all(|c| *c <= 0.16), "the riskiest items come first: {confs:?}");

    // Then each loops next → accept until the queue is empty.
    let handles: Vec<_> = tokens
        .iter()
        .map(|t| {
            let c = srv.bearer(t);
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(item) = c.next("").await {
                    let r = c.accept(&item).await;
                    assert_eq!(r.status, 200, "{}", r.body);
                    got.push(id_of(&item));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an item was decided twice");
    assert_eq!(unique.len(), n, "every item was reviewed exactly once");
    let db = rusqlite::Connection::open(p.db()).unwrap();
    let accepts: i64 = db.query_row("SELECT COUNT(*) FROM labels WHERE action = 'accept'", [], |r| r.get(0)).unwrap();
    assert_eq!(accepts, n as i64);
    let events: i64 = db
        .query_row("SELECT COUNT(*) FROM events WHERE action = 'label.save' AND actor LIKE 'r%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, n as i64, "every save is an audit event");
    assert!(p.store.audit_verify().await.unwrap().ok());
    srv.stop().await;
}

async fn futures_join<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<T> {
    let hs: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_renew_and_guard_saves() {
    let p = Project::new(6).await;
    spread(&p, 6).await;
    for u in ["ann", "bob", "cat"] {
        p.user(u, Role::Reviewer).await;
    }
    let srv = Server::start(&p.store, ServerConfig { lease: Duration::from_millis(1500), ..cfg() }).await;
    let (a, b, c) = (srv.login("ann").await, srv.login("bob").await, srv.login("cat").await);
    let x = a.next("").await.unwrap();
    assert_eq!(x["lease"]["user"], "ann");
    let y = b.next("").await.unwrap();
    assert_ne!(id_of(&x), id_of(&y));
    // Asking again gives back the item one holds.
    assert_eq!(id_of(&a.next("").await.unwrap()), id_of(&x));
    // Someone else cannot take or decide a leased item.
    let xid = id_of(&x);
    let r = b.post(&format!("/api/items/{xid}/lease"), json!({})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "leased");
    let r = b.accept(&x).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"], "leased");
    // Renewal keeps it past the original expiry.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = a.post(&format!("/api/items/{xid}/lease"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let z = c.next("").await.unwrap();
    assert_ne!(id_of(&z), xid, "a renewed lease still holds");
    // Expired: the next reviewer gets it, and the first can no longer save it.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let c2 = srv.login("cat").await;
    c2.post(&format!("/api/items/{}/lease", id_of(&z)), json!({})).await;
    let r = c.send(Method::DELETE, &format!("/api/items/{}/lease", id_of(&z)), None, &[]).await;
    assert_eq!(r.status, 200);
    let got = c.next("").await.unwrap();
    assert_eq!(id_of(&got), xid, "the expired lease went back to the queue, riskiest first");
    let r = a.accept(&x).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["lease"]["user"], "cat");
    assert_eq!(c.accept(&got).await.status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_save_gets_409_with_the_current_label_and_writes_nothing() {
    let p = Project::new(3).await;
    spread(&p, 3).await;
    p.user("ann", Role::Reviewer).await;
    p.user("bob", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let (a, b) = (srv.login("ann").await, srv.login("bob").await);
    let x = a.next("").await.unwrap();
    let r = a.accept(&x).await;
    assert_eq!(r.status, 200);
    let label = r.body["label"].clone();
    // Bob saw the item before Ann's save (its old label) and saves now.
    let labels_before = p.store.label_history(id_of(&x)).await.unwrap().len();
    let r = b.accept(&x).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "conflict");
    assert_eq!(r.body["current"]["id"], label["id"]);
    assert_eq!(r.body["current"]["status"], "accepted");
    assert!(r.body["message"].as_str().unwrap().contains("nothing was saved"));
    assert_eq!(p.store.label_history(id_of(&x)).await.unwrap().len(), labels_before);
    // With the current label as base, the change goes through.
    let r = b
        .post(
            &format!("/api/items/{}/decision", id_of(&x)),
            json!({"action": "edit", "base": label["id"], "answer": {"text": "better"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    srv.stop().await;
}

/// Who may call what. `Min(role)`: that role and above; anonymous always gets 401.
#[derive(Clone, Copy, Debug)]
enum Need {
    Min(Role),
    /// Only the owner of the thing (or an admin); others see 404.
    OwnerOrAdmin,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_permission_matrix_every_route_every_role() {
    // One fresh item per call, so that every permitted call finds its item in a state it
    // can act on and must succeed (2xx), not merely avoid 401/403.
    let n_items = 400;
    let p = Project::new(n_items).await;
    spread(&p, n_items as i64).await;
    for r in Role::ALL {
        p.user(r.as_str(), r).await;
    }
    p.user("other", Role::Annotator).await;
    let admin_token_id = p.store.create_token("admin", "owned", None, "test").await.unwrap().0.id;
    let arms = ["a", "b"].map(|a| mmloop_store::ab::Arm { name: a.into(), model: "m".into() }).to_vec();
    let exp = mmloop_store::ab::Experiment { name: "exp".into(), seed: "exp".into(), arms, weights: vec![0.5, 0.5] };
    p.store.ab_start(exp, "test").await.unwrap();
    let srv = Server::start(&p.store, cfg()).await;
    use Need::*;
    use Role::*;
    // (method, path, body, need). `{id}` is a fresh item, `{base}` its current label,
    // `{password}` the caller's password.
    let routes: Vec<(Method, &str, Option<Value>, Need)> = vec![
        (Method::GET, "/api/me", None, Min(Viewer)),
        (Method::GET, "/api/openapi.json", None, Min(Viewer)),
        (Method::GET, "/api/items", None, Min(Viewer)),
        (Method::POST, "/api/items/next", Some(json!({})), Min(Annotator)),
        (Method::GET, "/api/items/{id}", None, Min(Viewer)),
        (Method::GET, "/api/items/{id}/history", None, Min(Viewer)),
        (Method::POST, "/api/items/{id}/lease", Some(json!({})), Min(Annotator)),
        (Method::DELETE, "/api/items/{id}/lease", None, Min(Annotator)),
        (Method::POST, "/api/items/{id}/decision", Some(json!({"action": "skip", "base": "{base}"})), Min(Annotator)),
        (Method::POST, "/api/items/{id}/decision", Some(json!({"action": "reject", "base": "{base}"})), Min(Reviewer)),
        (Method::POST, "/api/items/{id}/undo", Some(json!({"base": "{base}"})), Min(Annotator)),
        (Method::GET, "/api/images/1", None, Min(Viewer)),
        (Method::GET, "/api/stats", None, Min(Viewer)),
        (Method::GET, "/api/experiments", None, Min(Viewer)),
        (Method::GET, "/api/experiments/exp", None, Min(Viewer)),
        (Method::GET, "/api/facets", None, Min(Viewer)),
        (Method::GET, "/api/audit", None, Min(Reviewer)),
        (Method::GET, "/api/users", None, Min(Admin)),
        (Method::POST, "/api/users", Some(json!({"name": "{uniq}", "role": "viewer"})), Min(Admin)),
        (Method::PATCH, "/api/users/viewer", Some(json!({"role": "viewer"})), Min(Admin)),
        (Method::GET, "/api/tokens", None, Min(Viewer)),
        (Method::GET, "/api/tokens?all=true", None, Min(Admin)),
        (Method::POST, "/api/tokens", Some(json!({"name": "mine", "password": "{password}"})), Min(Viewer)),
        (
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "theirs", "user": "other", "password": "{password}"})),
            Min(Admin),
        ),
        (Method::DELETE, "/api/tokens/{admin_token}", None, OwnerOrAdmin),
        (Method::POST, "/api/me/password", Some(json!({"current": "{password}", "new": "{password}"})), Min(Viewer)),
        (Method::POST, "/api/logout", Some(json!({})), Min(Viewer)),
    ];
    // Every operation of the OpenAPI document is in the matrix, and only those.
    let spec: Value = serde_json::from_str(include_str!("../src/openapi.json")).unwrap();
    let mut documented = HashSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", m.to_uppercase()));
        }
    }
    let tested: HashSet<String> = routes
        .iter()
        .map(|(m, path, _, _)| {
            let path = path.split('?').next().unwrap().replace("/images/1", "/images/{id}");
            let path = path.replace("{admin_token}", "{id}").replace("/users/viewer", "/users/{name}");
            let path = path.replace("/experiments/exp", "/experiments/{name}");
            format!("{m} {path}")
        })
        .collect();
    let mut with_login = tested.clone();
    with_login.insert("POST /api/login".into());
    assert_eq!(documented, with_login, "the OpenAPI document and the permission matrix disagree");

    let db = rusqlite::Connection::open(p.db()).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    let leased = |id: i64| {
        db.query_row("SELECT COUNT(*) FROM leases WHERE item_id = ?1", [id], |r| r.get::<_, i64>(0)).unwrap() > 0
    };
    let mut item = 0i64;
    let mut uniq = 0;
    let mut failures = Vec::new();
    let mut permitted = 0;
    for mode in ["token", "cookie"] {
        for who in [None, Some(Viewer), Some(Annotator), Some(Reviewer), Some(Admin)] {
            for (method, path, body, need) in &routes {
                // Fresh and not leased meanwhile by a `next` call.
                item += 1;
                while leased(item) {
                    item += 1;
                }
                uniq += 1;
                assert!(item <= n_items as i64, "more calls than fresh items");
                let path =
                    path.replace("{id}", &item.to_string()).replace("{admin_token}", &admin_token_id.to_string());
                // Fresh credentials each time: logout and password change end sessions.
                let client = match (who, mode) {
                    (None, _) => srv.anon(),
                    (Some(r), "token") => srv.bearer(&p.token(r.as_str()).await),
                    (Some(r), _) => srv.login(r.as_str()).await,
                };
                let mut base = p.store.item(item).await.unwrap().label.map(|l| l.id);
                if path.ends_with("/undo") && who.is_some_and(|r| r >= Annotator) {
                    // Something to undo: the caller's own decision on the item, over an
                    // earlier label (an item without an answer gets two decisions).
                    for _ in 0..if base.is_none() { 2 } else { 1 } {
                        let r = client
                            .post(&format!("/api/items/{item}/decision"), json!({"action": "skip", "base": base}))
                            .await;
                        assert_eq!(r.status, 200, "setting up undo: {}", r.body);
                        base = r.body["label"]["id"].as_i64();
                    }
                }
                let body = body.as_ref().map(|b| {
                    let mut b = b.clone();
                    if b["name"] == "{uniq}" {
                        b["name"] = json!(format!("u{uniq}"));
                    }
                    if b["base"] == "{base}" {
                        b["base"] = json!(base);
                    }
                    for k in ["password", "current", "new"] {
                        if b[k] == "{password}" {
                            b[k] = json!(common::PASSWORD);
                        }
                    }
                    b
                });
                let resp = client.send(method.clone(), &path, body, &[]).await;
                let allowed = match (who, need) {
                    (None, _) => false,
                    (Some(r), Min(min)) => r >= *min,
                    (Some(r), OwnerOrAdmin) => r == Admin,
                };
                let ok = match (who, allowed) {
                    (None, _) => resp.status == 401,
                    (_, true) => (200..300).contains(&resp.status),
                    (Some(_), false) => match need {
                        OwnerOrAdmin => resp.status == 404,
                        _ => resp.status == 403,
                    },
                };
                permitted += usize::from(allowed);
                assert!(resp.status < 500, "{mode} {who:?} {method} {path}: {} {}", resp.status, resp.body);
                assert!(resp.body.get("error").is_some() || resp.status < 400, "{method} {path}: not JSON");
                if !ok {
                    failures.push(format!("{mode} {who:?} {method} {path}: {} {}", resp.status, resp.body));
                }
            }
        }
    }
    assert!(failures.is_empty(), "permission matrix failures:\n{}", failures.join("\n"));
    assert!(permitted > 100, "the matrix exercised {permitted} permitted calls");

    // Pages: only the login page and assets answer without a session.
    let anon = srv.anon();
    let r = anon.get("/").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), "/login");
    for path in ["/stats", "/users"] {
        assert_eq!(anon.get(path).await.status, 303);
    }
    assert_eq!(anon.get("/login").await.status, 200);
    assert_eq!(anon.get("/assets/app.js").await.status, 200);
    assert_eq!(anon.get("/assets/index.html").await.status, 404, "pages are not assets");
    let viewer = srv.login("viewer").await;
    assert_eq!(viewer.get("/").await.status, 200);
    // A token is not a browser session: pages still want a login.
    assert_eq!(srv.bearer(&p.token("admin").await).get("/").await.status, 303);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_need_the_csrf_token_and_the_same_origin() {
    let p = Project::new(4).await;
    spread(&p, 4).await;
    p.user("ann", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let a = srv.login("ann").await;
    let x = a.next("").await.unwrap();
    let path = format!("/api/items/{}/decision", id_of(&x));
    let body = json!({"action": "skip", "base": x["item"]["label"]["id"]});
    let mut no_csrf = a.clone();
    no_csrf.csrf = false;
    let r = no_csrf.post(&path, body.clone()).await;
    assert_eq!((r.status, r.body["error"].as_str()), (403, Some("csrf")));
    let r = no_csrf.send(Method::POST, &path, Some(body.clone()), &[("x-csrf-token", "0000")]).await;
    assert_eq!(r.status, 403);
    let r = a.send(Method::POST, &path, Some(body.clone()), &[("origin", "http://evil.example")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = a.send(Method::POST, &path, Some(body.clone()), &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(r.status, 403);
    // A form post (no JSON content type) is refused too, whatever else it carries.
    let r = a.raw(Method::POST, &path, Some("application/x-www-form-urlencoded"), b"action=skip".to_vec()).await;
    assert_eq!(r.status, 415, "{}", r.body);
    // Nothing was saved by any of that.
    assert_eq!(p.store.label_history(id_of(&x)).await.unwrap().len(), x["item"]["label"].is_object() as usize);
    let origin = a.base.clone();
    let r = a.send(Method::POST, &path, Some(body.clone()), &[("origin", &origin)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Reading needs no token; bearer tokens need none either.
    assert_eq!(no_csrf.get("/api/me").await.status, 200);
    let t = p.token("ann").await;
    let y = srv.bearer(&t).next("").await.unwrap();
    let r = srv
        .bearer(&t)
        .post(
            &format!("/api/items/{}/decision", id_of(&y)),
            json!({"action": "skip", "base": y["item"]["label"]["id"]}),
        )
        .await;
    assert_eq!(r.status, 200);
    // Login from another origin is refused (login CSRF).
    let r = srv
        .anon()
        .send(
            Method::POST,
            "/api/login",
            Some(json!({"username": "ann", "password": common::PASSWORD})),
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(r.status, 403);
    srv.stop().await;
}

/// Logs in as `user` from `ip` (through a trusted proxy's X-Forwarded-For).
async fn login_from(srv: &Server, user: &str, password: &str, ip: &str) -> common::Resp {
    srv.anon()
        .send(
            Method::POST,
            "/api/login",
            Some(json!({"username": user, "password": password})),
            &[("x-forwarded-for", ip)],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_are_throttled_even_in_parallel_and_never_lock_the_real_user_out() {
    let p = Project::new(1).await;
    p.user("admin", Role::Admin).await;
    p.user("bob", Role::Reviewer).await;
    let limits = LoginLimits { per_user_ip: 5, per_ip: 12, ..LoginLimits::default() };
    let cfg = ServerConfig { login_limits: limits, trusted_proxies: vec!["127.0.0.1".parse().unwrap()], ..cfg() };
    let srv = std::sync::Arc::new(Server::start(&p.store, cfg).await);
    // 40 wrong guesses at once from one address: attempts count when they start, so only
    // 5 reach the password check.
    let guesses: Vec<_> = (0..40)
        .map(|_| {
            let srv = srv.clone();
            tokio::spawn(async move { login_from(&srv, "admin", "wrong password", "10.0.0.66").await.status })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for g in guesses {
        *statuses.entry(g.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&401), Some(&5), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&35), "{statuses:?}");
    let r = login_from(&srv, "admin", common::PASSWORD, "10.0.0.66").await;
    assert_eq!(r.status, 429, "the guessing address stays throttled, even with the right password");
    assert!(r.header("retry-after").parse::<u64>().unwrap() > 0);
    // The real admin, elsewhere, still gets in.
    let r = login_from(&srv, "admin", common::PASSWORD, "10.0.0.1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // An unknown name answers like a wrong password (no user enumeration).
    let r = login_from(&srv, "nobody", "wrong password", "10.0.0.2").await;
    assert_eq!((r.status, r.body["message"].as_str()), (401, Some("wrong user name or password")));
    // An address spraying many names is throttled as a whole.
    for i in 0..11 {
        let _ = login_from(&srv, &format!("name{i}"), "wrong password", "10.0.0.2").await;
    }
    let r = login_from(&srv, "bob", common::PASSWORD, "10.0.0.2").await;
    assert_eq!(r.status, 429, "the address is throttled");
    assert_eq!(login_from(&srv, "bob", common::PASSWORD, "10.0.0.3").await.status, 200);
    std::sync::Arc::into_inner(srv).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_ignored_without_a_trusted_proxy() {
    let p = Project::new(1).await;
    p.user("ann", Role::Reviewer).await;
    let limits = LoginLimits { per_user_ip: 2, ..LoginLimits::default() };
    let srv = Server::start(&p.store, ServerConfig { login_limits: limits, ..cfg() }).await;
    for i in 0..2 {
        assert_eq!(login_from(&srv, "ann", "wrong password", &format!("10.9.0.{i}")).await.status, 401);
    }
    // A made-up X-Forwarded-For does not buy a fresh address.
    assert_eq!(login_from(&srv, "ann", "wrong password", "10.9.0.9").await.status, 429);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_revokes_tokens_and_tokens_need_the_password_and_expire() {
    let p = Project::new(1).await;
    p.user("ann", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let a = srv.login("ann").await;
    // Minting asks for the password again.
    let r = a.post("/api/tokens", json!({"name": "ci", "password": "not it at all"})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"], "wrong_password");
    let r = a.post("/api/tokens", json!({"name": "ci"})).await;
    assert_eq!(r.status, 422, "the password is required: {}", r.body);
    let r = a.post("/api/tokens", json!({"name": "ci", "password": common::PASSWORD})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_string();
    let expires = r.body["info"]["expires_ms"].as_i64().expect("tokens expire");
    let days = (expires - now_ms()) as f64 / 86_400_000.0;
    assert!((89.9..=90.1).contains(&days), "default lifetime {days} days");
    let t = srv.bearer(&token);
    assert_eq!(t.get("/api/me").await.status, 200);
    // Changing the password ends the sessions and revokes the tokens.
    let r = a.post("/api/me/password", json!({"current": common::PASSWORD, "new": "a brand new password"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(t.get("/api/me").await.status, 401, "the token outlived the password change");
    assert_eq!(a.get("/api/me").await.status, 401, "the session outlived the password change");
    let tokens = p.store.tokens(Some("ann")).await.unwrap();
    assert!(tokens.iter().all(|t| t.revoked_at.is_some()), "{tokens:?}");
    // Wrong current passwords are throttled like logins.
    let b = srv.login_with("ann", "a brand new password").await.unwrap();
    let mut last = 0;
    for _ in 0..6 {
        last = b.post("/api/me/password", json!({"current": "wrong wrong", "new": "whatever123"})).await.status;
    }
    assert_eq!(last, 429);
    srv.stop().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_httponly_strict_and_secure_behind_tls() {
    let p = Project::new(1).await;
    p.user("ann", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let body = json!({"username": "ann", "password": common::PASSWORD});
    let r = srv.anon().post("/api/login", body.clone()).await;
    let cookie = r.header("set-cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"));
    let r = srv.anon().send(Method::POST, "/api/login", Some(body.clone()), &[("x-forwarded-proto", "https")]).await;
    assert!(r.header("set-cookie").contains("; Secure"));
    // The database holds only a hash of the session secret.
    let secret = cookie.split(';').next().unwrap().split('=').nth(1).unwrap().to_string();
    let raw = std::fs::read(p.db()).unwrap();
    let wal = std::fs::read(p.db().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "session secret stored in clear");
    }
    // Logging out ends the session.
    let a = srv.login("ann").await;
    assert_eq!(a.post("/api/logout", json!({})).await.status, 200);
    assert_eq!(a.get("/api/me").await.status, 401);
    // Secure cookies on demand.
    let srv2 = Server::start(&p.store, ServerConfig { secure_cookies: true, ..cfg() }).await;
    assert!(srv2.anon().post("/api/login", body).await.header("set-cookie").contains("; Secure"));
    srv.stop().await;
    srv2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_with_a_json_message_never_a_500() {
    let p = Project::new(3).await;
    spread(&p, 3).await;
    p.user("ann", Role::Admin).await;
    let srv = Server::start(&p.store, cfg()).await;
    let a = srv.login("ann").await;
    let x = a.next("").await.unwrap();
    let dec = format!("/api/items/{}/decision", id_of(&x));
    let huge = vec![b'x'; 400 * 1024];
    let mut cases: Vec<(&str, common::Resp, u16)> = vec![
        ("oversized body", a.raw(Method::POST, &dec, Some("application/json"), huge).await, 413),
        ("not JSON", a.raw(Method::POST, &dec, Some("application/json"), b"{\"action\": ".to_vec()).await, 400),
        ("wrong content type", a.raw(Method::POST, &dec, Some("text/plain"), b"{}".to_vec()).await, 415),
        ("no content type", a.raw(Method::POST, &dec, None, b"{}".to_vec()).await, 415),
        ("missing field", a.post(&dec, json!({"base": null})).await, 422),
        ("unknown field", a.post(&dec, json!({"action": "accept", "bogus": 1})).await, 422),
        ("unknown action", a.post(&dec, json!({"action": "approve"})).await, 422),
        ("wrong type", a.post(&dec, json!({"action": "accept", "base": "seven"})).await, 422),
        (
            "empty edit",
            a.post(&dec, json!({"action": "edit", "base": x["item"]["label"]["id"], "answer": {"text": "  "}})).await,
            400,
        ),
        ("edit without answer", a.post(&dec, json!({"action": "edit", "base": x["item"]["label"]["id"]})).await, 400),
        ("answer too long", a.post(&dec, json!({"action": "edit", "answer": {"text": "y".repeat(30_000)}})).await, 400),
        (
            "foreign candidate",
            a.post(&dec, json!({"action": "accept", "base": x["item"]["label"]["id"], "candidate_id": 999})).await,
            400,
        ),
        ("unknown item", a.post("/api/items/99999/decision", json!({"action": "skip"})).await, 404),
        ("unknown item get", a.get("/api/items/99999").await, 404),
        ("unknown item history", a.get("/api/items/99999/history").await, 404),
        ("unknown item lease", a.post("/api/items/99999/lease", json!({})).await, 404),
        ("negative id", a.get("/api/items/-5").await, 404),
        ("id not a number", a.get("/api/items/abc").await, 400),
        ("id too large", a.get("/api/items/99999999999999999999999").await, 400),
        ("unknown image", a.get("/api/images/4242").await, 404),
        ("path in image id", a.get("/api/images/..%2F..%2Fetc%2Fpasswd").await, 400),
        ("bad filter number", a.post("/api/items/next?min_conf=abc", json!({})).await, 400),
        ("bad status filter", a.post("/api/items/next?status=done", json!({})).await, 400),
        ("inverted range", a.post("/api/items/next?min_conf=0.9&max_conf=0.1", json!({})).await, 400),
        ("bad task", a.get("/api/items?task=detect").await, 400),
        ("unknown route", a.get("/api/nope").await, 404),
        ("unknown page", a.get("/nope").await, 404),
        ("wrong method", a.send(Method::PUT, "/api/items/1", Some(json!({})), &[]).await, 405),
        ("unknown asset", a.get("/assets/..%2Fsrc%2Flib.rs").await, 404),
        ("unknown user", a.send(Method::PATCH, "/api/users/ghost", Some(json!({"role": "viewer"})), &[]).await, 404),
        ("bad role", a.post("/api/users", json!({"name": "x", "role": "root"})).await, 422),
        ("bad user name", a.post("/api/users", json!({"name": "<b>", "role": "viewer"})).await, 400),
        (
            "short password",
            a.post("/api/users", json!({"name": "shorty", "role": "viewer", "password": "123"})).await,
            400,
        ),
        ("duplicate user", a.post("/api/users", json!({"name": "ann", "role": "viewer"})).await, 409),
        ("unknown token", a.send(Method::DELETE, "/api/tokens/777", None, &[]).await, 404),
        (
            "bad expiry",
            a.post("/api/tokens", json!({"name": "t", "expires_days": 0, "password": common::PASSWORD})).await,
            400,
        ),
        (
            "undo nothing",
            a.post(&format!("/api/items/{}/undo", id_of(&x)), json!({"base": x["item"]["label"]["id"]})).await,
            400,
        ),
        ("bad bearer", srv.bearer("mmt_nope").get("/api/me").await, 401),
        (
            "malformed authorization",
            srv.anon().send(Method::GET, "/api/me", None, &[("authorization", "Basic abc")]).await,
            401,
        ),
        (
            "garbage cookie",
            srv.anon()
                .send(Method::GET, "/api/me", None, &[("cookie", &format!("mmloop_session={}", "z".repeat(5000)))])
                .await,
            401,
        ),
        (
            "login bad JSON",
            srv.anon().raw(Method::POST, "/api/login", Some("application/json"), b"{not json".to_vec()).await,
            400,
        ),
        ("login missing field", srv.anon().post("/api/login", json!({"username": "ann"})).await, 422),
    ];
    let r = a.send(Method::POST, "/api/items/next?max_conf=1e999", Some(json!({})), &[]).await;
    cases.push(("infinite number", r, 400));
    let mut failures = Vec::new();
    for (what, r, want) in &cases {
        let is_json = r.header("content-type").starts_with("application/json");
        if r.status != *want || !is_json || !r.body["message"].is_string() || !r.body["error"].is_string() {
            failures.push(format!(
                "{what}: want {want} JSON, got {} {} {:?}",
                r.status,
                r.header("content-type"),
                r.body
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And the server still works.
    assert_eq!(a.get("/api/me").await.status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_come_from_the_image_table_with_cache_headers() {
    let p = Project::new(2).await;
    p.user("v", Role::Viewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let v = srv.login("v").await;
    let item = v.get("/api/items/1").await.body;
    let img = &item["item"]["images"][0];
    assert!(img.get("path").is_none(), "server paths never reach the client");
    let url = img["url"].as_str().unwrap();
    let r = v.get(url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "image/png");
    assert!(r.header("cache-control").contains("immutable"));
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.bytes, common::png(0));
    let etag = r.header("etag");
    assert_eq!(etag, format!("\"{}\"", img["sha256"].as_str().unwrap()));
    let r = v.send(Method::GET, url, None, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.bytes.is_empty());
    srv.stop().await;
}

/// A dataset image replaced behind the project's back (a link to /etc/passwd, a FIFO,
/// other bytes) is refused with an error naming the item, and the server keeps serving.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_changed_after_import_are_refused_never_read_through() {
    let p = Project::new(3).await;
    p.user("v", Role::Viewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let v = srv.login("v").await;
    let path_of = |id: i64| {
        let img = futures_block(p.store.image(id)).unwrap().unwrap();
        img.path
    };
    // 1: a symbolic link to a file the server can read.
    let one = path_of(1);
    std::fs::remove_file(&one).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &one).unwrap();
    let r = v.get("/api/images/1").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "image_changed");
    let msg = r.body["message"].as_str().unwrap();
    assert!(msg.contains("(item 1)") && msg.contains("not a regular file"), "{msg}");
    assert!(!String::from_utf8_lossy(&r.bytes).contains("root:"), "the link was followed");
    // 2: a FIFO (reading it would hang a worker).
    let two = path_of(2);
    std::fs::remove_file(&two).unwrap();
    let c = std::ffi::CString::new(two.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let r = tokio::time::timeout(Duration::from_secs(10), v.get("/api/images/2")).await.expect("no hang");
    assert_eq!(r.status, 409, "{}", r.body);
    // 3: other bytes of the same size.
    let three = path_of(3);
    let mut bytes = std::fs::read(&three).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(&three, &bytes).unwrap();
    let r = v.get("/api/images/3").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("changed since it was imported"), "{}", r.body);
    // Gone altogether: 404 with a hint.
    std::fs::remove_file(&three).unwrap();
    let r = v.get("/api/images/3").await;
    assert_eq!((r.status, r.body["error"].as_str()), (404, Some("image_missing")));
    assert_eq!(v.get("/api/me").await.status, 200);
    srv.stop().await;
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_undo_and_history_are_audited_and_roles_hold() {
    let specs = vec![
        Spec {
            question: "How many?".into(),
            answer: Some("2".into()),
            all: vec!["2".into(), "two".into(), "3".into()],
            ..Default::default()
        },
        Spec { question: "What colour?".into(), ..Default::default() },
        Spec {
            task: Some(mmloop_core::Task::Caption),
            question: "Describe.".into(),
            answer: Some("A cat.".into()),
            ..Default::default()
        },
    ];
    let p = Project::with(specs).await;
    p.candidates(&[(2, "m1", "red", Some(0.4), json!([]))]).await;
    p.user("rev", Role::Reviewer).await;
    p.user("ann", Role::Annotator).await;
    let srv = Server::start(&p.store, cfg()).await;
    let (rev, ann) = (srv.login("rev").await, srv.login("ann").await);
    // The item with a model answer comes first; accepting takes the candidate's answer.
    let x = rev.next("").await.unwrap();
    assert_eq!(id_of(&x), 2);
    let r = rev.accept(&x).await;
    assert_eq!(r.body["label"]["status"], "accepted");
    assert_eq!(r.body["label"]["answer"]["text"], "red");
    assert_eq!(r.body["label"]["lead_time_ms"], 1200);
    // Then the imported items in id order; VQAv2-style answers are edited together.
    let one = rev.next("").await.unwrap();
    assert_eq!(id_of(&one), 1);
    assert_eq!(one["item"]["label"]["answer"]["all"].as_array().unwrap().len(), 3);
    let r = rev
        .post(
            "/api/items/1/decision",
            json!({"action": "edit", "base": one["item"]["label"]["id"], "lead_time_ms": 5000,
                   "answer": {"text": "2", "all": [{"answer": "2"}, {"answer": "2"}, {"answer": "two"}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["label"]["status"], "edited");
    assert_eq!(r.body["label"]["answer"]["all"][2]["answer"], "two");
    // Undo restores the imported answers as a new label, and gives the item back under a lease.
    let edited = r.body["label"]["id"].clone();
    let r = rev.post("/api/items/1/undo", json!({"base": edited})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["label"]["status"], "imported");
    assert_eq!(r.body["label"]["action"], "undo");
    assert_eq!(r.body["label"]["answer"], one["item"]["label"]["answer"]);
    let again = rev.get("/api/items/1").await.body;
    assert_eq!(again["lease"]["user"], "rev");
    assert_eq!(again["can_undo"], true);
    let h = rev.get("/api/items/1/history").await.body;
    let actions: Vec<&str> = h["labels"].as_array().unwrap().iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["undo", "edit", "import"]);
    let ev: Vec<&Value> = h["events"].as_array().unwrap().iter().filter(|e| e["action"] == "label.save").collect();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0]["actor"], "rev");
    assert_eq!(ev[1]["before"]["status"], "imported");
    assert_eq!(ev[1]["after"]["status"], "edited");
    assert_eq!(ev[1]["after"]["lead_time_ms"], 5000);
    // An annotator may not overrule a reviewer, reject, or undo someone else's decision.
    let two = ann.get("/api/items/2").await.body;
    let base = two["item"]["label"]["id"].clone();
    let r =
        ann.post("/api/items/2/decision", json!({"action": "edit", "base": base, "answer": {"text": "blue"}})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = ann.post("/api/items/2/undo", json!({"base": base})).await;
    assert_eq!(r.status, 403);
    let r = ann.post("/api/items/3/decision", json!({"action": "reject", "base": null})).await;
    assert_eq!(r.status, 403);
    // Released by the reviewer, the caption goes to the annotator, who edits and undoes their own.
    rev.send(Method::DELETE, "/api/items/1/lease", None, &[]).await;
    let c = ann.next("?task=caption").await.unwrap();
    assert_eq!(id_of(&c), 3);
    let r = ann
        .post(
            "/api/items/3/decision",
            json!({"action": "edit", "base": c["item"]["label"]["id"], "answer": {"text": "A black cat."}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = ann.post("/api/items/3/undo", json!({"base": r.body["label"]["id"]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The audit log (reviewers) shows every save; annotators cannot read it.
    assert_eq!(ann.get("/api/audit").await.status, 403);
    let log = rev.get("/api/audit?limit=50").await.body;
    let saves = log["events"].as_array().unwrap().iter().filter(|e| e["action"] == "label.save").count();
    assert_eq!(saves, 5);
    assert!(p.store.audit_verify().await.unwrap().ok());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_filters_and_risk_order() {
    let p = Project::new(40).await;
    // Item 7: lowest confidence; items 3 and 4 equal confidence, 4 with more flags.
    p.candidates(&[
        (3, "small", "a", Some(0.2), json!([{"flag": "hedge"}])),
        (4, "small", "b", Some(0.2), json!([{"flag": "hedge"}, {"flag": "short"}])),
        (7, "big", "c", Some(0.05), json!([])),
        (9, "big", "d", Some(0.9), json!([{"flag": "number", "why": "counts"}])),
        (12, "big", "e", None, json!([])),
    ])
    .await;
    p.user("r", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let t = p.token("r").await;
    let c = srv.bearer(&t);
    let mut order = Vec::new();
    for _ in 0..7 {
        let x = c.next("").await.unwrap();
        order.push(id_of(&x));
        assert_eq!(
            c.post(
                &format!("/api/items/{}/decision", id_of(&x)),
                json!({"action": "skip", "base": x["item"]["label"]["id"]})
            )
            .await
            .status,
            200
        );
    }
    // Unknown confidence first, then by confidence, more flags first; then unanswered items (1, 4 done...).
    assert_eq!(order[..5], [12, 7, 4, 3, 9]);
    assert_eq!(order[5], 1, "then items without an answer (every third: 1, 4, 7...)");
    // Filters on the skipped queue (re-review): oldest decision first.
    let x = c.next("?status=skipped").await.unwrap();
    assert_eq!(id_of(&x), 12);
    c.send(Method::DELETE, &format!("/api/items/{}/lease", id_of(&x)), None, &[]).await;
    let x = c.next("?status=skipped&flag=hedge").await.unwrap();
    assert_eq!(id_of(&x), 4);
    c.send(Method::DELETE, "/api/items/4/lease", None, &[]).await;
    let x = c.next("?status=skipped&min_conf=0.5").await.unwrap();
    assert_eq!(id_of(&x), 9);
    c.send(Method::DELETE, "/api/items/9/lease", None, &[]).await;
    let x = c.next("?status=skipped&model=small&max_conf=0.3").await.unwrap();
    assert_eq!(id_of(&x), 4);
    c.send(Method::DELETE, "/api/items/4/lease", None, &[]).await;
    // Split and tag filters on the default queue.
    let x = c.next("?split=val&tag=even").await.unwrap();
    let item = &x["item"];
    assert_eq!(item["split"], "val");
    assert_eq!(item["tags"][0], "even");
    assert!(c.next("?split=val&tag=odd").await.is_none(), "val items are all even ones");
    assert!(c.next("?flag=nonexistent").await.is_none());
    // Browsing with filters.
    let list = c.get("/api/items?status=skipped&limit=3").await.body;
    let ids: Vec<i64> = list["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 3, 4]);
    let f = c.get("/api/facets").await.body;
    assert_eq!(f["flags"], json!(["hedge", "number", "short"]));
    assert_eq!(f["models"], json!(["big", "small"]));
    assert_eq!(f["splits"], json!(["train", "val"]));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_list_the_training_runs() {
    let p = Project::new(2).await;
    p.user("v", Role::Viewer).await;
    let config =
        json!({"model": "HuggingFaceTB/SmolVLM-256M-Instruct", "version": "v1", "split": "train", "examples": 2});
    let run = p.store.start_run_on("train", "cli:t", config, Some("ab".repeat(32))).await.unwrap();
    let summary = json!({
        "global_step": 4, "max_steps": 4, "losses": [[1, 2.5], [4, 1.25]], "eval_losses": [[4, 1.5]],
        "last_model_checkpoint": "runs/a/checkpoint-4",
    });
    p.store.finish_run(run, "cli:t", mmloop_core::RunStatus::Done, summary).await.unwrap();
    p.store.start_run("infer", "cli:t", json!({"model": "m"})).await.unwrap();
    let srv = Server::start(&p.store, cfg()).await;
    let c = srv.bearer(&p.token("v").await);
    let t = c.get("/api/stats").await.body["training"].clone();
    assert_eq!(t.as_array().unwrap().len(), 1, "only training runs: {t}");
    let r = &t[0];
    assert_eq!((r["run"].as_i64(), r["status"].as_str(), r["version"].as_str()), (Some(run), Some("done"), Some("v1")));
    assert_eq!(
        (r["global_step"].as_u64(), r["loss"].as_f64(), r["eval_loss"].as_f64()),
        (Some(4), Some(1.25), Some(1.5))
    );
    assert_eq!(r["checkpoint"], "runs/a/checkpoint-4");
    assert_eq!(r["engine"], "mmloop");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_give_rates_by_confidence_bucket_and_flag() {
    let p = Project::new(10).await;
    p.candidates(&[
        (1, "m", "a", Some(0.15), json!([{"flag": "hedge"}])),
        (2, "m", "b", Some(0.12), json!([{"flag": "hedge"}])),
        (3, "m", "c", Some(0.95), json!([])),
        (4, "m", "d", Some(0.91), json!([])),
    ])
    .await;
    p.user("r", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let c = srv.bearer(&p.token("r").await);
    let plan = BTreeMap::from([(1, "edit"), (2, "accept"), (3, "accept"), (4, "reject")]);
    for _ in 0..4 {
        let x = c.next("").await.unwrap();
        let id = id_of(&x);
        let action = plan[&id];
        let mut body = json!({"action": action, "base": x["item"]["label"]["id"], "candidate_id": x["candidates"][0]["id"], "lead_time_ms": 3000});
        if action == "edit" {
            body["answer"] = json!({"text": "fixed"});
        }
        assert_eq!(c.post(&format!("/api/items/{id}/decision"), body).await.status, 200);
    }
    let s = c.get("/api/stats").await.body["stats"].clone();
    assert_eq!(s["items"], 10);
    assert_eq!(s["to_review"], 6);
    assert_eq!(s["with_candidates"], 4);
    let b1 = &s["by_confidence"][1];
    assert_eq!(
        (b1["decided"].as_u64(), b1["acceptance_rate"].as_f64(), b1["edit_rate"].as_f64()),
        (Some(2), Some(0.5), Some(0.5))
    );
    let b9 = &s["by_confidence"][9];
    assert_eq!((b9["decided"].as_u64(), b9["reject_rate"].as_f64()), (Some(2), Some(0.5)));
    let flags: BTreeMap<String, Value> =
        s["by_flag"].as_array().unwrap().iter().map(|b| (b["key"].as_str().unwrap().to_string(), b.clone())).collect();
    assert_eq!(flags["hedge"]["decided"], 2);
    assert_eq!(flags["(no flag)"]["rejected"], 1);
    let r = &s["reviewers"][0];
    assert_eq!((r["actor"].as_str(), r["decisions"].as_u64()), (Some("r"), Some(4)));
    assert_eq!(r["items_per_hour"].as_f64(), Some(1200.0));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_management_is_audited_and_disabling_takes_effect() {
    let p = Project::new(3).await;
    spread(&p, 3).await;
    p.user("boss", Role::Admin).await;
    let srv = Server::start(&p.store, cfg()).await;
    let boss = srv.login("boss").await;
    let r = boss.post("/api/users", json!({"name": "eve", "role": "reviewer", "password": "eve's password"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let eve = srv.login_with("eve", "eve's password").await.unwrap();
    let token = boss
        .post("/api/tokens", json!({"name": "eve-ci", "user": "eve", "expires_days": 30, "password": common::PASSWORD}))
        .await;
    assert_eq!(token.status, 201);
    let t = srv.bearer(token.body["token"].as_str().unwrap());
    let item = eve.next("").await.unwrap();
    assert_eq!(t.get("/api/me").await.status, 200);
    let r = boss.send(Method::PATCH, "/api/users/eve", Some(json!({"role": "annotator"})), &[]).await;
    assert_eq!(r.body["user"]["role"], "annotator");
    assert_eq!(eve.get("/api/audit").await.status, 403, "the new role holds at once");
    let r = boss.send(Method::PATCH, "/api/users/eve", Some(json!({"disabled": true})), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(eve.get("/api/me").await.status, 401, "sessions end");
    assert_eq!(t.get("/api/me").await.status, 401, "tokens stop");
    assert!(srv.login_with("eve", "eve's password").await.is_err());
    let again = boss.get(&format!("/api/items/{}", id_of(&item))).await.body;
    assert!(again["lease"].is_null(), "the disabled user's items go back to the queue");
    // The last admin cannot lock everyone out.
    let r = boss.send(Method::PATCH, "/api/users/boss", Some(json!({"role": "viewer"})), &[]).await;
    assert_eq!(r.status, 400);
    // Revoked tokens stop working.
    let mine = boss.post("/api/tokens", json!({"name": "mine", "password": common::PASSWORD})).await.body;
    let tb = srv.bearer(mine["token"].as_str().unwrap());
    assert_eq!(tb.get("/api/me").await.status, 200);
    let r = boss.send(Method::DELETE, &format!("/api/tokens/{}", mine["info"]["id"]), None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(tb.get("/api/me").await.status, 401);
    let log = boss.get("/api/audit?limit=100").await.body;
    let actions: HashSet<&str> =
        log["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["user.add", "user.role", "user.disable", "token.create", "token.revoke", "user.login"] {
        assert!(actions.contains(a), "{a} is not in the audit log: {actions:?}");
    }
    let add = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.add" && e["entity"] == "user:eve")
        .unwrap();
    assert_eq!(add["actor"], "boss");
    assert!(!add.to_string().contains("argon2"), "no password hash in the audit log");
    assert!(p.store.audit_verify().await.unwrap().ok());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_comes_back_verbatim_and_the_ui_never_parses_it_as_html() {
    let nasty = ["<script>window.__xss=1</script>", "\"><img src=x onerror=\"window.__xss=1\">"];
    let specs = nasty
        .iter()
        .map(|s| Spec {
            task: Some(mmloop_core::Task::Caption),
            question: s.to_string(),
            answer: Some(s.to_string()),
            ..Default::default()
        })
        .collect();
    let p = Project::with(specs).await;
    p.candidates(&[(1, "<b>m</b>", nasty[1], Some(0.1), json!([{"flag": "<i>x</i>", "why": nasty[0]}]))]).await;
    p.user("v", Role::Viewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let v = srv.login("v").await;
    let x = v.get("/api/items/1").await.body;
    assert_eq!(x["item"]["question"], nasty[0]);
    assert_eq!(x["candidates"][0]["answer"], nasty[1]);
    assert_eq!(x["candidates"][0]["flags"][0]["why"], nasty[0]);
    // The page is protected by a CSP without inline script, and the UI code has no way to
    // turn text into markup.
    let page = v.get("/").await;
    let csp = page.header("content-security-policy");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    for (name, _, body) in mmloop_server_assets() {
        for bad in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            assert!(!body.contains(bad), "{name} uses {bad}");
        }
    }
    srv.stop().await;
}

fn mmloop_server_assets() -> Vec<(String, String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), String::new(), std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_page_weighs_under_200_kb() {
    let p = Project::new(1).await;
    p.user("v", Role::Viewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let v = srv.login("v").await;
    let page = v.get("/").await;
    let html = String::from_utf8(page.bytes.clone()).unwrap();
    let mut total = page.bytes.len();
    // Every asset the app can load (whether or not the first view needs it).
    for (name, _, _) in mmloop_server_assets() {
        let file = std::path::Path::new(&name).file_name().unwrap().to_string_lossy().into_owned();
        if file.ends_with(".html") {
            continue;
        }
        let r = v.get(&format!("/assets/{file}")).await;
        assert_eq!(r.status, 200, "{file}");
        assert!(r.header("cache-control").contains("no-cache"));
        total += r.bytes.len();
    }
    assert!(html.contains("/assets/app.js"));
    assert!(!html.contains("http://") && !html.contains("https://"), "no CDN: everything from this server");
    assert!(total < 200 * 1024, "the review UI weighs {total} bytes");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_secret_is_not_a_token_and_a_token_is_not_a_session() {
    let p = Project::new(1).await;
    p.user("ann", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let session = srv.login("ann").await;
    let token = p.token("ann").await;
    assert_eq!(session.get("/api/me").await.status, 200);
    assert_eq!(srv.bearer(&token).get("/api/me").await.status, 200);
    let Auth::Cookie { cookie, .. } = &session.auth else { panic!("login gives a cookie session") };
    let secret = cookie.split_once('=').unwrap().1.to_string();
    // The session secret sent as a bearer token, and the token sent as a cookie: refused.
    let r = srv.bearer(&secret).get("/api/me").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let as_cookie = common::Client::with_auth(
        &srv.url,
        Auth::Cookie { cookie: format!("mmloop_session={token}"), csrf: String::new() },
    );
    assert_eq!(as_cookie.get("/api/me").await.status, 401);
    srv.stop().await;
}

/// The JSON of one review item, as browsers and scripts get it, with what changes from run to
/// run (times, ids of the temporary project) replaced: a renamed or moved field is a diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_review_item_json_keeps_its_shape() {
    fn stable(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if matches!(k.as_str(), "created_at" | "at" | "granted_ms" | "until_ms" | "expires_ms" | "sha256") {
                        *x = Value::from(format!("[{k}]"));
                    } else {
                        stable(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(stable),
            _ => {}
        }
    }
    let p = Project::new(1).await;
    p.candidates(&[(
        1,
        "m1",
        "maybe red",
        Some(0.42),
        json!([{"flag": "hedge", "why": "says 'maybe'", "span": [0, 5]}, {"flag": "short"}]),
    )])
    .await;
    p.user("ann", Role::Reviewer).await;
    let srv = Server::start(&p.store, cfg()).await;
    let a = srv.login("ann").await;
    let mut item = a.next("").await.unwrap();
    stable(&mut item);
    insta::assert_json_snapshot!("review_item", item);
    srv.stop().await;
}
