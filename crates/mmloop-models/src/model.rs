//! A loaded checkpoint: its family's vision tower, the language model, the processor, and
//! the adapters it carries.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::nn::{Ctx, Linear};
use crate::processor::{Pixels, Processor, read_json};
use crate::text::{Deepstack, TextConfig, TextModel};
use crate::weights::Weights;
use crate::{Error, Result, idefics3, qwen2_5_vl, qwen2_vl, qwen3_vl};

/// The model families this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Qwen2Vl,
    Qwen25Vl,
    Qwen3Vl,
    Idefics3,
}

impl Family {
    /// The family of a `config.json` `architectures[0]`.
    pub fn from_architecture(arch: &str) -> Option<Family> {
        Some(match arch {
            "Qwen2VLForConditionalGeneration" => Family::Qwen2Vl,
            "Qwen2_5_VLForConditionalGeneration" => Family::Qwen25Vl,
            "Qwen3VLForConditionalGeneration" => Family::Qwen3Vl,
            "Idefics3ForConditionalGeneration" => Family::Idefics3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Qwen2Vl => "qwen2_vl",
            Family::Qwen25Vl => "qwen2_5_vl",
            Family::Qwen3Vl => "qwen3_vl",
            Family::Idefics3 => "idefics3",
        }
    }

    pub const ARCHITECTURES: &'static str = "Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration, Idefics3ForConditionalGeneration (SmolVLM)";
}

/// Weight formats for inference: GGML blocks on the language model's linear layers (candle's
/// quantized matmul), or bfloat16 on every linear layer and the vision tower's attention
/// products (AMX on CPUs that have it: [`crate::amx`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    Q8_0,
    Q4K,
    Bf16,
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Quant> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" | "8" => Ok(Quant::Q8_0),
            "q4k" | "q4_k" | "q4" | "4" => Ok(Quant::Q4K),
            "bf16" | "bfloat16" => Ok(Quant::Bf16),
            other => Err(Error::Unsupported(format!("--quant {other:?}: expected q8_0, q4k or bf16"))),
        }
    }
}

impl Quant {
    /// The GGML block format (`None` for bf16, which is not a block format).
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            Quant::Q8_0 => Some(GgmlDType::Q8_0),
            Quant::Q4K => Some(GgmlDType::Q4K),
            Quant::Bf16 => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4K => "q4k",
            Quant::Bf16 => "bf16",
        }
    }
}

/// How to load a checkpoint.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Quantize the language model's linear layers (GGML formats), or round every linear layer
    /// to bfloat16.
    pub quant: Option<Quant>,
    /// PEFT adapters to load: (name, folder).
    pub adapters: Vec<(String, PathBuf)>,
    /// Fold the adapters into the weights at load (PEFT's `merge_and_unload`).
    pub merge_adapters: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, dtype: DType::F32, quant: None, adapters: Vec::new(), merge_adapters: false }
    }
}

/// The vision tower and connector of each family.
pub enum Vision {
    Qwen2(qwen2_vl::Vision),
    Qwen25(qwen2_5_vl::Vision),
    Qwen3(qwen3_vl::Vision),
    Idefics3(idefics3::Vision),
}

/// What the vision side gives the language model for one request's images.
#[derive(Clone, Debug)]
pub struct ImageFeatures {
    /// `[image tokens, hidden]`, in placeholder order.
    pub embeds: Tensor,
    /// Qwen3-VL DeepStack features, one `[image tokens, hidden]` per early decoder layer.
    pub deepstack: Vec<Tensor>,
}

pub struct VlModel {
    pub family: Family,
    pub dir: PathBuf,
    pub config: Value,
    pub vision: Vision,
    pub text: TextModel,
    pub processor: Processor,
    /// End-of-sequence ids (generation_config.json and the tokenizer's eos token).
    pub eos: Vec<u32>,
    /// Loaded adapters by slot: (name, folder).
    adapters: RwLock<Vec<Option<(String, PathBuf)>>>,
    pub dtype: DType,
    pub quant: Option<Quant>,
}

