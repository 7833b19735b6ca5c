//! Gateway arms: an experiment's request assigned to an arm on another OpenAI-compatible
//! server (vLLM, SGLang, LMDeploy, another `mmloop serve`) is proxied there, whole or
//! streamed. The body goes as the client sent it, with the upstream's model name and with
//! `logprobs` turned on (and usage when streaming), so the answer is scored from the returned
//! log-probabilities exactly as `mmloop infer --api` scores it; the client gets back what it
//! asked for (logprobs and usage only if it asked), its choices carrying the `mmloop` field,
//! under this server's response id, which `/v1/feedback` takes. The upstream's errors about
//! the request (4xx other than 401/403/404) pass through unchanged; its errors about the
//! gateway's own setup (a bad upstream key, an unknown `#MODEL`), its 5xx, an answer that is
//! not a chat completion, and an upstream that cannot be reached are 502s that say so.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use mmloop_engine::openai::{logprob_tokens, message_text};
use mmloop_engine::{Generation, Job};
use serde_json::{Value, json};

use crate::chat::{AbTag, extension, question_job};
use crate::error::ApiError;
use crate::{Server, Upstream};

/// Top alternatives asked of the upstream: two give the first token's margin.
const SCORING_TOP_LOGPROBS: u64 = 2;

/// What the client asked for, which the upstream request widens.
struct Wants {
    logprobs: bool,
    top_logprobs: usize,
    usage: bool,
    choices: usize,
}

/// The request and its answer so far.
struct Exchange {
    server: Arc<Server>,
    id: String,
    /// The model the client named (the experiment's).
    model: Value,
    tag: AbTag,
    job: Job,
    wants: Wants,
    arrived: Instant,
}

pub(crate) async fn proxy(
    server: Arc<Server>,
    mut body: Value,
    up: &Upstream,
    tag: AbTag,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let Some(o) = body.as_object_mut() else {
        return Err(ApiError::bad_request("the request body must be a JSON object".into(), None));
    };
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let wants = Wants {
        logprobs: o.get("logprobs").and_then(Value::as_bool).unwrap_or(false),
        top_logprobs: o.get("top_logprobs").and_then(Value::as_u64).unwrap_or(0) as usize,
        usage: stream && o.get("stream_options").is_some_and(|so| so["include_usage"] == json!(true)),
        choices: o.get("n").and_then(Value::as_u64).unwrap_or(1).max(1) as usize,
    };
    let question = last_user_text(o.get("messages").unwrap_or(&Value::Null));
    let model = o.insert("model".into(), json!(up.model)).unwrap_or(Value::Null);
    o.insert("logprobs".into(), json!(true));
    o.insert("top_logprobs".into(), json!((wants.top_logprobs as u64).max(SCORING_TOP_LOGPROBS)));
    if stream {
        let so = o.entry("stream_options").or_insert_with(|| json!({}));
        if !so.is_object() {
            *so = json!({});
        }
        so["include_usage"] = json!(true);
    }
    let mut req = server.upstream.post(&up.chat_url).json(&body);
    if let Some(k) = &up.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::bad_gateway(format!("the arm {:?} at {} did not answer: {e}", tag.arm, up.chat_url)))?;
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
    if !status.is_success() {
        let bytes = resp.bytes().await.unwrap_or_default();
        if status.is_client_error() && ![401, 403, 404].contains(&status.as_u16()) {
            // The request's own fault, in the upstream's words (OpenAI's error shape).
            let mut r =
                (StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST), bytes).into_response();
            if let Some(ct) = ct {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            return Ok(r);
        }
        // Not the client's fault: the gateway's key or model name for the arm, or the upstream.
        let said = String::from_utf8_lossy(&bytes).chars().take(500).collect::<String>();
        return Err(ApiError::bad_gateway(format!(
            "the arm {:?} at {} (model {:?}) answered {status}: {said}",
            tag.arm, up.chat_url, up.model
        )));
    }
    let is_sse = ct.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
    if stream != is_sse {
        return Err(ApiError::bad_gateway(format!(
            "the arm {:?} at {} answered a {} request with {:?}",
            tag.arm,
            up.chat_url,
            if stream { "streamed" } else { "whole" },
            ct.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("no content type")
        )));
    }
    let x = Exchange {
        id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
        model,
        tag,
        job: question_job(question),
        wants,
        arrived,
        server,
    };
    if stream {
        Ok(relay(x, resp.bytes_stream()))
    } else {
        let arm = format!("the arm {:?} at {}", x.tag.arm, up.chat_url);
        let bytes = resp.bytes().await.map_err(|e| ApiError::bad_gateway(format!("{arm}: {e}")))?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_gateway(format!("{arm} answered with invalid JSON: {e}")))?;
        let is_completion = answer["choices"].as_array().is_some_and(|cs| cs.iter().all(Value::is_object));
        if !answer.is_object() || !is_completion {
            let said = answer.to_string().chars().take(500).collect::<String>();
            return Err(ApiError::bad_gateway(format!("{arm} answered with no chat completion: {said}")));
        }
        Ok(axum::Json(x.whole(answer)).into_response())
    }
}

