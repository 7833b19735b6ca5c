//! The OpenAI-compatible backend: `POST {base}/chat/completions` on vLLM, SGLang, LMDeploy,
//! Ollama or any server speaking that API. Images travel as base64 `data:` URLs,
//! `logprobs` and `top_logprobs` are requested, at most `concurrency` requests are in
//! flight, each has a timeout, and 429 / 5xx / network failures are retried with
//! exponential backoff (honouring `Retry-After`).
//!
//! A server without vision, or without logprobs, is a clear error rather than a run of
//! answers with no confidence. This module never loads a model.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::backend::{Backend, BackendInfo, GenRequest, Generation, TokenLogprob, TopLogprob};
use crate::{EngineError, Result};

/// How to reach the server and how hard to try.
#[derive(Clone, Debug)]
pub struct OpenAiOptions {
    /// `http://host:8000/v1` (or the server root, or the full `/chat/completions` URL).
    pub url: String,
    /// The served model name; empty: the first model `GET /models` lists.
    pub model: String,
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Per request, from sending to the last byte of the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt, for 429, 5xx, timeouts and connection failures.
    pub max_retries: u32,
    /// The first backoff; it doubles per retry (with jitter) up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Ask for token log-probabilities (and fail when the server gives none).
    pub logprobs: bool,
}

impl OpenAiOptions {
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiOptions {
            url: url.into(),
            model: model.into(),
            api_key: None,
            concurrency: 16,
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            logprobs: true,
        }
    }
}

/// The chat-completions URL and the API base (for `/models`) from what a user typed: the
/// server root, the `/v1` base, or the full `/chat/completions` URL.
fn endpoints(url: &str) -> (String, String) {
    let u = url.trim().trim_end_matches('/');
    if let Some(base) = u.strip_suffix("/chat/completions") {
        (u.to_string(), base.to_string())
    } else if u.ends_with("/v1") || u.contains("/v1/") {
        (format!("{u}/chat/completions"), u.to_string())
    } else {
        (format!("{u}/v1/chat/completions"), format!("{u}/v1"))
    }
}

pub struct OpenAiBackend {
    opts: OpenAiOptions,
    client: reqwest::Client,
    chat_url: String,
    permits: Arc<Semaphore>,
    info: BackendInfo,
}

/// A failed attempt: retry it, or give up with this error.
enum Attempt {
    Retry { why: String, after: Option<Duration> },
    Fail(EngineError),
}

