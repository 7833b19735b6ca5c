//! `POST /v1/chat/completions`: the request as OpenAI and vLLM define it, answered by the
//! embedded engine, whole or streamed as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use mmloop_engine::embedded::{ChatRequest as EngineChat, Started};
use mmloop_engine::{Backend, GenOverrides, GenParams, Generation, Job, Prompt};
use mmloop_models::generate::Event;
use mmloop_models::processor::{ChatMessage, Part};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Server;
use crate::error::{ApiError, engine_error, parse_json};
use crate::metrics::Finished;

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ImageUrl {
    Object { url: String },
    Bare(String),
}

impl ImageUrl {
    fn url(&self) -> &str {
        match self {
            ImageUrl::Object { url } | ImageUrl::Bare(url) => url,
        }
    }
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// The fields mmloop reads; others (`response_format: text`, ...) are accepted and have no
/// effect, as in vLLM. `user` (OpenAI's end-user field) is read before, by the experiment.
#[derive(Deserialize)]
struct ChatCompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    min_p: Option<f64>,
    /// vLLM's: end-of-sequence is suppressed until this many tokens exist.
    #[serde(default)]
    min_tokens: Option<usize>,
    #[serde(default)]
    repetition_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// A request checked and turned into the engine's terms.
struct Planned {
    model_name: String,
    adapter: Option<String>,
    /// Keeps the adapter loaded while the request runs.
    adapter_use: Option<crate::AdapterUse>,
    /// The experiment arm answering, and the user it was assigned by.
    ab: Option<AbTag>,
    messages: Vec<ChatMessage>,
    image_urls: Vec<String>,
    params: GenParams,
    n: usize,
    /// `Some(k)`: return logprobs with k alternatives per token.
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
    /// The last user text: what the risk rules read as the question.
    question: String,
}

fn bad(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::bad_request(message.into(), Some(param))
}

/// A request of the experiment: the arm that answers it, and the user it was assigned by.
pub(crate) struct AbTag {
    pub arm: String,
    pub user: Option<String>,
}

/// The `mmloop` extension of a choice: the confidence and risk flags `mmloop infer` would
/// give the same answer, and the experiment arm that gave it.
pub(crate) fn extension(s: &Server, job: &Job, g: Generation, tag: Option<&AbTag>) -> Value {
    let c = s.scorer.finish(job, g, Vec::new()).candidate;
    let mut v = json!({"confidence": c.confidence, "confidence_detail": c.detail, "flags": c.flags});
    if let (Some(tag), Some(ab)) = (tag, &s.config.ab) {
        v["experiment"] = json!({"name": ab.name, "arm": tag.arm});
    }
    v
}

/// What the risk rules read as the question: the last user message's text.
pub(crate) fn question_job(question: String) -> Job {
    Job { prompt: Prompt::new(question, Vec::new()), stream: 0, is_caption: false, answer_type: None }
}

fn plan(s: &Server, r: ChatCompletionRequest, ab: Option<(Option<String>, AbTag)>) -> Result<Planned, ApiError> {
    let (target, ab) = match ab {
        Some((adapter, tag)) => (Some(adapter.unwrap_or_else(|| s.config.served_model_name.clone())), Some(tag)),
        None => (r.model.clone(), None),
    };
    let (adapter, adapter_use) = s.resolve_model(target.as_deref())?;
    let model_name = r.model.clone().unwrap_or_else(|| s.config.served_model_name.clone());
    if r.messages.is_empty() {
        return Err(bad("messages must not be empty", "messages"));
    }
    let mut messages = Vec::with_capacity(r.messages.len());
    let mut image_urls = Vec::new();
    let mut question = String::new();
    for m in r.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => return Err(bad(format!("unsupported message role {other:?}"), "messages")),
        };
        let mut parts = Vec::new();
        match m.content {
            None => {}
            Some(Content::Text(t)) => parts.push(Part::Text(t)),
            Some(Content::Parts(ps)) => {
                for p in ps {
                    match p {
                        ContentPart::Text { text } => parts.push(Part::Text(text)),
                        ContentPart::ImageUrl { image_url } if role == "user" => {
                            image_urls.push(image_url.url().to_string());
                            parts.push(Part::Image);
                        }
                        ContentPart::ImageUrl { .. } => {
                            return Err(bad(format!("images are only taken in user messages, not {role}"), "messages"));
                        }
                    }
                }
            }
        }
        if role == "user" {
            question = parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        messages.push(ChatMessage { role: role.into(), parts });
    }
    if image_urls.len() > s.config.limit_mm_per_prompt {
        return Err(bad(
            format!(
                "{} images in one request; this server takes at most {} (--limit-mm-per-prompt)",
                image_urls.len(),
                s.config.limit_mm_per_prompt
            ),
            "messages",
        ));
    }
    let n = r.n.unwrap_or(1);
    if n == 0 || n > s.config.max_n {
        return Err(bad(format!("n must be between 1 and {}, not {n}", s.config.max_n), "n"));
    }
    let want_logprobs = r.logprobs.unwrap_or(false);
    let top = r.top_logprobs.unwrap_or(0);
    if top > 20 {
        return Err(bad(format!("top_logprobs must be between 0 and 20, not {top}"), "top_logprobs"));
    }
    if r.top_logprobs.is_some() && !want_logprobs {
        return Err(bad("top_logprobs needs logprobs: true", "top_logprobs"));
    }
    for (name, v) in [("presence_penalty", r.presence_penalty), ("frequency_penalty", r.frequency_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(bad(format!("{name} is not supported; repetition_penalty is"), name));
        }
    }
    if let Some(t) = r.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(bad(format!("temperature must be 0 or more, not {t}"), "temperature"));
    }
    if let Some(p) = r.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(bad(format!("top_p must be in (0, 1], not {p}"), "top_p"));
    }
    let max_new = r.max_completion_tokens.or(r.max_tokens);
    if max_new == Some(0) {
        return Err(bad("max_tokens must be at least 1", "max_tokens"));
    }
    if let (Some(min), Some(max)) = (r.min_tokens, max_new)
        && min > max
    {
        return Err(bad(format!("min_tokens ({min}) must not exceed max_tokens ({max})"), "min_tokens"));
    }
    // vLLM's defaults: a field the request leaves out takes the checkpoint's
    // generation_config.json value, else OpenAI's (temperature 1, top-p 1, top-k off).
    let d = s.local()?.defaults();
    let overrides = GenOverrides {
        max_new_tokens: max_new,
        min_new_tokens: r.min_tokens,
        temperature: Some(r.temperature.or(d.temperature).unwrap_or(1.0)),
        top_p: Some(r.top_p.or(d.top_p).unwrap_or(1.0)),
        // -1 (or 0) turns top-k off.
        top_k: Some(r.top_k.map_or(d.top_k.unwrap_or(0), |k| k.max(0) as usize)),
        repetition_penalty: r.repetition_penalty,
        seed: Some(r.seed.unwrap_or_else(rand::random)),
        ..GenOverrides::default()
    };
    let mut params = GenParams::resolve(&d, &overrides).map_err(|e| bad(e.to_string(), "messages"))?;
    params.top_logprobs = top;
    params.min_p = r.min_p.unwrap_or(0.0);
    params.stop = match r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    params.stop.retain(|s| !s.is_empty());
    if params.stop.len() > 16 {
        return Err(bad("at most 16 stop strings", "stop"));
    }
    params.check().map_err(|e| bad(e.to_string(), "messages"))?;
    let stream = r.stream.unwrap_or(false);
    Ok(Planned {
        model_name,
        adapter,
        adapter_use,
        ab,
        messages,
        image_urls,
        params,
        n,
        logprobs: want_logprobs.then_some(top),
        stream,
        include_usage: stream && r.stream_options.is_some_and(|o| o.include_usage),
        question,
    })
}

