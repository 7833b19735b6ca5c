//! The embedded backend: a Hugging Face VLM checkpoint run in-process by the `mistralrs`
//! crate (0.8.1), on CPU by default, CUDA or Metal with the matching cargo feature.
//!
//! mistralrs loads the weights, preprocesses images, renders the chat template and
//! schedules concurrent requests into batches. We keep what it gets wrong in 0.8.1 out of
//! the answers:
//! - token choice and log-probabilities are ours ([`step::StepRecorder`]): its own logprobs
//!   are log base 10, and of the raw logits when greedy;
//! - repo ids are resolved in the hub cache ourselves (it ignores `HF_HUB_OFFLINE` and always
//!   lists the repo online), and configs it cannot parse are normalised
//!   ([`checkpoint`]);
//! - Qwen2-VL image requests fail in its decode step (a rope-index offset bug), so they are
//!   refused with the reason instead of failing item by item;
//! - messages are sent with list content, so templates that only read lists (SmolVLM's)
//!   also render text-only turns.
//!
//! The answer text is decoded from the generated ids with the checkpoint's tokenizer.

pub mod admit;
pub mod checkpoint;
pub mod pixels;
pub mod resize;
pub mod step;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use either::Either;
use indexmap::IndexMap;
use mistralrs::{
    Constraint, ModelCategory, ModelDType, MultimodalModelBuilder, NormalRequest, Request, RequestMessage, ResponseOk,
    SamplingParams,
};
use serde_json::{Value, json};

use crate::backend::{Backend, BackendInfo, GenRequest, Generation, TokenLogprob, TopLogprob};
use crate::params::GenerationDefaults;
use crate::{EngineError, Result};

pub use checkpoint::{Checkpoint, Family};

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
    /// f32 on CPU; on a GPU bf16 where it computes it, else f16, else f32 (mistralrs' probe).
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
    /// In-situ quantization of the text layers at load: `q4k`, `q8_0`, `4`, `8`, ... (see
    /// mistralrs' `IsqType`).
    pub isq: Option<String>,
    /// Requests inside mistralrs at once (same image sizes only, see [`admit`]). 1 by
    /// default: mistralrs 0.8.1's batched decoding gave other answers than single requests
    /// on the Idefics3 and Qwen3-VL fixtures.
    pub max_batch: usize,
    /// Let Qwen2-VL image requests through (they fail in mistralrs 0.8.1; for tests that
    /// show it).
    pub allow_known_broken: bool,
    /// mistralrs' own log lines on stderr.
    pub logging: bool,
}

impl EmbeddedOptions {
    pub fn new(model: impl Into<String>) -> Self {
        EmbeddedOptions {
            model: model.into(),
            revision: "main".into(),
            device: Device::Cpu,
            dtype: Dtype::Auto,
            isq: None,
            max_batch: 1,
            allow_known_broken: false,
            logging: false,
        }
    }
}

pub struct EmbeddedBackend {
    model: mistralrs::Model,
    checkpoint: Checkpoint,
    tokens: tokens::TokenTable,
    defaults: GenerationDefaults,
    eos: Vec<u32>,
    prefixer: Option<Arc<dyn mistralrs::core::MultimodalPromptPrefixer>>,
    sizing: Arc<pixels::Sizing>,
    admission: admit::Admission,
    max_batch: usize,
    allow_known_broken: bool,
    info: BackendInfo,
}

/// Why Qwen2-VL image requests are refused (and what to do instead).
pub const QWEN2_VL_IMAGES_UNSUPPORTED: &str = "Qwen2-VL cannot answer image questions through mistralrs 0.8.1: its Qwen2-VL forward pass builds the M-RoPE position ids as offset..offset+len and indexes past the prompt at the first decode step (`index-select invalid index N with dim size N`); fixed upstream in mistral.rs 0.9.1, which is not on crates.io\n  hint: use Qwen2.5-VL or Qwen3-VL, or serve Qwen2-VL with vLLM and pass --api URL";

fn eos_ids(dir: &Path, defaults: &GenerationDefaults, tokens: &tokens::TokenTable) -> Vec<u32> {
    let mut eos = defaults.eos_token_id.clone();
    if let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        let name = match &v["eos_token"] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
            _ => None,
        };
        if let Some(id) = name.and_then(|n| tokens.id(&n)) {
            eos.push(id);
        }
    }
    eos.sort_unstable();
    eos.dedup();
    eos
}

