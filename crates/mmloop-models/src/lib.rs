//! mmloop's own vision-language models, on candle: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and
//! Idefics3 / SmolVLM, loaded from the published checkpoint layouts, with the processors that
//! feed them and a generator that batches requests.
//!
//! - one plain file per family ([`qwen2_vl`], [`qwen2_5_vl`], [`qwen3_vl`], [`idefics3`]):
//!   config, vision tower, connector, read top to bottom; the language model they all end in
//!   is [`text`];
//! - [`processor`]: the checkpoint's chat template (minijinja), its tokenizer, and image
//!   preprocessing bit-exact with transformers' PIL processors;
//! - [`generate`]: KV caches, our own sampler and natural-log probabilities, packed batches
//!   and continuous batching;
//! - [`nn`]: layers with an inference path (fused kernels) and a differentiable training
//!   path, and [`nn::Linear`], addressable by its PEFT module path and able to carry
//!   LoRA/DoRA adapters ([`adapter`]);
//! - [`train`]: LoRA / DoRA training steps (ms-swift's loss, torch's AdamW, transformers'
//!   schedules) on the same layers, and PEFT adapter folders written back.
//!
//! It never touches the project store, dataset formats or the network: it reads a checkpoint
//! folder and answers prompts.

pub mod adapter;
pub mod amx;
pub mod generate;
pub mod idefics3;
pub mod kernels;
pub mod model;
pub mod nn;
pub mod processor;
pub mod qwen2_5_vl;
pub mod qwen2_vl;
pub mod qwen3_vl;
pub mod sampling;
pub mod text;
pub mod train;
pub mod weights;

pub use candle_core::{DType, Device};
pub use generate::{Engine, EngineOptions, FinishReason, GenerationOutput, Request, StepToken};
pub use model::{Family, LoadOptions, VlModel};
pub use processor::{ChatMessage, Part, Processor};
pub use sampling::{SamplingParams, Step, StepPolicy};

/// What went wrong. Messages name the file, tensor or input involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The checkpoint cannot be loaded (missing file or tensor, wrong shape).
    #[error("{0}")]
    Load(String),
    /// The checkpoint's configuration is inconsistent or incomplete.
    #[error("{0}")]
    Config(String),
    /// This architecture, feature or setting is not supported (and why).
    #[error("{0}")]
    Unsupported(String),
    /// An image the processor refuses (named).
    #[error("image {name}: {message}")]
    Image { name: String, message: String },
    /// A request the model cannot take (too long, wrong number of images, ...).
    #[error("{0}")]
    Input(String),
    /// The engine stopped.
    #[error("{0}")]
    Stopped(String),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }

    /// Whether only this request failed (a bad image or prompt), not the model.
    pub fn is_request_error(&self) -> bool {
        matches!(self, Error::Image { .. } | Error::Input(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
