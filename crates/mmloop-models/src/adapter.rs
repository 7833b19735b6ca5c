//! PEFT adapters (`adapter_config.json` + `adapter_model.safetensors`), as PEFT, vLLM and
//! ms-swift write and read them.
//!
//! Keys name transformers-5 module paths:
//! `base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight` (Qwen),
//! `base_model.model.model.text_model.layers.0...` (Idefics3), with `lora_B.weight` and, for
//! DoRA, `lora_magnitude_vector`. Adapters saved by older transformers name the Qwen
//! language model `model.layers.*`; those are mapped to the same layers. The scale is
//! `lora_alpha / r` (`/ √r` with `use_rslora`), per module when `rank_pattern` /
//! `alpha_pattern` say so.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nn::{Linear, LoraWeights};
use crate::{Error, Result};

/// The fields of `adapter_config.json` that change what an adapter computes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "default_type")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub target_modules: Value,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub modules_to_save: Option<Value>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub lora_dropout: f64,
}

impl AdapterConfig {
    /// A LoRA (or, with `use_dora`, DoRA) configuration of rank `r`.
    pub fn new(r: usize, lora_alpha: f64, use_dora: bool) -> AdapterConfig {
        AdapterConfig {
            peft_type: default_type(),
            r,
            lora_alpha,
            use_dora,
            use_rslora: false,
            target_modules: Value::Null,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            modules_to_save: None,
            bias: Some("none".into()),
            lora_dropout: 0.0,
        }
    }

    /// The `adapter_config.json` PEFT writes for this configuration (its other keys at
    /// PEFT's defaults), `target_modules` the explicit list of adapted module paths.
    pub fn peft_json(&self, base_model: &str, modules: &[String]) -> Value {
        serde_json::json!({
            "alpha_pattern": self.alpha_pattern,
            "base_model_name_or_path": base_model,
            "bias": self.bias.as_deref().unwrap_or("none"),
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": self.rank_pattern,
            "revision": null,
            "target_modules": modules,
            "task_type": "CAUSAL_LM",
            "use_dora": self.use_dora,
            "use_rslora": self.use_rslora,
        })
    }
}

/// The linear layers a new adapter adapts (PEFT's `target_modules`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every linear layer of the language model, its output head excepted (`all-linear`).
    AllLinear,
    /// Layers whose module path is, or ends with, one of these names (`q_proj`, `mlp.up_proj`).
    Names(Vec<String>),
}

impl Targets {
    /// `all-linear`, or module names.
    pub fn parse(names: &[String]) -> Targets {
        if names.iter().any(|n| n == "all-linear") { Targets::AllLinear } else { Targets::Names(names.to_vec()) }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Targets::AllLinear => true,
            Targets::Names(names) => {
                names.iter().any(|n| path == n || path.strip_suffix(n.as_str()).is_some_and(|p| p.ends_with('.')))
            }
        }
    }
}

fn default_type() -> String {
    "LORA".into()
}

/// One module's adapter tensors.
pub struct ModuleAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub magnitude: Option<Tensor>,
    pub scale: f64,
}

/// An adapter read from disk.
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// By module path (`model.language_model.layers.0.self_attn.q_proj`).
    pub modules: BTreeMap<String, ModuleAdapter>,
}

/// The module path a PEFT key names, in transformers-5 spelling, and the tensor kind.
fn split_key(key: &str) -> Option<(String, &'static str)> {
    let rest = key.strip_prefix("base_model.model.").unwrap_or(key);
    let (module, kind) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, "A")
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, "B")
    } else if let Some(m) = rest.strip_suffix(".lora_magnitude_vector") {
        (m, "M")
    } else if let Some(m) = rest.strip_suffix(".lora_magnitude_vector.weight") {
        (m, "M")
    } else {
        return None;
    };
    let module = if let Some(l) = module.strip_prefix("model.layers.") {
        format!("model.language_model.layers.{l}")
    } else if let Some(v) = module.strip_prefix("visual.") {
        format!("model.visual.{v}")
    } else {
        module.to_string()
    };
    Some((module, kind))
}

/// PEFT's pattern lookup: a key matches a module whose path ends with it (dot-separated).
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, module: &str) -> Option<T> {
    patterns.iter().find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}"))).map(|(_, v)| *v)
}