impl EmbeddedBackend {
    /// Finds, prepares and loads the model (minutes for a large one).
    pub async fn load(opts: EmbeddedOptions) -> Result<EmbeddedBackend> {
        if opts.max_batch == 0 {
            return Err(EngineError::Config("--max-batch-size must be at least 1".into()));
        }
        match opts.device {
            Device::Cuda if !cfg!(feature = "cuda") => {
                return Err(EngineError::Config(
                    "this mmloop was built without CUDA\n  hint: rebuild with `cargo install --path crates/mmloop-cli --features cuda` (needs the CUDA toolkit)".into(),
                ));
            }
            Device::Metal if !cfg!(feature = "metal") => {
                return Err(EngineError::Config(
                    "this mmloop was built without Metal\n  hint: rebuild on macOS with `cargo install --path crates/mmloop-cli --features metal`".into(),
                ));
            }
            _ => {}
        }
        if opts.device == Device::Cpu && matches!(opts.dtype, Dtype::Bf16 | Dtype::F16) {
            let name = if opts.dtype == Dtype::Bf16 { "bf16" } else { "f16" };
            return Err(EngineError::Config(format!(
                "--dtype {name} does not run on CPU: candle 0.10's CPU kernels lack half-precision matmul for these models (\"unsupported dtype BF16 for op matmul\")\n  hint: use --dtype f32 (the CPU default), or a GPU"
            )));
        }
        let checkpoint = Checkpoint::prepare(&opts.model, &opts.revision).await?;
        let defaults = GenerationDefaults::read(&checkpoint.source.join("generation_config.json"))?;
        let pre_tokens = tokens::TokenTable::load(&checkpoint.source.join("tokenizer.json"), &[])?;
        let eos = eos_ids(&checkpoint.source, &defaults, &pre_tokens);
        let tokens = tokens::TokenTable::load(&checkpoint.source.join("tokenizer.json"), &eos)?;
        drop(pre_tokens);
        let pre_path = checkpoint.source.join("preprocessor_config.json");
        let pre: Value = match std::fs::read_to_string(&pre_path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| EngineError::Load(format!("{}: not JSON: {e}", pre_path.display())))?,
            Err(_) => json!({}),
        };
        let sizing = Arc::new(pixels::Sizing::new(checkpoint.family, &pre)?);