/// What the answers of one request share.
struct Ctx {
    server: Arc<Server>,
    id: String,
    created: u64,
    model: String,
    arrived: Instant,
    prepared: Instant,
    prompt_tokens: usize,
    logprobs: Option<usize>,
    job: Job,
    _adapter_use: Option<crate::AdapterUse>,
    ab: Option<AbTag>,
}

impl Ctx {
    fn mmloop(&self, g: &Generation) -> Value {
        extension(&self.server, &self.job, g.clone(), self.ab.as_ref())
    }

    /// Queues the request as an exposure of the experiment it belongs to (if any).
    fn expose(&self, completion_tokens: usize, confidence: Option<f64>) {
        if let Some(tag) = &self.ab {
            let (prompt, completion) = (self.prompt_tokens as u64, completion_tokens as u64);
            self.server.expose(tag, &self.id, self.arrived, prompt, completion, confidence);
        }
    }

    /// Counts a finished choice; the prompt counts once per request (with its first choice).
    fn record(&self, g: &Generation, index: usize) {
        let t = g.timing.unwrap_or_default();
        let prepare = self.prepared - self.arrived;
        self.server.metrics.finished(&Finished {
            prompt_tokens: if index == 0 { self.prompt_tokens } else { 0 },
            generation_tokens: g.tokens.len(),
            finish_reason: g.finish_reason.clone(),
            queued: t.queued,
            ttft: prepare + t.queued + t.first_token,
            e2e: self.arrived.elapsed(),
        });
    }