impl PeftAdapter {
    pub fn read(dir: &Path) -> Result<PeftAdapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            Error::Load(format!(
                "{}: {e}\n  hint: an adapter folder holds adapter_config.json and adapter_model.safetensors",
                cfg_path.display()
            ))
        })?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Load(format!("{}: not a PEFT adapter config: {e}", cfg_path.display())))?;
        if !config.peft_type.eq_ignore_ascii_case("LORA") {
            return Err(Error::Unsupported(format!(
                "{}: peft_type {} (only LoRA and DoRA adapters are supported)",
                cfg_path.display(),
                config.peft_type
            )));
        }
        if config.modules_to_save.as_ref().is_some_and(|m| m.as_array().is_some_and(|a| !a.is_empty())) {
            return Err(Error::Unsupported(format!(
                "{}: modules_to_save (fully trained extra modules) is not supported",
                cfg_path.display()
            )));
        }
        if config.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(Error::Unsupported(format!("{}: bias {:?} is not supported", cfg_path.display(), config.bias)));
        }
        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            return Err(Error::Load(format!(
                "{}: adapter_model.safetensors is missing{}",
                dir.display(),
                if dir.join("adapter_model.bin").is_file() {
                    " (only adapter_model.bin, a pickle, which mmloop does not read)"
                } else {
                    ""
                }
            )));
        }
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| Error::Load(format!("{}: {e}", weights.display())))?;
        let mut parts: BTreeMap<String, HashMap<&'static str, Tensor>> = BTreeMap::new();
        for (key, t) in tensors {
            let (module, kind) = split_key(&key).ok_or_else(|| {
                Error::Unsupported(format!("{}: tensor {key} is not a LoRA/DoRA weight", weights.display()))
            })?;
            parts.entry(module).or_default().insert(kind, t.to_dtype(DType::F32)?);
        }
        let mut modules = BTreeMap::new();
        for (module, mut p) in parts {
            let (Some(a), Some(b)) = (p.remove("A"), p.remove("B")) else {
                return Err(Error::Load(format!("{}: {module} lacks lora_A or lora_B", weights.display())));
            };
            let r = pattern_value(&config.rank_pattern, &module).unwrap_or(config.r);
            let alpha = pattern_value(&config.alpha_pattern, &module).unwrap_or(config.lora_alpha);
            if a.dim(0)? != r || b.dim(1)? != r {
                return Err(Error::Load(format!(
                    "{}: {module}: lora_A {:?} and lora_B {:?} do not have rank {r}",
                    weights.display(),
                    a.dims(),
                    b.dims()
                )));
            }
            let scale = if config.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
            let magnitude = p.remove("M");
            if config.use_dora && magnitude.is_none() {
                return Err(Error::Load(format!(
                    "{}: {module}: a DoRA adapter without lora_magnitude_vector",
                    weights.display()
                )));
            }
            modules.insert(module, ModuleAdapter { a, b, magnitude, scale });
        }
        if modules.is_empty() {
            return Err(Error::Load(format!("{}: the adapter holds no LoRA weights", weights.display())));
        }
        Ok(PeftAdapter { dir: dir.to_path_buf(), config, modules })
    }

    /// A new adapter on the `layers` that `targets` names, initialised as PEFT does: A
    /// Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in), drawn from `seed`; B zero, so the
    /// adapted model starts as the base model; DoRA's magnitude the base weight's row norms.
    pub fn init(layers: Vec<&Linear>, config: &AdapterConfig, targets: &Targets, seed: u64) -> Result<PeftAdapter> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let r = config.r;
        if r == 0 {
            return Err(Error::Input("the LoRA rank must be at least 1".into()));
        }
        let scale =
            if config.use_rslora { config.lora_alpha / (r as f64).sqrt() } else { config.lora_alpha / r as f64 };
        let mut modules = BTreeMap::new();
        for layer in layers.into_iter().filter(|l| targets.matches(&l.path)) {
            let (out, inp) = (layer.out_dim(), layer.in_dim());
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
            let a = Tensor::from_vec(a, (r, inp), &Device::Cpu)?;
            let b = Tensor::zeros((out, r), DType::F32, &Device::Cpu)?;
            let magnitude = if config.use_dora {
                Some(layer.weight()?.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?.to_device(&Device::Cpu)?)
            } else {
                None
            };
            modules.insert(layer.path.clone(), ModuleAdapter { a, b, magnitude, scale });
        }
        if modules.is_empty() {
            return Err(Error::Input(format!(
                "--target_modules {targets:?} names no linear layer of the language model\n  hint: all-linear, or names such as q_proj, v_proj, mlp.down_proj"
            )));
        }
        let mut config = config.clone();
        config.target_modules = serde_json::json!(modules.keys().collect::<Vec<_>>());
        Ok(PeftAdapter { dir: PathBuf::new(), config, modules })
    }

    /// Puts the adapter in slot `slot` of the layers it names (which must all exist, with
    /// matching shapes).
    pub fn attach(&self, layers: Vec<&Linear>, slot: usize) -> Result<()> {
        let by_path: HashMap<&str, &Linear> = layers.iter().map(|l| (l.path.as_str(), *l)).collect();
        let mut staged = Vec::with_capacity(self.modules.len());
        for (module, m) in &self.modules {
            let layer = by_path.get(module.as_str()).ok_or_else(|| {
                Error::Load(format!(
                    "{}: the adapter targets {module}, which this model does not have (a different architecture or size?)",
                    self.dir.display()
                ))
            })?;
            let (out, inp) = (layer.out_dim(), layer.in_dim());
            if m.a.dim(1)? != inp || m.b.dim(0)? != out || m.magnitude.as_ref().is_some_and(|g| g.dims() != [out]) {
                return Err(Error::Load(format!(
                    "{}: {module}: adapter shapes A {:?} B {:?} do not fit the layer ({out}×{inp})",
                    self.dir.display(),
                    m.a.dims(),
                    m.b.dims()
                )));
            }
            let (dev, dt) = (&layer.device(), layer.dtype());
            let lora = LoraWeights::new(
                m.a.to_device(dev)?.to_dtype(dt)?,
                m.b.to_device(dev)?.to_dtype(dt)?,
                m.scale,
                m.magnitude.as_ref().map(|g| g.to_device(dev)?.to_dtype(dt)).transpose()?,
            );
            staged.push((*layer, Arc::new(lora)));
        }
        for (layer, lora) in staged {
            layer.set_adapter(slot, Some(lora));
        }
        Ok(())
    }
}

