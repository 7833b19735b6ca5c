//! The backend trait every engine implements, and the request and answer types it speaks.
//!
//! A backend answers one request at a time from the caller's point of view; callers keep
//! many requests in flight (up to [`Backend::max_in_flight`]) and the backend batches or
//! queues them as its engine likes. Adding an engine (llama.cpp for GGUF, say) means one
//! more implementation of this trait; callers do not change.

use std::sync::Arc;

use async_trait::async_trait;
use mmloop_core::Message;
use serde::Serialize;

use crate::params::{GenParams, GenerationDefaults};
use crate::{EngineError, Result};

/// One image as the user gave it: the file's bytes, decoded by the backend that needs pixels.
#[derive(Clone, Debug)]
pub struct InputImage {
    /// Where it came from, for error messages (a path, an item id).
    pub name: String,
    pub bytes: Arc<Vec<u8>>,
}

impl InputImage {
    pub fn new(name: impl Into<String>, bytes: impl Into<Arc<Vec<u8>>>) -> Self {
        InputImage { name: name.into(), bytes: bytes.into() }
    }

    /// Reads a file; a missing or unreadable file is an item error.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::Image { name: path.display().to_string(), message: e.to_string() })?;
        Ok(InputImage::new(path.display().to_string(), bytes))
    }

    /// The MIME type from the file's magic bytes (`None`: not an image format we know).
    pub fn mime(&self) -> Option<&'static str> {
        let b = &self.bytes[..];
        if b.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some("image/png")
        } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some("image/jpeg")
        } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
            Some("image/gif")
        } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
            Some("image/webp")
        } else if b.starts_with(b"BM") {
            Some("image/bmp")
        } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
            Some("image/tiff")
        } else {
            None
        }
    }

    /// Decodes the image to RGB pixels; a corrupt or truncated file is an item error.
    pub fn decode(&self) -> Result<image::DynamicImage> {
        let img = image::load_from_memory(&self.bytes)
            .map_err(|e| EngineError::Image { name: self.name.clone(), message: format!("cannot decode: {e}") })?;
        Ok(image::DynamicImage::ImageRgb8(img.into_rgb8()))
    }
}

/// What the model is asked: an optional system prompt, earlier turns, the question, and
/// the images (attached to the first user turn, images first as the chat templates of the
/// supported families place them).
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    pub system: Option<String>,
    pub context: Vec<Message>,
    pub text: String,
    pub images: Vec<InputImage>,
}

impl Prompt {
    pub fn new(text: impl Into<String>, images: Vec<InputImage>) -> Self {
        Prompt { text: text.into(), images, ..Default::default() }
    }

    /// The conversation as (role, text) turns, the question last, `<image>` tags removed
    /// (each backend places images its own way), and the index of the turn that carries the
    /// images.
    pub fn turns(&self) -> (Vec<Message>, usize) {
        let strip = |s: &str| s.replace("<image>", "").trim_start_matches('\n').to_string();
        let mut turns: Vec<Message> =
            self.context.iter().map(|t| Message { role: t.role.clone(), content: strip(&t.content) }).collect();
        turns.push(Message { role: "user".into(), content: strip(&self.text) });
        let at = turns.iter().position(|t| t.role == "user").unwrap_or(turns.len() - 1);
        (turns, at)
    }
}

/// One request: a prompt and how to generate.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Prompt,
    pub params: GenParams,
    /// Mixed into the sampling seed, so each item (and each extra sample) draws its own
    /// numbers whatever order the engine runs them in.
    pub stream: u64,
    /// A loaded adapter to answer with (embedded engine); `None`: the backend's default.
    pub adapter: Option<String>,
}

/// A token's natural-log probability under the model, as OpenAI's `logprobs` shape has it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The vocabulary id (`None` when a server does not say).
    #[serde(skip)]
    pub id: Option<u32>,
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    /// The most likely tokens at this step, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
    /// An end-of-sequence or other special token (kept out of the answer text).
    #[serde(skip)]
    pub special: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    #[serde(skip)]
    pub id: Option<u32>,
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// A generated answer with its tokens.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub text: String,
    /// Every generated token with its log-probability; empty when the backend gives none.
    pub tokens: Vec<TokenLogprob>,
    /// `stop` (end of sequence), `length` (hit max_new_tokens), or what the server said.
    pub finish_reason: String,
    pub prompt_tokens: Option<usize>,
    /// Where the time went, when the engine runs in this process.
    pub timing: Option<Timing>,
}

/// A request's time in the embedded engine.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    /// Waiting for a place in the batch.
    pub queued: std::time::Duration,
    /// From admission to the first token (vision encoder and prefill).
    pub first_token: std::time::Duration,
    /// From submission to the last token.
    pub total: std::time::Duration,
}

impl Generation {
    /// The OpenAI `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`
    /// with `top_n` alternatives per token, special tokens (end of sequence) left out like
    /// the text; `None` without logprobs.
    pub fn logprobs_json(&self, top_n: usize) -> Option<serde_json::Value> {
        if self.tokens.is_empty() {
            return None;
        }
        let content: Vec<serde_json::Value> = self
            .tokens
            .iter()
            .filter(|t| !t.special)
            .map(|t| {
                serde_json::json!({
                    "token": t.token,
                    "logprob": t.logprob,
                    "bytes": t.bytes,
                    "top_logprobs": &t.top_logprobs[..t.top_logprobs.len().min(top_n)],
                })
            })
            .collect();
        Some(serde_json::json!({ "content": content }))
    }
}

/// What answers: engine, model, and the facts about it that change answers (they go into
/// the run's params hash).
#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    /// `mmloop`, `openai`, ...
    pub engine: String,
    /// The model as the user named it.
    pub model: String,
    /// What exactly was loaded: a snapshot hash, a folder, a server URL.
    pub resolved: String,
    /// The model family (`qwen2_5_vl`, `idefics3`, ...) where known.
    pub family: Option<String>,
    /// Whether token log-probabilities are exact natural logs of the model's distribution.
    pub exact_logprobs: bool,
    /// Extra settings that change answers (dtype, quantization, device).
    pub settings: serde_json::Value,
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn info(&self) -> &BackendInfo;

    /// The checkpoint's own generation settings (`generation_config.json`), which flags
    /// override; empty for a server.
    fn defaults(&self) -> GenerationDefaults {
        GenerationDefaults::default()
    }

    /// How many requests callers should keep in flight so the engine stays busy.
    fn max_in_flight(&self) -> usize;

    /// Answers one request.
    async fn generate(&self, req: GenRequest) -> Result<Generation>;
}