impl OpenAiBackend {
    /// Builds the client; with no model name, asks the server which model it serves.
    pub async fn connect(mut opts: OpenAiOptions) -> Result<OpenAiBackend> {
        if opts.concurrency == 0 {
            return Err(EngineError::Config("--concurrency must be at least 1".into()));
        }
        let (chat_url, base) = endpoints(&opts.url);
        reqwest::Url::parse(&chat_url)
            .map_err(|e| EngineError::Config(format!("--api {}: not a URL: {e}", opts.url)))?;
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .pool_max_idle_per_host(opts.concurrency)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| EngineError::Config(format!("HTTP client: {e}")))?;
        if opts.model.is_empty() {
            opts.model = Self::served_model(&client, &base, opts.api_key.as_deref(), opts.timeout).await?;
        }
        let info = BackendInfo {
            engine: "openai".into(),
            model: opts.model.clone(),
            resolved: chat_url.clone(),
            family: None,
            exact_logprobs: opts.logprobs,
            settings: json!({"logprobs": opts.logprobs}),
        };
        Ok(OpenAiBackend { permits: Arc::new(Semaphore::new(opts.concurrency)), opts, client, chat_url, info })
    }

    async fn served_model(
        client: &reqwest::Client,
        base: &str,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<String> {
        let url = format!("{base}/models");
        let mut req = client.get(&url).timeout(timeout);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let hint = "\n  hint: pass the served model's name with --model";
        let resp = req.send().await.map_err(|e| EngineError::Network(format!("GET {url}: {e}{hint}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match body["data"][0]["id"].as_str() {
            Some(id) if status.is_success() => Ok(id.to_string()),
            _ => Err(EngineError::Config(format!("GET {url} ({status}) lists no model{hint}"))),
        }
    }

    fn body(&self, req: &GenRequest) -> Result<Value> {
        let p = &req.params;
        let (turns, image_turn) = req.prompt.turns();
        let mut messages = Vec::new();
        if let Some(s) = &req.prompt.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        for (i, t) in turns.iter().enumerate() {
            if i == image_turn && !req.prompt.images.is_empty() {
                let mut parts = Vec::new();
                for img in &req.prompt.images {
                    let mime = img.mime().ok_or_else(|| EngineError::Image {
                        name: img.name.clone(),
                        message: "not a PNG, JPEG, GIF, WebP, BMP or TIFF file".into(),
                    })?;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&img.bytes[..]);
                    parts.push(json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{b64}")}}));
                }
                parts.push(json!({"type": "text", "text": t.content}));
                messages.push(json!({"role": t.role, "content": parts}));
            } else {
                messages.push(json!({"role": t.role, "content": t.content}));
            }
        }
        let mut body = json!({
            "model": self.opts.model,
            "messages": messages,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "n": 1,
            "stream": false,
        });
        let o = body.as_object_mut().expect("object");
        if p.temperature > 0.0 && p.top_p < 1.0 {
            o.insert("top_p".into(), json!(p.top_p));
        }
        if p.explicit.seed.is_some() || p.temperature > 0.0 {
            o.insert("seed".into(), json!(mmloop_models::sampling::request_seed(p.seed, req.stream) >> 1));
        }
        // Not in OpenAI's API but understood by vLLM, SGLang and LMDeploy: sent only when
        // asked for, so strict servers are not refused over defaults.
        if let Some(k) = p.explicit.top_k.filter(|_| p.temperature > 0.0) {
            o.insert("top_k".into(), json!(k));
        }
        if let Some(r) = p.explicit.repetition_penalty {
            o.insert("repetition_penalty".into(), json!(r));
        }
        if let Some(m) = p.explicit.min_new_tokens {
            o.insert("min_tokens".into(), json!(m));
        }
        if self.opts.logprobs {
            o.insert("logprobs".into(), json!(true));
            // Two alternatives at least: the first-token margin needs the runner-up.
            o.insert("top_logprobs".into(), json!(p.top_logprobs.max(2)));
        }
        Ok(body)
    }

    async fn attempt(&self, body: &Value, has_images: bool) -> std::result::Result<Generation, Attempt> {
        let _permit = self.permits.acquire().await.expect("semaphore never closed");
        let mut rb = self.client.post(&self.chat_url).timeout(self.opts.timeout).json(body);
        if let Some(k) = &self.opts.api_key {
            rb = rb.bearer_auth(k);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => return Err(Attempt::Retry { why: network_why(&e), after: None }),
        };
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(Attempt::Retry { why: network_why(&e), after: None }),
        };
        if status == 429 || matches!(status, 500 | 502 | 503 | 504) {
            return Err(Attempt::Retry { why: format!("HTTP {status}: {}", error_message(&bytes)), after });
        }
        if !(200..300).contains(&status) {
            return Err(Attempt::Fail(self.classify(status, &bytes, has_images)));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Fail(EngineError::Protocol { url: self.chat_url.clone(), message: format!("not JSON: {e}") })
        })?;
        self.parse(&v).map_err(Attempt::Fail)
    }

    fn classify(&self, status: u16, body: &[u8], has_images: bool) -> EngineError {
        let message = error_message(body);
        let lower = message.to_lowercase();
        let url = self.opts.url.clone();
        if has_images
            && (400..500).contains(&status)
            && ["image", "vision", "multimodal", "multi-modal"].iter().any(|w| lower.contains(w))
        {
            return EngineError::NoVision { url, model: self.opts.model.clone(), message };
        }
        if self.opts.logprobs && (400..500).contains(&status) && lower.contains("logprob") {
            return EngineError::NoLogprobs { url };
        }
        let hint = match status {
            401 | 403 => "\n  hint: set the server's API key in OPENAI_API_KEY (or --api-key)",
            404 => "\n  hint: check --api (e.g. http://127.0.0.1:8000/v1) and --model (GET /v1/models lists the names)",
            _ => "",
        };
        EngineError::Http { status, message: format!("{message}{hint}") }
    }

    fn parse(&self, v: &Value) -> Result<Generation> {
        let bad = |m: &str| EngineError::Protocol { url: self.chat_url.clone(), message: m.to_string() };
        let choice = v["choices"].get(0).ok_or_else(|| bad("no choices"))?;
        let text = message_text(&choice["message"]["content"]).ok_or_else(|| bad("message.content is not text"))?;
        let finish_reason = choice["finish_reason"].as_str().unwrap_or("stop").to_string();
        let mut tokens = Vec::new();
        if self.opts.logprobs {
            let Some(items) = choice["logprobs"]["content"].as_array() else {
                return Err(EngineError::NoLogprobs { url: self.opts.url.clone() });
            };
            tokens = logprob_tokens(items, &text).ok_or_else(|| bad("a logprobs entry has no token or logprob"))?;
            if tokens.is_empty() && !text.is_empty() {
                return Err(EngineError::NoLogprobs { url: self.opts.url.clone() });
            }
        }
        Ok(Generation {
            text,
            tokens,
            finish_reason,
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().map(|n| n as usize),
            timing: None,
        })
    }

    fn backoff(&self, retry: u32, after: Option<Duration>) -> Duration {
        let exp = self.opts.backoff.saturating_mul(1u32 << retry.min(16)).min(self.opts.backoff_max);
        // Full jitter on the upper half keeps many clients from retrying in step.
        let jitter = rand::random::<f64>() * 0.5 + 0.5;
        let wait = exp.mul_f64(jitter);
        // A server's Retry-After wins (capped at two minutes), never shortening our own wait.
        match after {
            Some(a) => a.min(Duration::from_secs(120)).max(wait),
            None => wait,
        }
    }
}