/// The module path a checkpoint's weight key belongs to (transformers-5 spelling): the
/// published Qwen files' `model.layers.*` are the language model's layers.
fn module_of_weight(key: &str) -> Option<String> {
    let module = key.strip_suffix(".weight")?;
    Some(match module.strip_prefix("model.layers.") {
        Some(rest) => format!("model.language_model.layers.{rest}"),
        None => module.to_string(),
    })
}

/// transformers' name of a dtype.
fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Sets `torch_dtype` / `dtype` wherever the config (or a sub-config) has one.
fn set_dtype(v: &mut Value, name: &str) {
    if let Value::Object(map) = v {
        for (k, x) in map.iter_mut() {
            if k == "torch_dtype" || k == "dtype" {
                *x = Value::String(name.into());
            } else {
                set_dtype(x, name);
            }
        }
    }
}

/// What [`merge_checkpoint`] wrote.
#[derive(Clone, Debug)]
pub struct MergeReport {
    /// Weights that took the adapter in.
    pub merged: usize,
    /// Files written (shards, configs, tokenizer).
    pub files: usize,
}

/// Writes the checkpoint in `model_dir` with `adapter` folded into its weights to `out`, in
/// the same layout (the same files, shards, tensor names and dtypes), as PEFT's
/// `merge_and_unload` + `save_pretrained` (ms-swift: `swift export --merge_lora true`):
/// LoRA `W + s·BA`, DoRA `(m / ‖W + s·BA‖) ⊙ (W + s·BA)` per output row, computed in f32.
/// Every adapted module must be a weight of the checkpoint. With `dtype`, every float tensor
/// is written in it and `config.json` says so (`float32` keeps the merge exact; a bf16
/// checkpoint otherwise rounds the merged weights to bf16, as PEFT's merge on a bf16 model
/// does). The folder is written beside `out` and renamed into place, so a failed merge
/// leaves nothing half written.
pub fn merge_checkpoint(
    model_dir: &Path,
    adapter: &PeftAdapter,
    out: &Path,
    dtype: Option<DType>,
) -> Result<MergeReport> {
    if out.exists() {
        return Err(Error::Input(format!("{} already exists; name a new folder", out.display())));
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "merged".into());
    let tmp = out.with_file_name(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut pending: std::collections::BTreeSet<&str> = adapter.modules.keys().map(String::as_str).collect();
    let mut merged = 0;
    let mut files = 0;
    let entries = std::fs::read_dir(model_dir).map_err(|e| Error::io(model_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(model_dir, e))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let target = tmp.join(entry.file_name());
        if path.extension().is_some_and(|x| x == "safetensors") {
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
                .map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
            let mut out_tensors = HashMap::with_capacity(tensors.len());
            for (key, w) in tensors {
                let m = module_of_weight(&key).and_then(|m| adapter.modules.get_key_value(&m));
                let w = match m {
                    None => w,
                    Some((module, m)) => {
                        pending.remove(module.as_str());
                        merged += 1;
                        let stored = dtype.unwrap_or(w.dtype());
                        let w32 = w.to_dtype(DType::F32)?;
                        if m.a.dim(1)? != w32.dim(1)? || m.b.dim(0)? != w32.dim(0)? {
                            return Err(Error::Load(format!(
                                "{}: {module}: adapter shapes A {:?} B {:?} do not fit {key} {:?}",
                                adapter.dir.display(),
                                m.a.dims(),
                                m.b.dims(),
                                w32.dims()
                            )));
                        }
                        let full = (&w32 + (m.b.matmul(&m.a)? * m.scale)?)?;
                        let full = match &m.magnitude {
                            None => full,
                            Some(g) => {
                                let norm = full.sqr()?.sum(1)?.sqrt()?;
                                full.broadcast_mul(&(g / norm)?.unsqueeze(1)?)?
                            }
                        };
                        full.to_dtype(stored)?
                    }
                };
                let w = match dtype {
                    Some(d) if w.dtype().is_float() && w.dtype() != d => w.to_dtype(d)?,
                    _ => w,
                };
                out_tensors.insert(key, w);
            }
            let mut sorted: Vec<(String, Tensor)> = out_tensors.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
            safetensors::serialize_to_file(sorted, Some(metadata), &target)
                .map_err(|e| Error::Load(format!("{}: {e}", target.display())))?;
        } else if let (Some(d), true) = (dtype, entry.file_name() == "config.json") {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let mut config: Value =
                serde_json::from_str(&text).map_err(|e| Error::Load(format!("{}: not JSON: {e}", path.display())))?;
            set_dtype(&mut config, dtype_name(d));
            let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Load(e.to_string()))?;
            std::fs::write(&target, text).map_err(|e| Error::io(&target, e))?;
        } else {
            std::fs::copy(&path, &target).map_err(|e| Error::io(&path, e))?;
        }
        files += 1;
    }
    if let Some(missing) = pending.first() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Load(format!(
            "{}: the adapter targets {missing}, which {} has no weight for (a different model?)",
            adapter.dir.display(),
            model_dir.display()
        )));
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(MergeReport { merged, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_map_to_module_paths() {
        assert_eq!(
            split_key("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.language_model.layers.0.self_attn.q_proj".into(), "A"))
        );
        assert_eq!(
            split_key("base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"),
            Some(("model.language_model.layers.3.mlp.down_proj".into(), "B")),
            "legacy Qwen names"
        );
        assert_eq!(
            split_key("base_model.model.model.text_model.layers.1.self_attn.v_proj.lora_magnitude_vector"),
            Some(("model.text_model.layers.1.self_attn.v_proj".into(), "M"))
        );
        assert_eq!(split_key("base_model.model.lm_head.weight"), None);
        assert_eq!(
            module_of_weight("model.layers.2.mlp.up_proj.weight").as_deref(),
            Some("model.language_model.layers.2.mlp.up_proj"),
            "the published Qwen files' names"
        );
        assert_eq!(module_of_weight("model.norm.bias"), None);
        let t = Targets::parse(&["q_proj".into(), "mlp.down_proj".into()]);
        assert!(t.matches("model.language_model.layers.0.self_attn.q_proj"));
        assert!(t.matches("model.language_model.layers.0.mlp.down_proj"));
        assert!(!t.matches("model.language_model.layers.0.self_attn.xq_proj"));
        assert!(!t.matches("model.language_model.layers.0.self_attn.k_proj"));
        assert_eq!(Targets::parse(&["all-linear".into()]), Targets::AllLinear);
        let p = BTreeMap::from([("q_proj".to_string(), 16usize)]);
        assert_eq!(pattern_value(&p, "model.language_model.layers.0.self_attn.q_proj"), Some(16));
        assert_eq!(pattern_value(&p, "model.language_model.layers.0.self_attn.k_proj"), None);
    }
}
