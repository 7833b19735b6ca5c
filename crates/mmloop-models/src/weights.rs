//! A checkpoint's tensors, as the published repos store them: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`. Tensors are found by their
//! transformers-5 module path (the names PEFT adapters use); the legacy spellings of the
//! published Qwen2-VL / Qwen2.5-VL files (`model.layers.*`, `visual.*`) are tried next, so
//! both layouts load unchanged.
//!
//! Every failure names the file or the tensor: a missing shard, a tensor that is absent or of
//! the wrong shape, a dtype this build cannot read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The tensors of one checkpoint folder.
pub struct Weights {
    dir: PathBuf,
    files: MmapedSafetensors,
    /// Which file holds which tensor (for messages).
    file_of: HashMap<String, String>,
    /// Every tensor name, for alias resolution.
    names: std::collections::HashSet<String>,
    device: Device,
    dtype: DType,
    /// Round linear layers to bfloat16 as they are read ([`Weights::rounding_linears_to_bf16`]).
    bf16_linears: bool,
}

impl Weights {
    /// Maps the weights under `dir`; tensors are converted to `dtype` on `device` when read.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Weights> {
        let index = dir.join("model.safetensors.index.json");
        let mut file_of = HashMap::new();
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Load(format!("{}: not JSON: {e}", index.display())))?;
            let map = v["weight_map"].as_object().ok_or_else(|| {
                Error::Load(format!("{}: no `weight_map` object (not a safetensors index)", index.display()))
            })?;
            let mut shards: Vec<String> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::Load(format!("{}: the shard of {name} is not a file name", index.display()))
                })?;
                if !shards.iter().any(|s| s == file) {
                    shards.push(file.to_string());
                }
                file_of.insert(name.clone(), file.to_string());
            }
            shards.sort();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.is_file() {
                let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| Error::io(dir, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                shards.sort();
                if shards.is_empty() {
                    return Err(Error::Load(format!(
                        "{}: no model.safetensors, no model.safetensors.index.json and no *.safetensors shards\n  hint: point --model at a checkpoint folder in the published layout",
                        dir.display()
                    )));
                }
                shards
            } else {
                vec![single]
            }
        };
        for f in &files {
            if !f.is_file() {
                return Err(Error::Load(format!(
                    "{}: shard {} is missing (listed in model.safetensors.index.json)\n  hint: download the checkpoint again",
                    dir.display(),
                    f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                )));
            }
        }
        // SAFETY: the files are mapped read-only; a checkpoint changed on disk while loaded is
        // the same hazard every safetensors loader (candle, transformers) accepts.
        let mapped = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::Load(format!("{}: cannot read the safetensors files: {e}", dir.display())))?;
        let mut names = std::collections::HashSet::new();
        for (name, _) in mapped.tensors() {
            if !file_of.contains_key(&name) {
                file_of.insert(name.clone(), files[0].file_name().unwrap_or_default().to_string_lossy().into_owned());
            }
            names.insert(name);
        }
        Ok(Weights {
            dir: dir.to_path_buf(),
            files: mapped,
            file_of,
            names,
            device: device.clone(),
            dtype,
            bf16_linears: false,
        })
    }

    /// With `on`, every linear layer read through these weights ([`crate::nn::Linear::load`]) is
    /// rounded to bfloat16 (`--quant bf16`, packed for AMX where the CPU has it) as soon as it is
    /// read, so the float32 model never sits in memory whole (Qwen2.5-VL-3B: ~12 GB less at
    /// the peak).
    pub fn rounding_linears_to_bf16(self, on: bool) -> Weights {
        Weights { bf16_linears: on, ..self }
    }

    /// Whether linear layers are rounded to bfloat16 as they are read.
    pub fn rounds_linears_to_bf16(&self) -> bool {
        self.bf16_linears
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The stored name of a module path's tensor: the path itself, else its legacy spelling.
    pub fn resolve(&self, name: &str) -> Option<String> {
        if self.names.contains(name) {
            return Some(name.to_string());
        }
        legacy_names(name).into_iter().find(|n| self.names.contains(n))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// The tensor at `name` with exactly `shape`, as this model's dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_any(name)?;
        if t.dims() != shape {
            return Err(Error::Load(format!(
                "{}: tensor {name} has shape {:?}, the config implies {shape:?} ({})\n  hint: the config.json and the weights do not belong together",
                self.dir.display(),
                t.dims(),
                self.file_of.get(name).cloned().unwrap_or_default()
            )));
        }
        Ok(t)
    }

    /// The tensor at `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let stored = self.resolve(name).ok_or_else(|| {
            Error::Load(format!(
                "{}: tensor {name} is missing from the weights\n  hint: is this checkpoint complete, and of the architecture its config.json names?",
                self.dir.display()
            ))
        })?;
        let t = self.files.load(&stored, &Device::Cpu).map_err(|e| {
            Error::Load(format!(
                "{}: cannot read tensor {stored} from {}: {e}",
                self.dir.display(),
                self.file_of.get(&stored).cloned().unwrap_or_default()
            ))
        })?;
        let t = if t.dtype() == self.dtype { t } else { t.to_dtype(self.dtype)? };
        Ok(t.to_device(&self.device)?)
    }

    /// The tensor at `name` if present, with `shape`.
    pub fn maybe(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) { self.get(name, shape).map(Some) } else { Ok(None) }
    }
}

/// Spellings the published (pre-transformers-5) Qwen2-VL / Qwen2.5-VL checkpoints use for a
/// transformers-5 module path.
fn legacy_names(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        out.push(format!("model.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("model.visual.") {
        out.push(format!("visual.{rest}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_qwen_names_are_found() {
        assert_eq!(
            legacy_names("model.language_model.layers.0.mlp.up_proj.weight"),
            ["model.layers.0.mlp.up_proj.weight"]
        );
        assert_eq!(legacy_names("model.visual.blocks.1.attn.qkv.bias"), ["visual.blocks.1.attn.qkv.bias"]);
        assert!(legacy_names("lm_head.weight").is_empty());
    }

    #[test]
    fn missing_shards_and_tensors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("a.weight".to_string(), t.clone())]),
            dir.path().join("model-00001-of-00002.safetensors"),
        )
        .unwrap();
        let err = Weights::open(dir.path(), &Device::Cpu, DType::F32).err().unwrap().to_string();
        assert!(err.contains("model-00002-of-00002.safetensors is missing"), "{err}");
        candle_core::safetensors::save(
            &HashMap::from([("b.weight".to_string(), t)]),
            dir.path().join("model-00002-of-00002.safetensors"),
        )
        .unwrap();
        let w = Weights::open(dir.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(w.get("b.weight", &[2, 3]).unwrap().dims(), &[2, 3]);
        let err = w.get("a.weight", &[3, 2]).err().unwrap().to_string();
        assert!(err.contains("a.weight has shape [2, 3]") && err.contains("[3, 2]"), "{err}");
        let err = w.get("c.weight", &[1]).err().unwrap().to_string();
        assert!(err.contains("tensor c.weight is missing"), "{err}");
    }
}
