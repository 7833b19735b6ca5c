//! The mmloop pre-annotation engine: a vision-language model answers a question about
//! one or more images, and says how sure it is.
//!
//! Callers hold an `Arc<dyn Backend>` and never know which engine answers:
//! - [`embedded`]: mmloop's own model layer ([`mmloop_models`]) loads a Hugging Face
//!   checkpoint (hub cache or local folder) and runs it in-process with continuous batching,
//!   on CPU by default (features `cuda`, `metal`), with exact natural-log probabilities.
//! - [`openai`]: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, LMDeploy,
//!   Ollama), images sent as base64 data URLs, with bounded concurrency, timeouts and retries.
//!
//! On top of a backend, [`Annotator`] turns one question into a candidate: the answer, its
//! [`confidence`] (geometric-mean sequence probability, minimum token probability, first-token
//! margin, optional self-consistency) and the [`rules`] that fired (hedging, refusals, format).
//!
//! This crate never touches the project store or dataset files: it takes prompts and image
//! bytes and gives back answers; the command line joins it to the store.

pub mod annotate;
pub mod backend;
pub mod confidence;
pub mod embedded;
pub mod hub;
pub mod openai;
pub mod params;
pub mod rules;

pub use annotate::{Annotation, Annotator, AnnotatorOptions, ConfidenceSource, Job, Scorer};
pub use backend::{Backend, BackendInfo, GenRequest, Generation, InputImage, Prompt, TokenLogprob, TopLogprob};
pub use confidence::{Confidence, ConfidenceDetail};
pub use mmloop_core::Message;
pub use params::{GenOverrides, GenParams, GenerationDefaults};
pub use rules::{RiskFlag, RuleInput, RuleSet, RulesConfig};

/// What went wrong while answering. Messages say what to do next where a user can act.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model could not be found or loaded.
    #[error("{0}")]
    Load(String),
    /// This model family cannot run through this backend (and why).
    #[error("{0}")]
    Unsupported(String),
    /// An input image could not be decoded: this item fails, the run goes on.
    #[error("image {name}: {message}")]
    Image { name: String, message: String },
    /// The engine failed on one request.
    #[error("{0}")]
    Generate(String),
    /// The server answered with an error that retrying will not fix.
    #[error("server error {status}: {message}")]
    Http { status: u16, message: String },
    /// The server could not be reached or did not answer in time, after every retry.
    #[error("{0}")]
    Network(String),
    /// The server does not take images.
    #[error(
        "the server at {url} does not accept images for model {model:?}: {message}\n  hint: serve a vision-language model (e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct`) and pass its name with --model"
    )]
    NoVision { url: String, model: String, message: String },
    /// The server does not return token log-probabilities.
    #[error(
        "the server at {url} returned no token log-probabilities, so no confidence can be computed\n  hint: use a server that supports `logprobs` (vLLM, SGLang, LMDeploy), or pass --logprobs false to run without confidence"
    )]
    NoLogprobs { url: String },
    /// The server answered 200 with something that is not a chat completion.
    #[error("the server at {url} sent an unexpected answer: {message}")]
    Protocol { url: String, message: String },
    #[error("{0}")]
    Config(String),
}

impl EngineError {
    /// Whether the error concerns one item only (a bad image, one failed request), so the
    /// run records it and goes on; otherwise the run stops.
    pub fn is_item_error(&self) -> bool {
        match self {
            EngineError::Image { .. } | EngineError::Generate(_) => true,
            // A request the server refuses on its merits (too long, bad input); 401/403/404
            // (wrong key or model name) would fail every item the same way.
            EngineError::Http { status, .. } => matches!(status, 400 | 413 | 422),
            _ => false,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
