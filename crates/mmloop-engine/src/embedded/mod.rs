//! The embedded backend: a checkpoint run in-process by mmloop's own model layer
//! ([`mmloop_models`]), on CPU by default, CUDA or Metal with the matching cargo feature.
//!
//! Concurrent requests share forward passes (continuous batching, [`mmloop_models::Engine`]);
//! a request's answer does not depend on what else is in the batch. Token choice and
//! natural-log probabilities are computed from the model's own float32 logits. Repo ids are
//! resolved in the hub cache (offline with `HF_HUB_OFFLINE`), downloaded when needed.

pub mod checkpoint;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use mmloop_models::generate::{Engine, EngineOptions, Event, GenerationOutput, StepToken};
use mmloop_models::model::{LoadOptions, Quant, VlModel};
use mmloop_models::processor::{ChatMessage, Part};
use mmloop_models::sampling::{SamplingParams, StepPolicy, request_seed};
use serde_json::json;

use crate::backend::{Backend, BackendInfo, GenRequest, Generation, InputImage, Timing, TokenLogprob, TopLogprob};
use crate::params::{GenParams, GenerationDefaults};
use crate::{EngineError, Result};

pub use checkpoint::Checkpoint;
pub use mmloop_models::Family;

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    Metal,
}

impl std::str::FromStr for Device {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "cuda:0" | "gpu" => Ok(Device::Cuda),
            "metal" | "mps" => Ok(Device::Metal),
            other if other.starts_with("cuda:") => Err(EngineError::Config(format!(
                "--device {other}: only the first GPU is supported\n  hint: pick the GPU with CUDA_VISIBLE_DEVICES={} and pass --device cuda",
                &other[5..]
            ))),
            other => Err(EngineError::Config(format!("unknown --device {other:?}: expected cpu, cuda or metal"))),
        }
    }
}