    fn chunk(&self, choices: Value) -> SseEvent {
        SseEvent::default().data(
            json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model, "choices": choices})
            .to_string(),
        )
    }
}

pub async fn completions(
    State(s): State<Arc<Server>>,
    headers: axum::http::HeaderMap,
    body: crate::error::Body,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let raw: Value = parse_json(body)?;
    if !raw.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object".into(), None));
    }
    // A request for the experiment's name goes to the arm its user is assigned to.
    let mut assigned = None;
    if let Some(ab) = &s.config.ab
        && raw["model"].as_str() == Some(ab.name.as_str())
    {
        let user = raw["user"]
            .as_str()
            .map(String::from)
            .or_else(|| headers.get("x-user-id").and_then(|v| v.to_str().ok()).map(String::from));
        let arm = &ab.arms[ab.arm_for(user.as_deref())];
        let tag = AbTag { arm: arm.name.clone(), user };
        match &arm.target {
            crate::ArmTarget::Upstream(up) => return crate::gateway::proxy(s.clone(), raw, up, tag, arrived).await,
            crate::ArmTarget::Local(adapter) => assigned = Some((adapter.clone(), tag)),
        }
    }
    if !(raw["user"].is_null() || raw["user"].is_string()) {
        return Err(bad("user must be a string", "user"));
    }
    let req: ChatCompletionRequest =
        serde_json::from_value(raw).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))?;
    let p = plan(&s, req, assigned)?;
    let backend = s.local()?.clone();
    let guard = s.metrics.preparing_guard();
    let images = futures::future::try_join_all(
        p.image_urls.iter().enumerate().map(|(i, url)| crate::media::fetch(&s, url, i + 1)),
    )
    .await?;
    let mut started = Vec::with_capacity(p.n);
    for i in 0..p.n {
        let chat = EngineChat {
            messages: p.messages.clone(),
            images: images.clone(),
            params: p.params.clone(),
            stream: i as u64,
            adapter: p.adapter.clone(),
        };
        started.push(backend.start(chat).await.map_err(engine_error)?);
    }
    drop(guard);
    // Dropping `started` on this error cancels the queued sequences.
    if let (Some(limit), Some(st)) = (s.config.max_model_len.or(backend.max_model_len()), started.first()) {
        let want = st.prompt_tokens + p.params.max_new_tokens;
        if want > limit {
            return Err(bad(
                format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {want} tokens \
                     ({} in the messages, {} in the completion).",
                    st.prompt_tokens, p.params.max_new_tokens
                ),
                "max_tokens",
            ));
        }
    }
    let ctx = Arc::new(Ctx {
        id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
        created: crate::unix_now(),
        model: p.model_name.clone(),
        arrived,
        prepared: Instant::now(),
        prompt_tokens: started.first().map_or(0, |s| s.prompt_tokens),
        logprobs: p.logprobs,
        job: question_job(p.question.clone()),
        _adapter_use: p.adapter_use,
        ab: p.ab,
        server: s,
    });
    if p.stream {
        Ok(stream(ctx, started, p.include_usage, max_stop_len(&p.params.stop)))
    } else {
        whole(ctx, started).await
    }
}