/// The text parts of the last user message, joined: what the risk rules read as the question.
fn last_user_text(messages: &Value) -> String {
    let Some(last) = messages.as_array().and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user")) else {
        return String::new();
    };
    match &last["content"] {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Cuts logprobs down to what the client asked for: none, or `k` alternatives per token.
fn trim_logprobs(logprobs: &mut Value, wants: &Wants) {
    if !wants.logprobs {
        *logprobs = Value::Null;
        return;
    }
    if let Some(content) = logprobs["content"].as_array_mut() {
        for t in content {
            if let Some(top) = t["top_logprobs"].as_array_mut() {
                top.truncate(wants.top_logprobs);
            }
        }
    }
}

impl Exchange {
    fn score(&self, text: String, content: &[Value], finish_reason: &Value) -> Value {
        let tokens = logprob_tokens(content, &text).unwrap_or_default();
        let g = Generation {
            text,
            tokens,
            finish_reason: finish_reason.as_str().unwrap_or("stop").to_string(),
            prompt_tokens: None,
            timing: None,
        };
        extension(&self.server, &self.job, g, Some(&self.tag))
    }

    /// Queues the request's exposure (the answer was given, whole or in part).
    fn expose(&self, prompt_tokens: u64, completion_tokens: u64, confidence: Option<f64>) {
        self.server.expose(&self.tag, &self.id, self.arrived, prompt_tokens, completion_tokens, confidence);
    }

    fn whole(&self, mut answer: Value) -> Value {
        let mut first_confidence = None;
        let mut counted = 0u64;
        if let Some(choices) = answer["choices"].as_array_mut() {
            for (i, c) in choices.iter_mut().enumerate() {
                let content = c["logprobs"]["content"].as_array().cloned().unwrap_or_default();
                counted += content.len() as u64;
                let text = message_text(&c["message"]["content"]).unwrap_or_default();
                let ext = self.score(text, &content, &c["finish_reason"]);
                if i == 0 {
                    first_confidence = ext["confidence"].as_f64();
                }
                c["mmloop"] = ext;
                trim_logprobs(&mut c["logprobs"], &self.wants);
            }
        }
        let usage = &answer["usage"];
        let completion = usage["completion_tokens"].as_u64().unwrap_or(counted);
        self.expose(usage["prompt_tokens"].as_u64().unwrap_or(0), completion, first_confidence);
        answer["id"] = json!(self.id);
        answer["model"] = self.model.clone();
        answer
    }
}

/// One streamed choice as it arrives.
#[derive(Default)]
struct Streamed {
    text: String,
    logprobs: Vec<Value>,
    finished: bool,
}

/// A streamed answer on its way through: upstream bytes in, the client's events out.
struct Relay {
    x: Exchange,
    upstream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
    out: VecDeque<Bytes>,
    /// The chunk that ends the last choice waits for the usage that follows it, so the
    /// exposure is queued, with its token counts, before the client sees the end.
    held: Vec<Bytes>,
    choices: std::collections::BTreeMap<u64, Streamed>,
    first_confidence: Option<f64>,
    usage: Option<Value>,
    ended: bool,
    exposed: bool,
}

/// One server-sent event carrying `data` (every line prefixed).
fn event(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

impl Relay {
    /// Takes one upstream event's data.
    fn take(&mut self, data: &str) -> bool {
        if data == "[DONE]" {
            return true;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            self.out.push_back(event(data));
            return false;
        };
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
            // An error event, or anything else that is not a chunk: as it came.
            self.out.push_back(event(data));
            return false;
        };
        if choices.is_empty() {
            return false;
        }
        for c in choices.iter_mut().filter(|c| c.is_object()) {
            let s = self.choices.entry(c["index"].as_u64().unwrap_or(0)).or_default();
            if let Some(t) = c["delta"]["content"].as_str() {
                s.text.push_str(t);
            }
            if let Some(lp) = c["logprobs"]["content"].as_array() {
                s.logprobs.extend(lp.iter().cloned());
            }
            if !c["finish_reason"].is_null() && !s.finished {
                s.finished = true;
                let ext = self.x.score(std::mem::take(&mut s.text), &s.logprobs, &c["finish_reason"]);
                if c["index"].as_u64().unwrap_or(0) == 0 {
                    self.first_confidence = ext["confidence"].as_f64();
                }
                c["mmloop"] = ext;
            }
            trim_logprobs(&mut c["logprobs"], &self.x.wants);
        }
        chunk["id"] = json!(self.x.id);
        chunk["model"] = self.x.model.clone();
        if !self.x.wants.usage
            && let Some(o) = chunk.as_object_mut()
        {
            o.remove("usage");
        }
        let e = event(&chunk.to_string());
        let finished = self.choices.values().filter(|s| s.finished).count();
        if finished >= self.x.wants.choices {
            self.held.push(e);
        } else {
            self.out.push_back(e);
        }
        false
    }

    /// Queues the exposure, once: when the answer ends, or with what was sent so far when the
    /// client goes away or the upstream breaks off (an abandoned answer was still an
    /// exposure; leaving it out would bias the arms).
    fn record(&mut self) {
        if self.exposed {
            return;
        }
        self.exposed = true;
        let u = self.usage.clone().unwrap_or(Value::Null);
        let counted: u64 = self.choices.values().map(|s| s.logprobs.len() as u64).sum();
        let completion = u["completion_tokens"].as_u64().unwrap_or(counted);
        self.x.expose(u["prompt_tokens"].as_u64().unwrap_or(0), completion, self.first_confidence);
    }

    /// The upstream is done (`broken`: with an error): queue the exposure, then send what
    /// waited, an error if the answer is incomplete, the usage if asked for, and `[DONE]`.
    fn end(&mut self, broken: Option<String>) {
        self.ended = true;
        self.record();
        self.out.extend(self.held.drain(..));
        let finished = self.choices.values().filter(|s| s.finished).count();
        let broken = broken.or_else(|| {
            (finished < self.x.wants.choices)
                .then(|| format!("the arm {:?} ended its answer before every choice finished", self.x.tag.arm))
        });
        if let Some(why) = broken {
            self.out.push_back(event(&ApiError::bad_gateway(why).body().to_string()));
        }
        if self.x.wants.usage
            && let Some(usage) = &self.usage
        {
            let created = crate::unix_now();
            self.out.push_back(event(
                &json!({"id": self.x.id, "object": "chat.completion.chunk", "created": created,
                        "model": self.x.model, "choices": [], "usage": usage})
                .to_string(),
            ));
        }
        self.out.push_back(event("[DONE]"));
    }

    /// The complete events in the buffer, in order: `Some(data)`, or `None` for an event of
    /// comments only (a keep-alive).
    fn events(&mut self, at_end: bool) -> Vec<Option<String>> {
        let mut found = Vec::new();
        loop {
            let cut = self.buf.windows(2).position(|w| w == b"\n\n");
            let raw: Vec<u8> = match cut {
                Some(at) => self.buf.drain(..at + 2).collect(),
                // A last event without its blank line still counts when the stream ends.
                None if at_end && !self.buf.iter().all(u8::is_ascii_whitespace) => std::mem::take(&mut self.buf),
                None => break,
            };
            let text = String::from_utf8_lossy(&raw);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                found.push(Some(data.join("\n")));
            } else if text.lines().any(|l| l.starts_with(':')) {
                found.push(None);
            }
        }
        found
    }

    /// Takes buffered events until the answer is done.
    fn drain(&mut self, at_end: bool) {
        for e in self.events(at_end) {
            match e {
                Some(data) if self.take(&data) => {
                    self.end(None);
                    return;
                }
                Some(_) => {}
                None => self.out.push_back(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
        if at_end {
            self.end(None);
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(b);
            }
            if self.ended {
                return None;
            }
            match self.upstream.next().await {
                Some(Ok(bytes)) => {
                    // Line ends as LF only (a raw CR cannot occur inside JSON data).
                    self.buf.extend(bytes.iter().filter(|&&b| b != b'\r'));
                    self.drain(false);
                }
                Some(Err(e)) => self.end(Some(format!("the arm {:?} broke off its answer: {e}", self.x.tag.arm))),
                None => self.drain(true),
            }
        }
    }
}

impl Drop for Relay {
    /// A client that went away mid-answer: its exposure is still kept.
    fn drop(&mut self) {
        self.record();
    }
}

/// Streams the upstream's events to the client, scored. A client that goes away drops the
/// relay and with it the upstream connection, which ends the upstream request.
fn relay(x: Exchange, upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static) -> Response {
    let r = Relay {
        x,
        upstream: upstream.boxed(),
        buf: Vec::new(),
        out: VecDeque::new(),
        held: Vec::new(),
        choices: Default::default(),
        first_confidence: None,
        usage: None,
        ended: false,
        exposed: false,
    };
    let body = futures::stream::unfold(r, |mut r| async move { r.next().await.map(|b| (Ok::<_, Infallible>(b), r)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("a streamed response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_is_the_last_user_texts() {
        let m = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first?"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                         {"type": "text", "text": "what"}, {"type": "text", "text": "colour?"}]},
        ]);
        assert_eq!(last_user_text(&m), "what\ncolour?");
        assert_eq!(last_user_text(&json!("nonsense")), "");
    }

    #[test]
    fn logprobs_are_cut_to_what_was_asked() {
        let lp = || {
            json!({"content": [{"token": "a", "logprob": -0.1, "top_logprobs": [
            {"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -2.0}]}]})
        };
        let mut v = lp();
        trim_logprobs(&mut v, &Wants { logprobs: false, top_logprobs: 0, usage: false, choices: 1 });
        assert!(v.is_null());
        let mut v = lp();
        trim_logprobs(&mut v, &Wants { logprobs: true, top_logprobs: 1, usage: false, choices: 1 });
        assert_eq!(v["content"][0]["top_logprobs"].as_array().unwrap().len(), 1);
    }
}