/// Numeric type of the weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// f32 on CPU, bf16 on a GPU.
    Auto,
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for Dtype {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Dtype::Auto),
            "f32" | "float32" | "fp32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" | "fp16" => Ok(Dtype::F16),
            other => Err(EngineError::Config(format!("unknown --dtype {other:?}: expected auto, f32, bf16 or f16"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// A checkpoint folder or a Hugging Face repo id.
    pub model: String,
    pub revision: String,
    pub device: Device,
    pub dtype: Dtype,
    /// Quantize the language model's linear layers at load: `q8_0` or `q4k`.
    pub quant: Option<String>,
    /// Requests decoded together.
    pub max_batch: usize,
    /// PEFT adapters: (name, folder). The first answers requests that name none.
    pub adapters: Vec<(String, PathBuf)>,
    /// Fold the adapters into the weights at load.
    pub merge_adapters: bool,
}

impl EmbeddedOptions {
    pub fn new(model: impl Into<String>) -> Self {
        EmbeddedOptions {
            model: model.into(),
            revision: "main".into(),
            device: Device::Cpu,
            dtype: Dtype::Auto,
            quant: None,
            max_batch: 16,
            adapters: Vec::new(),
            merge_adapters: false,
        }
    }
}

pub struct EmbeddedBackend {
    engine: Engine,
    defaults: GenerationDefaults,
    default_adapter: Option<String>,
    max_batch: usize,
    info: BackendInfo,
    max_model_len: Option<usize>,
}

/// The context length the checkpoint was trained for (`max_position_embeddings` of the
/// language model), when its config says.
fn max_model_len(config: &std::path::Path) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
    let n = v["text_config"]["max_position_embeddings"].as_u64().or_else(|| v["max_position_embeddings"].as_u64())?;
    usize::try_from(n).ok()
}

fn candle_device(d: Device) -> Result<mmloop_models::Device> {
    match d {
        Device::Cpu => Ok(mmloop_models::Device::Cpu),
        Device::Cuda if cfg!(feature = "cuda") => mmloop_models::Device::new_cuda(0)
            .map_err(|e| EngineError::Load(format!("cannot open the CUDA device: {e}"))),
        Device::Cuda => Err(EngineError::Config(
            "this mmloop was built without CUDA\n  hint: rebuild with `cargo install --path crates/mmloop-cli --features cuda` (needs the CUDA toolkit)".into(),
        )),
        Device::Metal if cfg!(feature = "metal") => mmloop_models::Device::new_metal(0)
            .map_err(|e| EngineError::Load(format!("cannot open the Metal device: {e}"))),
        Device::Metal => Err(EngineError::Config(
            "this mmloop was built without Metal\n  hint: rebuild on macOS with `cargo install --path crates/mmloop-cli --features metal`".into(),
        )),
    }
}

fn load_error(e: mmloop_models::Error) -> EngineError {
    match e {
        mmloop_models::Error::Unsupported(m) => EngineError::Unsupported(m),
        other => EngineError::Load(other.to_string()),
    }
}

impl EmbeddedBackend {
    /// Finds, prepares and loads the model (minutes for a large one).
    pub async fn load(opts: EmbeddedOptions) -> Result<EmbeddedBackend> {
        if opts.max_batch == 0 {
            return Err(EngineError::Config("--max-batch-size must be at least 1".into()));
        }
        let device = candle_device(opts.device)?;
        let dtype = match (opts.dtype, opts.device) {
            (Dtype::Auto, Device::Cpu) | (Dtype::F32, _) => mmloop_models::DType::F32,
            (Dtype::Auto, _) | (Dtype::Bf16, _) => mmloop_models::DType::BF16,
            (Dtype::F16, _) => mmloop_models::DType::F16,
        };
        let quant = opts
            .quant
            .as_deref()
            .map(str::parse::<Quant>)
            .transpose()
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let checkpoint = Checkpoint::locate(&opts.model, &opts.revision).await?;
        let defaults = GenerationDefaults::read(&checkpoint.dir.join("generation_config.json"))?;
        let max_model_len = max_model_len(&checkpoint.dir.join("config.json"));
        let load =
            LoadOptions { device, dtype, quant, adapters: opts.adapters.clone(), merge_adapters: opts.merge_adapters };
        let dir = checkpoint.dir.clone();
        let model = tokio::task::spawn_blocking(move || VlModel::load(&dir, &load))
            .await
            .map_err(|e| EngineError::Load(format!("loading panicked: {e}")))?
            .map_err(load_error)?;
        let family = model.family;
        let adapters: Vec<serde_json::Value> =
            opts.adapters.iter().map(|(n, p)| json!({"name": n, "path": p.display().to_string()})).collect();
        let info = BackendInfo {
            engine: "mmloop".into(),
            model: opts.model.clone(),
            resolved: checkpoint.resolved.clone(),
            family: Some(family.name().into()),
            exact_logprobs: true,
            settings: json!({
                "engine_version": concat!("mmloop-models ", env!("CARGO_PKG_VERSION")),
                "device": format!("{:?}", opts.device).to_lowercase(),
                "dtype": format!("{dtype:?}").to_lowercase(),
                "quant": quant.map(Quant::name),
                "adapters": adapters,
                "merged_adapters": opts.merge_adapters,
            }),
        };
        let default_adapter = (!opts.merge_adapters).then(|| opts.adapters.first().map(|(n, _)| n.clone())).flatten();
        let engine =
            Engine::new(Arc::new(model), EngineOptions { max_batch: opts.max_batch, ..EngineOptions::default() });
        Ok(EmbeddedBackend { engine, defaults, default_adapter, max_batch: opts.max_batch, info, max_model_len })
    }

    pub fn family(&self) -> Family {
        self.engine.model().family
    }

    pub fn model(&self) -> &Arc<VlModel> {
        self.engine.model()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The conversation as chat messages: the system prompt, earlier turns, the question; the
/// images at the start of the turn that carries them (as the families' templates expect).
pub fn chat_messages(req: &GenRequest) -> Vec<ChatMessage> {
    prompt_messages(&req.prompt)
}

/// [`chat_messages`] of a prompt alone (training renders its examples the same way).
pub fn prompt_messages(prompt: &crate::Prompt) -> Vec<ChatMessage> {
    let (turns, image_turn) = prompt.turns();
    let mut out = Vec::with_capacity(turns.len() + 1);
    if let Some(s) = &prompt.system {
        out.push(ChatMessage::text("system", s.clone()));
    }
    for (i, t) in turns.iter().enumerate() {
        let mut parts = Vec::new();
        if i == image_turn {
            parts.extend(prompt.images.iter().map(|_| Part::Image));
        }
        parts.push(Part::Text(t.content.clone()));
        out.push(ChatMessage { role: t.role.clone(), parts });
    }
    out
}

/// Our sampler's settings for a request.
pub fn sampling(params: &GenParams, stream: u64) -> SamplingParams {
    SamplingParams {
        policy: StepPolicy {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            // Two at least: the first-token margin needs the runner-up.
            top_n: params.top_logprobs.max(2),
        },
        max_new_tokens: params.max_new_tokens,
        min_new_tokens: params.min_new_tokens,
        seed: request_seed(params.seed, stream),
        stop: params.stop.clone(),
    }
}

/// A chat for the embedded engine: messages with their image parts in place, the images in
/// the order the parts name them, and exactly which adapter answers (`None`: the base model).
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub images: Vec<InputImage>,
    pub params: GenParams,
    pub stream: u64,
    pub adapter: Option<String>,
}

/// A request the engine has accepted: its prompt length, and its events as they happen
/// (tokens, then the end). Dropping it stops the request (a client that went away costs no
/// more steps).
pub struct Started {
    pub prompt_tokens: usize,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    pub cancel: CancelOnDrop,
}

/// Stops its request when dropped (or [`CancelOnDrop::cancel`]led).
pub struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl CancelOnDrop {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn defaults(&self) -> GenerationDefaults {
        self.defaults.clone()
    }

    fn max_in_flight(&self) -> usize {
        // Enough queued work that the scheduler can fill a batch while results are stored.
        self.max_batch * 2
    }

    async fn generate(&self, req: GenRequest) -> Result<Generation> {
        let t0 = std::time::Instant::now();
        let top_n = req.params.top_logprobs;
        let chat = ChatRequest {
            messages: chat_messages(&req),
            images: req.prompt.images.clone(),
            adapter: req.adapter.clone().or_else(|| self.default_adapter.clone()),
            params: req.params,
            stream: req.stream,
        };
        let mut started = self.start(chat).await?;
        let t1 = std::time::Instant::now();
        let out = loop {
            match started.events.recv().await {
                Some(Event::Token(_)) => {}
                Some(Event::Done(out)) => break out.map_err(|e| EngineError::Generate(e.to_string()))?,
                None => return Err(EngineError::Generate("the engine stopped".into())),
            }
        };
        // MMLOOP_TIMING=1: per-request phase times on stderr (see docs/benchmarks.md).
        if std::env::var_os("MMLOOP_TIMING").is_some() {
            eprintln!(
                "prepare {:.2}s, queued {:.2}s, first token {:.2}s, total {:.2}s; prompt {} tok, {} generated",
                (t1 - t0).as_secs_f64(),
                out.queued.as_secs_f64(),
                out.first_token.as_secs_f64(),
                t0.elapsed().as_secs_f64(),
                out.prompt_tokens,
                out.tokens.len()
            );
        }
        Ok(self.generation(out, top_n))
    }
}

impl EmbeddedBackend {
    /// Prepares a chat (images decoded and resized, template rendered, tokens counted) and
    /// queues it; errors in the request itself (an undecodable image, an unknown adapter)
    /// come back here, before anything runs.
    pub async fn start(&self, req: ChatRequest) -> Result<Started> {
        let model = self.engine.model().clone();
        let ChatRequest { messages, images, params, stream, adapter } = req;
        let (prepared, slot) = tokio::task::spawn_blocking(move || -> Result<_> {
            let decoded =
                images.iter().map(|i| Ok((i.name.clone(), i.decode()?.into_rgb8()))).collect::<Result<Vec<_>>>()?;
            let prepared = model.processor.prepare(&messages, &decoded).map_err(|e| match e {
                mmloop_models::Error::Image { name, message } => EngineError::Image { name, message },
                other => EngineError::Generate(other.to_string()),
            })?;
            let slot = match &adapter {
                None => None,
                Some(n) => Some(
                    model
                        .adapter_slot(n)
                        .ok_or_else(|| EngineError::Config(format!("no adapter named {n:?} is loaded")))?,
                ),
            };
            Ok((prepared, slot))
        })
        .await
        .map_err(|e| EngineError::Generate(format!("preparing the request panicked: {e}")))??;
        let prompt_tokens = prepared.input_ids.len();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.engine.submit_cancellable(
            prepared,
            sampling(&params, stream),
            slot,
            Box::new(move |e| {
                let _ = tx.send(e);
            }),
            cancel.clone(),
        );
        Ok(Started { prompt_tokens, events, cancel: CancelOnDrop(cancel) })
    }

    /// A generated token as the OpenAI `logprobs` shape has it, with `top_n` alternatives
    /// (two at least: the confidence's first-token margin needs the runner-up).
    pub fn token(&self, s: &StepToken, top_n: usize) -> TokenLogprob {
        let table = &self.engine.model().processor.tokens;
        TokenLogprob {
            id: Some(s.id),
            token: table.text(s.id),
            logprob: s.logprob,
            bytes: table.bytes(s.id).to_vec(),
            top_logprobs: s
                .top
                .iter()
                .take(top_n.max(2))
                .map(|&(id, lp)| TopLogprob {
                    id: Some(id),
                    token: table.text(id),
                    logprob: lp,
                    bytes: table.bytes(id).to_vec(),
                })
                .collect(),
            special: table.is_special(s.id),
        }
    }

    /// The engine's output as a [`Generation`].
    pub fn generation(&self, out: GenerationOutput, top_n: usize) -> Generation {
        Generation {
            tokens: out.tokens.iter().map(|s| self.token(s, top_n)).collect(),
            text: out.text,
            finish_reason: out.finish.as_str().into(),
            prompt_tokens: Some(out.prompt_tokens),
            timing: Some(Timing { queued: out.queued, first_token: out.first_token, total: out.total }),
        }
    }

    /// The text of generated ids, special tokens skipped (what the answer's text is made of).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.engine.model().processor.tokens.decode(ids).map_err(|e| EngineError::Generate(e.to_string()))
    }

    /// Loads a PEFT adapter under a name while serving.
    pub async fn load_adapter(&self, name: &str, dir: PathBuf) -> Result<()> {
        let model = self.engine.model().clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || model.load_adapter(&name, &dir).map(|_| ()))
            .await
            .map_err(|e| EngineError::Load(format!("loading the adapter panicked: {e}")))?
            .map_err(|e| EngineError::Load(e.to_string()))
    }

    pub fn unload_adapter(&self, name: &str) -> Result<()> {
        self.engine.model().unload_adapter(name).map_err(|e| EngineError::Config(e.to_string()))
    }

    /// Prompt plus generated tokens the checkpoint was made for (`None`: its config does not say).
    pub fn max_model_len(&self) -> Option<usize> {
        self.max_model_len
    }

    /// The adapters loaded, by name, with their folders.
    pub fn adapters(&self) -> Vec<(String, PathBuf)> {
        self.engine.model().adapters()
    }

    /// The adapter answering requests that name none (`--adapters`' first unless merged).
    pub fn default_adapter(&self) -> Option<&str> {
        self.default_adapter.as_deref()
    }
}