/// The end-of-sequence ids transformers stops on: generation_config.json's `eos_token_id`,
/// else config.json's, else the tokenizer's `eos_token`.
fn eos_ids(dir: &Path, config: &Value) -> Result<Vec<u32>> {
    let gen_path = dir.join("generation_config.json");
    let gen_cfg = if gen_path.is_file() { read_json(&gen_path)? } else { Value::Null };
    let ids = |v: &Value| -> Vec<u32> {
        match v {
            Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Value::Array(a) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
            _ => Vec::new(),
        }
    };
    let mut eos = ids(&gen_cfg["eos_token_id"]);
    if eos.is_empty() {
        eos = ids(&config["eos_token_id"]);
    }
    if eos.is_empty() {
        eos = ids(&config["text_config"]["eos_token_id"]);
    }
    Ok(eos)
}

impl VlModel {
    /// Loads the checkpoint in `dir` (a local folder in the published layout).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<VlModel> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::Load(format!("{}: no config.json (is this a checkpoint folder?)", dir.display())));
        }
        let config = read_json(&config_path)?;
        let arch = config["architectures"][0].as_str().unwrap_or_default();
        let family = Family::from_architecture(arch).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: architecture {:?} is not supported\n  hint: mmloop runs {}; serve other models with vLLM and pass --api",
                config_path.display(),
                arch,
                Family::ARCHITECTURES
            ))
        })?;
        let text_cfg: TextConfig = match family {
            Family::Idefics3 => idefics3::text_config(&config)?,
            f => qwen2_vl::qwen_text_config(&config, f)?,
        };
        let mut eos = eos_ids(dir, &config)?;
        let pre_tokens = crate::processor::TokenTable::load(&dir.join("tokenizer.json"), &[])?;
        if let Ok(tc) = read_json(&dir.join("tokenizer_config.json"))
            && let Some(name) = tc["eos_token"].as_str().or(tc["eos_token"]["content"].as_str())
            && let Some(id) = pre_tokens.id(name)
        {
            eos.push(id);
        }
        drop(pre_tokens);
        eos.sort_unstable();
        eos.dedup();
        let processor = Processor::load(dir, family, &config, &eos)?;
        let bf16 = opts.quant == Some(Quant::Bf16);
        if bf16 && opts.dtype != DType::F32 {
            return Err(Error::Unsupported(format!(
                "--quant bf16 rounds float32 weights; the model is loaded as {:?} (use --dtype f32)",
                opts.dtype
            )));
        }
        // Layers rounded as they are read, unless adapters given at load need the float32
        // weights first (merged into them, or DoRA's column norms).
        let w =
            Weights::open(dir, &opts.device, opts.dtype)?.rounding_linears_to_bf16(bf16 && opts.adapters.is_empty());
        let hidden = text_cfg.hidden_size;
        let vision = match family {
            Family::Qwen2Vl => Vision::Qwen2(qwen2_vl::Vision::load(&w, &config, hidden)?),
            Family::Qwen25Vl => Vision::Qwen25(qwen2_5_vl::Vision::load(&w, &config, hidden)?),
            Family::Qwen3Vl => Vision::Qwen3(qwen3_vl::Vision::load(&w, &config, hidden)?),
            Family::Idefics3 => Vision::Idefics3(idefics3::Vision::load(&w, &config, hidden)?),
        };
        if opts.quant.is_some() && !opts.device.is_cpu() && !opts.device.is_cuda() && !opts.device.is_metal() {
            return Err(Error::Unsupported("quantization on this device".into()));
        }
        // Adapters merged at load go into the full-precision weights, quantized afterwards.
        let merge_first = opts.merge_adapters && !opts.adapters.is_empty();
        let text = TextModel::load(&w, text_cfg, opts.quant.filter(|_| !merge_first).and_then(Quant::ggml))?;
        let model = VlModel {
            family,
            dir: dir.to_path_buf(),
            config,
            vision,
            text,
            processor,
            eos,
            adapters: RwLock::new(Vec::new()),
            dtype: opts.dtype,
            quant: opts.quant,
        };
        let mut model = model;
        for (name, path) in &opts.adapters {
            model.load_adapter(name, path)?;
        }
        if opts.merge_adapters {
            model.merge_adapters()?;
        }
        if let Some(q) = opts.quant.filter(|_| merge_first).and_then(Quant::ggml) {
            for l in model.text.linears_mut() {
                l.quantize(q)?;
            }
        }
        if bf16 {
            // The layers not yet rounded (all of them when adapters came first).
            for l in model.linears_mut() {
                l.to_bf16()?;
            }
            model.text.lm_head.to_bf16()?;
            model.text.bf16_attention = true;
        }
        Ok(model)
    }

    pub fn device(&self) -> &Device {
        self.text.device()
    }

    /// Every linear layer of the model (language and vision).
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = self.text.linears();
        // The vision towers' layers are reached through their `_mut` lists only when adapted;
        // adapters here target the language model, as ms-swift and vLLM do for VL models.
        out.push(&self.text.lm_head);
        out
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = self.text.linears_mut();
        match &mut self.vision {
            Vision::Qwen2(v) => out.extend(v.linears_mut()),
            Vision::Qwen25(v) => out.extend(v.linears_mut()),
            Vision::Qwen3(v) => out.extend(v.linears_mut()),
            Vision::Idefics3(v) => out.extend(v.linears_mut()),
        }
        out
    }

    /// Loads a PEFT adapter folder as `name`; returns its slot.
    pub fn load_adapter(&self, name: &str, dir: &Path) -> Result<usize> {
        self.add_adapter(name, &crate::adapter::PeftAdapter::read(dir)?)
    }

    /// Puts `adapter` (read from disk or new) on the language model as `name`; returns its slot.
    pub fn add_adapter(&self, name: &str, adapter: &crate::adapter::PeftAdapter) -> Result<usize> {
        let dir = &adapter.dir;
        let mut slots = self.adapters.write().expect("adapter slots");
        if slots.iter().flatten().any(|(n, _)| n == name) {
            return Err(Error::Input(format!("an adapter named {name:?} is already loaded")));
        }
        let slot = slots.iter().position(Option::is_none).unwrap_or(slots.len());
        adapter.attach(self.text.linears(), slot)?;
        if slot == slots.len() {
            slots.push(None);
        }
        slots[slot] = Some((name.to_string(), dir.to_path_buf()));
        Ok(slot)
    }

    /// Removes adapter `name`.
    pub fn unload_adapter(&self, name: &str) -> Result<()> {
        let mut slots = self.adapters.write().expect("adapter slots");
        let slot = slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|(n, _)| n == name))
            .ok_or_else(|| Error::Input(format!("no adapter named {name:?} is loaded")))?;
        for l in self.text.linears() {
            l.set_adapter(slot, None);
        }
        slots[slot] = None;
        Ok(())
    }

    /// The slot of adapter `name`.
    pub fn adapter_slot(&self, name: &str) -> Option<usize> {
        self.adapters.read().expect("adapter slots").iter().position(|s| s.as_ref().is_some_and(|(n, _)| n == name))
    }

    /// Loaded adapters: (name, folder).
    pub fn adapters(&self) -> Vec<(String, PathBuf)> {
        self.adapters.read().expect("adapter slots").iter().flatten().cloned().collect()
    }

    /// Folds every loaded adapter into the weights.
    pub fn merge_adapters(&mut self) -> Result<()> {
        let n = self.adapters.read().expect("adapter slots").len();
        for l in self.text.linears_mut() {
            for slot in 0..n {
                l.merge_adapter(slot)?;
            }
        }
        self.adapters.write().expect("adapter slots").clear();
        Ok(())
    }

    /// Runs the vision tower over one request's images, an image (Qwen) or a tile
    /// (Idefics3) at a time: attention never crosses them, and small activations stay in cache
    /// and out of the page allocator.
    pub fn encode_images(&self, pixels: &Pixels, ctx: &Ctx) -> Result<ImageFeatures> {
        let dev = self.device();
        let ctx = Ctx { bf16: self.quant == Some(Quant::Bf16), ..ctx.base() };
        let parts: Vec<ImageFeatures> = match (&self.vision, pixels) {
            (Vision::Idefics3(v), Pixels::Tiles { tiles }) => {
                let per = tiles.shape[1..].iter().product::<usize>();
                (0..tiles.shape[0])
                    .map(|i| {
                        let one = crate::processor::Array {
                            data: tiles.data[i * per..(i + 1) * per].to_vec(),
                            shape: [&[1usize][..], &tiles.shape[1..]].concat(),
                        };
                        v.forward(&one, &ctx, dev, self.dtype)
                    })
                    .collect::<Result<_>>()?
            }
            (vision, Pixels::Patches { patches, grids }) => {
                let width = patches.shape[1];
                let mut start = 0;
                let mut out = Vec::with_capacity(grids.len());
                for g in grids {
                    let n = g[0] * g[1] * g[2];
                    let one = crate::processor::Array {
                        data: patches.data[start * width..(start + n) * width].to_vec(),
                        shape: vec![n, width],
                    };
                    start += n;
                    let t = qwen2_vl::patch_tensor(&one, dev, self.dtype)?;
                    out.push(match vision {
                        Vision::Qwen2(v) => v.forward(&t, std::slice::from_ref(g), &ctx)?,
                        Vision::Qwen25(v) => v.forward(&t, std::slice::from_ref(g), &ctx)?,
                        Vision::Qwen3(v) => v.forward(&t, std::slice::from_ref(g), &ctx)?,
                        Vision::Idefics3(_) => return Err(Error::Input("patches for a tiled model".into())),
                    });
                }
                out
            }
            _ => return Err(Error::Input("pixels prepared for another family".into())),
        };
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one"));
        }
        let embeds = Tensor::cat(&parts.iter().map(|p| &p.embeds).collect::<Vec<_>>(), 0)?;
        let layers = parts[0].deepstack.len();
        let deepstack = (0..layers)
            .map(|l| Tensor::cat(&parts.iter().map(|p| &p.deepstack[l]).collect::<Vec<_>>(), 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ImageFeatures { embeds, deepstack })
    }

    /// The prompt's input embeddings with the image features in place of the image tokens,
    /// and the DeepStack features of those rows.
    pub fn prompt_embeds(&self, ids: &[u32], features: Option<&ImageFeatures>) -> Result<(Tensor, Option<Deepstack>)> {
        let embeds = self.text.embed_ids(ids)?;
        let Some(f) = features else { return Ok((embeds, None)) };
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == self.processor.image_token_id)
            .map(|(i, _)| i as u32)
            .collect();
        let n = f.embeds.dim(0)?;
        if rows.len() != n {
            return Err(Error::Input(format!("{} image tokens in the prompt but {n} image features", rows.len())));
        }
        let idx = Tensor::new(rows.as_slice(), self.device())?;
        // Zero the placeholder rows, then add the features there (masked_scatter).
        let keep: Vec<f32> = ids.iter().map(|&t| if t == self.processor.image_token_id { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (ids.len(), 1), self.device())?.to_dtype(embeds.dtype())?;
        let embeds = embeds.broadcast_mul(&keep)?.index_add(&idx, &f.embeds.to_dtype(embeds.dtype())?, 0)?;
        let deepstack = (!f.deepstack.is_empty()).then(|| Deepstack { rows, features: f.deepstack.clone() });
        Ok((embeds, deepstack))
    }
}