fn network_why(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    }
}

/// The server's error message: `{"error": {"message"}}`, `{"error": "..."}`,
/// `{"detail": ...}`, `{"message": ...}`, or the body itself.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        for m in [&v["error"]["message"], &v["error"], &v["detail"], &v["message"]] {
            match m {
                Value::String(s) => return s.clone(),
                Value::Null => {}
                other if !other.is_object() => return other.to_string(),
                _ => {}
            }
        }
    }
    let t = text.trim();
    if t.is_empty() { "(empty body)".into() } else { t.chars().take(500).collect() }
}

/// The text of a chat completion's `message.content`: a string, nothing (`null`), or the
/// text parts some servers answer with; `None` for anything else.
pub fn message_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect()),
        _ => None,
    }
}

/// The tokens of an answer's OpenAI `logprobs.content` list; `None` when an entry lacks its
/// token or log-probability. A stop token some servers list after the text (`<|im_end|>`) is
/// marked special: not part of the answer.
pub fn logprob_tokens(content: &[Value], text: &str) -> Option<Vec<TokenLogprob>> {
    let mut tokens: Vec<TokenLogprob> = content.iter().map(token_of).collect::<Option<_>>()?;
    if let Some(last) = tokens.last_mut() {
        let t = &last.token;
        if t.starts_with('<') && t.ends_with('>') && t.len() > 2 && !text.ends_with(t.as_str()) {
            last.special = true;
        }
    }
    Some(tokens)
}

fn token_of(t: &Value) -> Option<TokenLogprob> {
    let token = t["token"].as_str()?.to_string();
    let logprob = t["logprob"].as_f64()?;
    let bytes = bytes_of(t, &token);
    let top_logprobs = t["top_logprobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    let token = x["token"].as_str()?.to_string();
                    let logprob = x["logprob"].as_f64()?;
                    Some(TopLogprob { id: None, bytes: bytes_of(x, &token), token, logprob })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(TokenLogprob { id: None, token, logprob, bytes, top_logprobs, special: false })
}

fn bytes_of(t: &Value, token: &str) -> Vec<u8> {
    t["bytes"]
        .as_array()
        .map(|b| b.iter().filter_map(|x| x.as_u64().map(|n| n as u8)).collect())
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

#[async_trait]
impl Backend for OpenAiBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn max_in_flight(&self) -> usize {
        self.opts.concurrency
    }

    async fn generate(&self, req: GenRequest) -> Result<Generation> {
        let body = self.body(&req)?;
        let has_images = !req.prompt.images.is_empty();
        let mut retry = 0;
        loop {
            match self.attempt(&body, has_images).await {
                Ok(g) => return Ok(g),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry { why, after }) => {
                    if retry >= self.opts.max_retries {
                        let tries = retry + 1;
                        return Err(EngineError::Network(format!(
                            "{}: {why} ({tries} attempt{})\n  hint: is the server up and able to keep up? lower --concurrency or raise --timeout",
                            self.chat_url,
                            if tries == 1 { "" } else { "s" }
                        )));
                    }
                    tokio::time::sleep(self.backoff(retry, after)).await;
                    retry += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_accept_root_v1_or_full_path() {
        assert_eq!(endpoints("http://h:8000").0, "http://h:8000/v1/chat/completions");
        assert_eq!(endpoints("http://h:8000/v1/").0, "http://h:8000/v1/chat/completions");
        assert_eq!(
            endpoints("http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions".into(), "http://h/v1".into())
        );
    }

    #[test]
    fn error_messages_come_out_of_every_shape() {
        assert_eq!(error_message(br#"{"error": {"message": "bad"}}"#), "bad");
        assert_eq!(error_message(br#"{"detail": "nope"}"#), "nope");
        assert_eq!(error_message(br#"{"object": "error", "message": "m"}"#), "m");
        assert_eq!(error_message(b"plain"), "plain");
        assert_eq!(error_message(b""), "(empty body)");
    }
}