fn max_stop_len(stop: &[String]) -> usize {
    stop.iter().map(String::len).max().unwrap_or(0)
}

/// Waits for a started request's end.
async fn finish(ctx: &Ctx, mut st: Started) -> Result<Generation, ApiError> {
    loop {
        match st.events.recv().await {
            Some(Event::Token(_)) => {}
            Some(Event::Done(out)) => {
                let out = out.map_err(|e| ApiError::internal(e.to_string()))?;
                return Ok(ctx.server.local()?.generation(out, ctx.logprobs.unwrap_or(0)));
            }
            None => return Err(ApiError::internal("the engine stopped".into())),
        }
    }
}

async fn whole(ctx: Arc<Ctx>, started: Vec<Started>) -> Result<Response, ApiError> {
    let gens = futures::future::try_join_all(started.into_iter().map(|st| finish(&ctx, st))).await?;
    let mut choices = Vec::with_capacity(gens.len());
    let mut completion_tokens = 0;
    for (i, g) in gens.iter().enumerate() {
        ctx.record(g, i);
        completion_tokens += g.tokens.len();
        choices.push(json!({
            "index": i,
            "message": {"role": "assistant", "content": g.text},
            "logprobs": ctx.logprobs.and_then(|k| g.logprobs_json(k)),
            "finish_reason": g.finish_reason,
            "mmloop": ctx.mmloop(g),
        }));
    }
    let confidence = choices.first().and_then(|c| c["mmloop"]["confidence"].as_f64());
    ctx.expose(completion_tokens, confidence);
    Ok(axum::Json(json!({
        "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
        "choices": choices,
        "usage": usage(ctx.prompt_tokens, completion_tokens),
    }))
    .into_response())
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// One choice's text as it streams: the ids so far, what was sent, the tokens whose
/// logprobs wait for the next chunk.
struct Streaming {
    ids: Vec<u32>,
    sent: String,
    pending: Vec<Value>,
    tokens: usize,
}

/// How far the text can be sent: not into a possible stop string's start (`hold` bytes),
/// not into an incomplete character (a trailing U+FFFD), on a character boundary.
fn sendable(text: &str, hold: usize) -> usize {
    let mut end = text.len().saturating_sub(hold);
    if text.ends_with('\u{FFFD}') {
        end = end.min(text.len() - '\u{FFFD}'.len_utf8());
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

fn stream(ctx: Arc<Ctx>, started: Vec<Started>, include_usage: bool, hold: usize) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    let n = started.len();
    let mut cancels = Vec::with_capacity(n);
    let merged = futures::stream::select_all(started.into_iter().enumerate().map(|(i, st)| {
        cancels.push(st.cancel);
        futures::stream::unfold(st.events, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .map(move |e| (i, e))
            .boxed()
    }));
    tokio::spawn(async move {
        let Some(backend) = ctx.server.backend.clone() else { return };
        let top_n = ctx.logprobs.unwrap_or(0);
        let mut state: Vec<Streaming> = (0..n)
            .map(|_| Streaming { ids: Vec::new(), sent: String::new(), pending: Vec::new(), tokens: 0 })
            .collect();
        let mut open = true;
        // A client that went away stops its sequences: the engine ends them at its next step.
        let send = async |e: SseEvent, open: &mut bool| {
            if *open && tx.send(e).await.is_err() {
                *open = false;
                cancels.iter().for_each(|c| c.cancel());
            }
        };
        for i in 0..n {
            let first = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            send(ctx.chunk(first), &mut open).await;
        }
        let mut completion_tokens = 0;
        let mut first_confidence = None;
        let mut remaining = n;
        let mut merged = merged;
        while let Some((i, ev)) = merged.next().await {
            let st = &mut state[i];
            match ev {
                Event::Token(step) => {
                    st.tokens += 1;
                    let t = backend.token(&step, top_n);
                    if ctx.logprobs.is_some() && !t.special {
                        let mut v = serde_json::to_value(&t).unwrap_or_default();
                        if let Some(a) = v["top_logprobs"].as_array_mut() {
                            a.truncate(top_n);
                        }
                        st.pending.push(v);
                    }
                    st.ids.push(step.id);
                    let Ok(text) = backend.decode(&st.ids) else { continue };
                    let end = sendable(&text, hold);
                    if end > st.sent.len() && text.starts_with(st.sent.as_str()) {
                        let delta = text[st.sent.len()..end].to_string();
                        st.sent.push_str(&delta);
                        let logprobs = ctx.logprobs.map(|_| json!({"content": std::mem::take(&mut st.pending)}));
                        let c = json!([{"index": i, "delta": {"content": delta}, "logprobs": logprobs, "finish_reason": null}]);
                        send(ctx.chunk(c), &mut open).await;
                    }
                }
                Event::Done(Err(e)) => {
                    let err = ApiError::internal(e.to_string());
                    remaining -= 1;
                    if remaining == 0 {
                        ctx.expose(completion_tokens, first_confidence);
                    }
                    send(SseEvent::default().data(err.body().to_string()), &mut open).await;
                }
                Event::Done(Ok(out)) => {
                    let g = backend.generation(out, top_n);
                    ctx.record(&g, i);
                    completion_tokens += g.tokens.len();
                    // The engine's text is the answer: send what is left of it.
                    let common = g.text.bytes().zip(st.sent.bytes()).take_while(|(a, b)| a == b).count();
                    let mut common = common.min(g.text.len());
                    while !g.text.is_char_boundary(common) {
                        common -= 1;
                    }
                    let rest = g.text[common..].to_string();
                    let logprobs = ctx.logprobs.map(|_| json!({"content": std::mem::take(&mut st.pending)}));
                    if !rest.is_empty()
                        || logprobs.as_ref().is_some_and(|l| !l["content"].as_array().is_none_or(Vec::is_empty))
                    {
                        let c = json!([{"index": i, "delta": {"content": rest}, "logprobs": logprobs, "finish_reason": null}]);
                        send(ctx.chunk(c), &mut open).await;
                    }
                    let extension = ctx.mmloop(&g);
                    if i == 0 {
                        first_confidence = extension["confidence"].as_f64();
                    }
                    // The exposure is queued before the last choice's end is sent: feedback
                    // sent on seeing it waits for it and finds the request.
                    remaining -= 1;
                    if remaining == 0 {
                        ctx.expose(completion_tokens, first_confidence);
                    }
                    let last = json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": g.finish_reason,
                                       "mmloop": extension}]);
                    send(ctx.chunk(last), &mut open).await;
                }
            }
        }
        if include_usage {
            let u = SseEvent::default().data(
                json!({"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model,
                       "choices": [], "usage": usage(ctx.prompt_tokens, completion_tokens)})
                .to_string(),
            );
            send(u, &mut open).await;
        }
        send(SseEvent::default().data("[DONE]"), &mut open).await;
    });
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[cfg(test)]
mod tests {
    use super::sendable;

    #[test]
    fn streamed_text_stops_short_of_stop_strings_and_broken_characters() {
        assert_eq!(sendable("hello", 0), 5);
        assert_eq!(sendable("hello", 3), 2);
        assert_eq!(sendable("ab\u{FFFD}", 0), 2);
        assert_eq!(sendable("aé", 1), 1, "not inside é");
    }
}