        // Qwen2-VL / Qwen2.5-VL cannot batch image prompts at all in 0.8.1 (see `admit`).
        let max_batch = match checkpoint.family {
            Family::Qwen2Vl | Family::Qwen25Vl => 1,
            _ => opts.max_batch,
        };
        let mut b = MultimodalModelBuilder::new(checkpoint.load_dir.display().to_string())
            .with_max_num_seqs(max_batch)
            .with_prefix_cache_n(None)
            .with_dtype(match opts.dtype {
                // mistralrs' probe picks bf16 on CPU, where candle 0.10 lacks bf16 for some
                // matmuls ("unsupported dtype BF16 for op matmul" in Qwen2.5-VL).
                Dtype::Auto if opts.device == Device::Cpu => ModelDType::F32,
                Dtype::Auto => ModelDType::Auto,
                Dtype::F32 => ModelDType::F32,
                Dtype::Bf16 => ModelDType::BF16,
                Dtype::F16 => ModelDType::F16,
            });
        if let Some(l) = checkpoint.family.loader() {
            b = b.with_loader_type(l);
        }
        if opts.device == Device::Cpu {
            b = b.with_force_cpu();
        }
        if let Some(q) = &opts.isq {
            let dev = match opts.device {
                Device::Cpu => mistralrs::Device::Cpu,
                _ => mistralrs::best_device(false).map_err(|e| EngineError::Load(e.to_string()))?,
            };
            let ty = mistralrs::parse_isq_value(q, Some(&dev)).map_err(|e| {
                EngineError::Config(format!("--quant {q}: {e}\n  hint: e.g. q4k, q5k, q8_0, or a bit width 4 / 8"))
            })?;
            b = b.with_isq(ty);
        }
        if opts.logging {
            b = b.with_logging();
        }
        let model = b.build().await.map_err(|e| {
            EngineError::Load(format!(
                "cannot load {} ({}): {e:#}",
                opts.model,
                if checkpoint.architecture.is_empty() { "unknown architecture" } else { &checkpoint.architecture }
            ))
        })?;
        let config = model.config().map_err(|e| EngineError::Load(e.to_string()))?;
        let prefixer = match config.category {
            ModelCategory::Multimodal { prefixer } => Some(prefixer),
            _ => {
                return Err(EngineError::Load(format!(
                    "{} is not a vision-language model (mistralrs loaded it as {:?})",
                    opts.model, config.category
                )));
            }
        };
        let info = BackendInfo {
            engine: "mistralrs".into(),
            model: opts.model.clone(),
            resolved: checkpoint.resolved.clone(),
            family: Some(checkpoint.family.name().into()),
            exact_logprobs: true,
            settings: json!({
                "engine_version": "mistralrs 0.8.1",
                "device": format!("{:?}", opts.device).to_lowercase(),
                "dtype": format!("{:?}", opts.dtype).to_lowercase(),
                "isq": opts.isq,
                "max_batch": max_batch,
            }),
        };
        Ok(EmbeddedBackend {
            model,
            tokens,
            defaults,
            eos,
            prefixer,
            sizing,
            admission: admit::Admission::new(max_batch),
            max_batch,
            allow_known_broken: opts.allow_known_broken,
            info,
            checkpoint,
        })
    }

    pub fn family(&self) -> Family {
        self.checkpoint.family
    }

    pub fn tokens(&self) -> &tokens::TokenTable {
        &self.tokens
    }

    /// End-of-sequence ids (generation_config.json and the tokenizer's eos token).
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    fn messages(&self, req: &GenRequest) -> Vec<IndexMap<String, mistralrs::MessageContent>> {
        let (turns, image_turn) = req.prompt.turns();
        let n_images = req.prompt.images.len();
        let part = |kind: &str, text: Option<&str>| {
            let mut m = IndexMap::new();
            m.insert("type".to_string(), Value::String(kind.into()));
            if let Some(t) = text {
                m.insert("text".to_string(), Value::String(t.into()));
            }
            m
        };
        let message = |role: &str, content: Vec<IndexMap<String, Value>>| {
            let mut m = IndexMap::new();
            m.insert("role".to_string(), Either::Left(role.to_string()));
            m.insert("content".to_string(), Either::Right(content));
            m
        };
        // The stand-in characters of the round-trip tokenizer must not come from a prompt.
        let clean = |s: &str| -> String {
            if self.checkpoint.family.uses_stand_in_tokenizer() {
                s.chars().filter(|c| !checkpoint::is_stand_in_char(*c)).collect()
            } else {
                s.to_string()
            }
        };
        let mut out = Vec::new();
        if let Some(s) = &req.prompt.system {
            out.push(message("system", vec![part("text", Some(&clean(s)))]));
        }
        for (i, t) in turns.iter().enumerate() {
            let mut content = Vec::new();
            let mut text = clean(&t.content);
            if i == image_turn && n_images > 0 {
                content.extend((0..n_images).map(|_| part("image", None)));
                // Families whose template flattens content to its text (Qwen2/2.5-VL) get
                // the image placeholders from mistralrs' prefixer, as its own SDK does.
                if let Some(p) = &self.prefixer {
                    text = p.prefix_image((0..n_images).collect(), &text);
                }
            }
            content.push(part("text", Some(&text)));
            out.push(message(&t.role, content));
        }
        out
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
        if self.checkpoint.family == Family::Qwen2Vl && !req.prompt.images.is_empty() && !self.allow_known_broken {
            return Err(EngineError::Unsupported(QWEN2_VL_IMAGES_UNSUPPORTED.into()));
        }
        let t0 = std::time::Instant::now();
        let images = {
            let imgs = req.prompt.images.clone();
            let sizing = self.sizing.clone();
            tokio::task::spawn_blocking(move || {
                imgs.iter().map(|i| sizing.apply(i.decode()?, &i.name)).collect::<Result<Vec<_>>>()
            })
            .await
            .map_err(|e| EngineError::Generate(format!("image decoding panicked: {e}")))??
        };
        let shape: Vec<(u32, u32)> = images.iter().map(|i| (i.width(), i.height())).collect();
        let t1 = std::time::Instant::now();
        let _place = self.admission.enter(shape).await;
        let t2 = std::time::Instant::now();
        let recorder = Arc::new(step::StepRecorder::new(&req.params, req.stream, self.eos.clone()));
        let messages = self.messages(&req);
        let messages = if images.is_empty() {
            RequestMessage::Chat { messages, enable_thinking: None, reasoning_effort: None }
        } else {
            RequestMessage::MultimodalChat {
                images,
                audios: Vec::new(),
                videos: Vec::new(),
                messages,
                enable_thinking: None,
                reasoning_effort: None,
            }
        };
        let mut sampling = SamplingParams::deterministic();
        sampling.max_len = Some(req.params.max_new_tokens);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let request = Request::Normal(Box::new(NormalRequest {
            messages,
            sampling_params: sampling,
            response: tx,
            return_logprobs: false,
            is_streaming: false,
            id: 0,
            constraint: Constraint::None,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![recorder.clone()]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        let sender = self.model.inner().get_sender(None).map_err(|e| EngineError::Generate(e.to_string()))?;
        sender.send(request).await.map_err(|_| EngineError::Generate("the mistralrs engine has stopped".into()))?;
        let response =
            rx.recv().await.ok_or_else(|| EngineError::Generate("the mistralrs engine dropped the request".into()))?;
        let done = match response.as_result() {
            Ok(ResponseOk::Done(r)) => r,
            Ok(_) => return Err(EngineError::Generate("mistralrs sent an unexpected response kind".into())),
            Err(e) => return Err(EngineError::Generate(format!("mistralrs: {e}"))),
        };
        // MMLOOP_TIMING=1: per-request phase times on stderr (see docs/benchmarks.md).
        if std::env::var_os("MMLOOP_TIMING").is_some() {
            let u = &done.usage;
            eprintln!(
                "images {:.2}s, wait {:.2}s, engine {:.2}s; mistralrs: prompt {} tok in {:.2}s, completion {} tok in {:.2}s, total {:.2}s",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                t2.elapsed().as_secs_f64(),
                u.prompt_tokens,
                u.total_prompt_time_sec,
                u.completion_tokens,
                u.total_completion_time_sec,
                u.total_time_sec
            );
        }
        let mut steps = recorder.take_steps();
        let choice =
            done.choices.first().ok_or_else(|| EngineError::Generate("mistralrs returned no choice".into()))?;
        let n = done.usage.completion_tokens;
        if steps.len() < n {
            return Err(EngineError::Generate(format!(
                "mistralrs generated {n} tokens but the step hook saw {}",
                steps.len()
            )));
        }
        // A finished sequence can go through one more sampling step in a batch; its tokens
        // are the first `n` the hook chose.
        steps.truncate(n);
        let ids: Vec<u32> = steps.iter().map(|s| s.id).collect();
        if self.checkpoint.family.uses_stand_in_tokenizer()
            && let Some(engine_ids) = choice.message.content.as_deref().and_then(checkpoint::stand_in_ids)
        {
            let ours: Vec<u32> = ids.iter().copied().filter(|&i| !self.tokens.is_special(i)).collect();
            if engine_ids != ours {
                return Err(EngineError::Generate(format!(
                    "mistralrs emitted tokens {engine_ids:?} but the step hook chose {ours:?}"
                )));
            }
        }
        let text = self.tokens.decode(&ids)?;
        let tokens = steps
            .into_iter()
            .map(|s| TokenLogprob {
                id: Some(s.id),
                token: self.tokens.text(s.id),
                logprob: s.logprob,
                bytes: self.tokens.bytes(s.id).to_vec(),
                top_logprobs: s
                    .top
                    .iter()
                    .take(req.params.top_logprobs.max(2))
                    .map(|&(id, lp)| TopLogprob {
                        id: Some(id),
                        token: self.tokens.text(id),
                        logprob: lp,
                        bytes: self.tokens.bytes(id).to_vec(),
                    })
                    .collect(),
                special: self.tokens.is_special(s.id),
            })
            .collect();
        Ok(Generation {
            text,
            tokens,
            finish_reason: choice.finish_reason.clone(),
            prompt_tokens: Some(done.usage.prompt_tokens),
        })
    }
}
