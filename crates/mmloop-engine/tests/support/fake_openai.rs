//! A minimal OpenAI-compatible server on 127.0.0.1 for tests and the overhead benchmark:
//! `POST /v1/chat/completions` answers what a script says (a completion with logprobs, an
//! error status, a delay), `GET /v1/models` lists one model. It counts requests and the
//! most it ever had in flight, and keeps every request body.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// What the server does with one request.
pub enum Reply {
    /// 200 with a chat completion of this text; each whitespace-separated piece is one
    /// token with the given log-probability.
    Answer { text: String, logprob: f64, with_logprobs: bool },
    /// Any status and JSON body, with an optional Retry-After (seconds).
    Status { status: u16, body: Value, retry_after: Option<f64> },
    /// Waits, then replies.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    pub fn answer(text: &str, logprob: f64) -> Reply {
        Reply::Answer { text: text.into(), logprob, with_logprobs: true }
    }
}

pub type Script = dyn Fn(&Value, usize) -> Reply + Send + Sync;

pub struct Shared {
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    pub keep_bodies: bool,
    script: Box<Script>,
}

pub struct FakeServer {
    /// The API base, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    pub state: Arc<Shared>,
}

impl FakeServer {
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
    pub fn bodies(&self) -> Vec<Value> {
        self.state.bodies.lock().unwrap().clone()
    }
}

/// The question text of a request (the last user message's text part).
pub fn question(req: &Value) -> String {
    let last = req["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
        _ => String::new(),
    }
}

fn completion(req: &Value, text: &str, lp: f64, with_logprobs: bool) -> Value {
    let pieces: Vec<String> = {
        let mut out = Vec::new();
        for (i, w) in text.split(' ').enumerate() {
            out.push(if i == 0 { w.to_string() } else { format!(" {w}") });
        }
        out.retain(|p| !p.is_empty());
        out
    };
    let top_n = req["top_logprobs"].as_u64().unwrap_or(0) as usize;
    let content: Vec<Value> = pieces
        .iter()
        .map(|p| {
            let mut top = vec![json!({"token": p, "logprob": lp, "bytes": p.as_bytes()})];
            for k in 1..top_n {
                let alt = format!("alt{k}");
                top.push(json!({"token": alt, "logprob": lp - 2.0 * k as f64, "bytes": alt.as_bytes()}));
            }
            json!({"token": p, "logprob": lp, "bytes": p.as_bytes(), "top_logprobs": top})
        })
        .collect();
    let logprobs =
        if with_logprobs && req["logprobs"] == json!(true) { json!({"content": content}) } else { Value::Null };
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": pieces.len(), "total_tokens": 10 + pieces.len()}
    })
}

async fn respond(req: &Value, reply: Reply) -> Response {
    let mut reply = reply;
    loop {
        match reply {
            Reply::Delay(d, next) => {
                tokio::time::sleep(d).await;
                reply = *next;
            }
            Reply::Answer { text, logprob, with_logprobs } => {
                return axum::Json(completion(req, &text, logprob, with_logprobs)).into_response();
            }
            Reply::Status { status, body, retry_after } => {
                let mut headers = HeaderMap::new();
                if let Some(s) = retry_after {
                    headers.insert("retry-after", HeaderValue::from_str(&s.to_string()).unwrap());
                }
                return (StatusCode::from_u16(status).unwrap(), headers, axum::Json(body)).into_response();
            }
        }
    }
}

async fn chat(State(s): State<Arc<Shared>>, axum::Json(req): axum::Json<Value>) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if s.keep_bodies {
        s.bodies.lock().unwrap().push(req.clone());
    }
    let reply = (s.script)(&req, n);
    let r = respond(&req, reply).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    r
}

async fn models() -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": [{"id": "fake-vlm", "object": "model"}]}))
}

/// Starts a server on a free port that answers with `script(request, request_number)`.
pub async fn start(script: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static) -> FakeServer {
    start_with(script, true).await
}

/// [`start`], optionally not keeping request bodies (for benchmarks).
pub async fn start_with(script: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static, keep: bool) -> FakeServer {
    start_on("127.0.0.1:0", script, keep).await
}

/// [`start_with`] on a given address.
pub async fn start_on(
    addr: &str,
    script: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static,
    keep: bool,
) -> FakeServer {
    let state = Arc::new(Shared {
        requests: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        bodies: Mutex::new(Vec::new()),
        keep_bodies: keep,
        script: Box::new(script),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeServer { url: format!("http://{addr}/v1"), state }
}
