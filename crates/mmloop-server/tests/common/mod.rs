//! Test support: a project with items (made through the store's import), model candidates
//! written the way an engine would (rows in `candidates`), a real server on 127.0.0.1, and
//! an HTTP client that logs in with a cookie (and CSRF token) or an API token.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use mmloop_core::{Answer, HumanAnswer, ImageSource, Location, Record, Task};
use mmloop_server::ServerConfig;
use mmloop_store::review::Role;
use mmloop_store::{ImportOptions, Incoming, Store};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";

pub fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(
        6 + seed % 5,
        4,
        image::Rgb([(seed * 37 % 256) as u8, (seed * 91 % 256) as u8, (seed / 256 % 256) as u8]),
    );
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// What one test item is.
#[derive(Clone, Default)]
pub struct Spec {
    pub task: Option<Task>,
    pub question: String,
    pub answer: Option<String>,
    pub all: Vec<String>,
    pub split: Option<String>,
    pub tags: Vec<String>,
}

pub struct Project {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Project {
    /// `n` VQA items, every third without an answer, splits train/val, tags by parity.
    pub async fn new(n: usize) -> Project {
        let specs = (0..n)
            .map(|i| Spec {
                question: format!("What is in picture {i}?"),
                answer: (i % 3 != 0).then(|| format!("thing {i}")),
                split: Some(if i % 4 == 0 { "val".into() } else { "train".into() }),
                tags: vec![if i % 2 == 0 { "even".into() } else { "odd".into() }],
                ..Default::default()
            })
            .collect();
        Project::with(specs).await
    }

    pub async fn with(specs: Vec<Spec>) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("p"), Some("test"), "test").await.unwrap();
        let file = Arc::new(dir.path().join("data.jsonl"));
        std::fs::write(&*file, "{}\n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, s) in specs.into_iter().enumerate() {
            let mut r = Record::new(s.task.unwrap_or(Task::Vqa), s.question, Location::index(&file, i as u64));
            r.id = Some(format!("t{i}"));
            r.images = vec![ImageSource::Bytes(png(i as u32).into())];
            if s.answer.is_some() || !s.all.is_empty() {
                r.answer = Some(Answer {
                    text: s.answer,
                    all: s.all.into_iter().map(|a| HumanAnswer { answer: a, confidence: None }).collect(),
                });
            }
            r.split = s.split;
            r.tags = s.tags;
            tx.send(Incoming::Record(Box::new(r))).unwrap();
        }
        tx.send(Incoming::End).unwrap();
        let opts = ImportOptions {
            format: "jsonl".into(),
            file: (*file).clone(),
            images_dir: dir.path().to_path_buf(),
            copy_images: true,
            skip_bad: false,
            actor: "test".into(),
            config: json!({}),
        };
        store.import(opts, rx, Default::default(), Box::new(())).await.unwrap();
        Project { dir, store }
    }

    pub fn db(&self) -> PathBuf {
        self.store.paths().db.clone()
    }

    /// Stores model candidates through the store's API, as `mmloop infer` does (one batch
    /// per model, audited).
    pub async fn candidates(&self, rows: &[(i64, &str, &str, Option<f64>, Value)]) {
        let mut models: Vec<&str> = rows.iter().map(|r| r.1).collect();
        models.dedup();
        for model in models {
            let batch = rows
                .iter()
                .filter(|r| r.1 == model)
                .map(|(item, _, answer, conf, flags)| {
                    mmloop_store::NewCandidate::answered(
                        *item,
                        mmloop_core::Candidate {
                            answer: answer.to_string(),
                            confidence: *conf,
                            detail: None,
                            flags: serde_json::from_value(flags.clone()).expect("flags"),
                        },
                    )
                })
                .collect();
            self.store.add_candidates(None, model, mmloop_core::Digest([0; 32]), "test", batch).await.unwrap();
        }
    }

    pub async fn user(&self, name: &str, role: Role) {
        self.store.create_user(name, role, Some(PASSWORD), "test").await.unwrap();
    }

    pub async fn token(&self, name: &str) -> String {
        self.store.create_token(name, "test", None, "test").await.unwrap().1.secret
    }
}

pub struct Server {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(store: &Store, cfg: ServerConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(mmloop_server::serve(store.clone(), listener, cfg, async {
            let _ = rx.await;
        }));
        Server { url, stop: Some(tx), handle: Some(handle) }
    }

    pub fn anon(&self) -> Client {
        Client::new(&self.url, Auth::None)
    }

    pub fn bearer(&self, token: &str) -> Client {
        Client::new(&self.url, Auth::Bearer(token.to_string()))
    }

    /// Logs in with a cookie session; panics unless it works.
    pub async fn login(&self, user: &str) -> Client {
        self.login_with(user, PASSWORD).await.unwrap_or_else(|r| panic!("login {user}: {} {}", r.status, r.body))
    }

    pub async fn login_with(&self, user: &str, password: &str) -> Result<Client, Resp> {
        let r = self.anon().post("/api/login", json!({"username": user, "password": password})).await;
        if r.status != 200 {
            return Err(r);
        }
        let cookie = r.header("set-cookie").split(';').next().unwrap().to_string();
        let csrf = r.body["csrf"].as_str().unwrap().to_string();
        Ok(Client::new(&self.url, Auth::Cookie { cookie, csrf }))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Cookie { cookie: String, csrf: String },
    Bearer(String),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub auth: Auth,
    /// Send the CSRF header with cookie sessions (tests turn it off to see the refusal).
    pub csrf: bool,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }
}

impl Client {
    pub fn with_auth(base: &str, auth: Auth) -> Client {
        Client::new(base, auth)
    }

    fn new(base: &str, auth: Auth) -> Client {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Client { http, base: base.to_string(), auth, csrf: true }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Value>, extra: &[(&str, &str)]) -> Resp {
        let mut rb = self.http.request(method.clone(), format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => {}
            Auth::Cookie { cookie, csrf } => {
                rb = rb.header("cookie", cookie);
                if self.csrf && method != Method::GET {
                    rb = rb.header("x-csrf-token", csrf);
                }
            }
            Auth::Bearer(t) => rb = rb.header("authorization", format!("Bearer {t}")),
        }
        for (k, v) in extra {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_string());
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap().to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { status, headers, body, bytes }
    }

    pub async fn raw(&self, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Auth::Cookie { cookie, csrf } = &self.auth {
            rb = rb.header("cookie", cookie).header("x-csrf-token", csrf);
        }
        if let Auth::Bearer(t) = &self.auth {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        let r = rb.body(body).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap().to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { status, headers, body, bytes }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    pub async fn next(&self, query: &str) -> Option<Value> {
        let r = self.post(&format!("/api/items/next{query}"), json!({})).await;
        match r.status {
            200 => Some(r.body),
            204 => None,
            s => panic!("next: {s} {}", r.body),
        }
    }

    /// Accepts what the item shows (its primary candidate, else its answer).
    pub async fn accept(&self, item: &Value) -> Resp {
        let id = item["item"]["id"].as_i64().unwrap();
        let base = item["item"]["label"]["id"].as_i64();
        let cand = item["candidates"][0]["id"].as_i64();
        self.post(
            &format!("/api/items/{id}/decision"),
            json!({"action": "accept", "base": base, "candidate_id": cand, "lead_time_ms": 1200}),
        )
        .await
    }
}

pub fn id_of(item: &Value) -> i64 {
    item["item"]["id"].as_i64().unwrap()
}
