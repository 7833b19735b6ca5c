//! Qwen2-VL (transformers `Qwen2VLForConditionalGeneration`).
//!
//! Vision: a ViT over 14×14 patches (two frames per patch for video; images repeat their one
//! frame), pre-norm LayerNorm blocks with quick-GELU MLPs and 2-D rotary attention within
//! each image, then a merger that concatenates each 2×2 window of patches
//! (LayerNorm → Linear → GELU → Linear) into one token of the language model's width.
//! Language: Qwen2 (q/k/v biases) with M-RoPE, positions from the processor.
//!
//! The published config is the flat legacy layout (`vision_config.embed_dim`, `mlp_ratio`,
//! `in_chans`; `hidden_size` is the merger's output width) and the tensors are named
//! `model.layers.*` / `visual.*`; transformers-5 saves (nested `text_config`,
//! `model.language_model.*`, `model.visual.*`) load too.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::model::{Family, ImageFeatures};
use crate::nn::{Act, Ctx, LayerNorm, Linear, Mode, rope, segment_attention};
use crate::processor::Array;
use crate::text::{RopeKind, TextConfig};
use crate::weights::Weights;
use crate::{Error, Result};

/// A number from the config, else `default`.
pub(crate) fn uint(v: &Value, key: &str, default: Option<usize>) -> Result<usize> {
    match v.get(key).and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f as u64))) {
        Some(n) => Ok(n as usize),
        None => default.ok_or_else(|| Error::Config(format!("config.json: `{key}` is missing"))),
    }
}

pub(crate) fn float(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

/// The language model's settings of a Qwen VL config, legacy flat layout or
/// transformers-5 `text_config`.
pub(crate) fn qwen_text_config(config: &Value, family: Family) -> Result<TextConfig> {
    let t = match config.get("text_config") {
        Some(t) if t.is_object() => t,
        _ => config,
    };
    let rope_params = t.get("rope_parameters").filter(|v| v.is_object());
    let scaling = t.get("rope_scaling").filter(|v| v.is_object());
    let rope_theta = t
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| rope_params.and_then(|r| r["rope_theta"].as_f64()))
        .unwrap_or(if family == Family::Qwen3Vl { 5_000_000.0 } else { 1_000_000.0 });
    let section = scaling
        .and_then(|s| s.get("mrope_section"))
        .or_else(|| rope_params.and_then(|r| r.get("mrope_section")))
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Config("config.json: rope_scaling.mrope_section is missing".into()))?;
    if section.len() != 3 {
        return Err(Error::Config(format!("config.json: mrope_section {section:?} must have three numbers")));
    }
    let mut sections = [0usize; 3];
    for (s, v) in sections.iter_mut().zip(section) {
        *s = v.as_u64().ok_or_else(|| Error::Config(format!("config.json: mrope_section {v} is not a number")))?
            as usize;
    }
    let interleaved = scaling
        .and_then(|s| s.get("mrope_interleaved"))
        .or_else(|| rope_params.and_then(|r| r.get("mrope_interleaved")))
        .and_then(Value::as_bool)
        .unwrap_or(family == Family::Qwen3Vl);
    let hidden = uint(t, "hidden_size", None)?;
    let heads = uint(t, "num_attention_heads", None)?;
    let tie = t
        .get("tie_word_embeddings")
        .or_else(|| config.get("tie_word_embeddings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cfg = TextConfig {
        prefix: "model.language_model".into(),
        vocab_size: uint(t, "vocab_size", None)?,
        hidden_size: hidden,
        intermediate_size: uint(t, "intermediate_size", None)?,
        num_layers: uint(t, "num_hidden_layers", None)?,
        num_heads: heads,
        num_kv_heads: uint(t, "num_key_value_heads", Some(heads))?,
        head_dim: uint(t, "head_dim", Some(hidden / heads))?,
        rms_norm_eps: float(t, "rms_norm_eps", 1e-6),
        rope_theta,
        rope: if interleaved { RopeKind::MRopeInterleaved { sections } } else { RopeKind::MRope { sections } },
        qkv_bias: family != Family::Qwen3Vl || t["attention_bias"].as_bool().unwrap_or(false),
        o_bias: family == Family::Qwen3Vl && t["attention_bias"].as_bool().unwrap_or(false),
        qk_norm: family == Family::Qwen3Vl,
        hidden_act: Act::from_name(t["hidden_act"].as_str().unwrap_or("silu"))?,
        tie_word_embeddings: tie,
    };
    if t["use_sliding_window"].as_bool() == Some(true) {
        return Err(Error::Unsupported(
            "config.json: use_sliding_window is true; sliding-window attention is not implemented".into(),
        ));
    }
    cfg.check("config.json")?;
    Ok(cfg)
}

/// 2-D rotary tables of a Qwen vision tower for patches in merge-window order:
/// `[patches, head_dim / 2]` = (h · f, w · f) with f = 1 / θ^(2j / (head_dim / 2)).
pub(crate) fn vision_rope(
    grids: &[[usize; 3]],
    merge: usize,
    head_dim: usize,
    theta: f32,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let spatial = head_dim / 2;
    let inv: Vec<f32> = (0..spatial / 2).map(|j| 1.0 / theta.powf((2 * j) as f32 / spatial as f32)).collect();
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / merge {
                for bw in 0..w / merge {
                    for mh in 0..merge {
                        for mw in 0..merge {
                            let (hp, wp) = ((bh * merge + mh) as f32, (bw * merge + mw) as f32);
                            for p in [hp, wp] {
                                for f in &inv {
                                    let a = p * f;
                                    cos.push(a.cos());
                                    sin.push(a.sin());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let n = cos.len() / spatial;
    Ok((Tensor::from_vec(cos, (n, spatial), device)?, Tensor::from_vec(sin, (n, spatial), device)?))
}

/// q, k, v of a fused `qkv` projection, rotated: each `[heads, rows, head_dim]`. The rotation
/// runs in float32 whatever the model's dtype, as transformers' `apply_rotary_pos_emb_vision`
/// (the angle tables are float32).
pub(crate) fn rotary_qkv(
    qkv: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    mode: Mode,
) -> Result<(Tensor, Tensor, Tensor)> {
    let rows = qkv.dim(0)?;
    let qkv = qkv.reshape((rows, 3, heads, ()))?;
    let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?) };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let rotate = |x: Tensor| -> Result<Tensor> {
        let dtype = x.dtype();
        Ok(rope(&x.to_dtype(cos.dtype())?.unsqueeze(0)?, cos, sin, mode)?.squeeze(0)?.to_dtype(dtype)?)
    };
    Ok((rotate(q)?, rotate(k)?, v))
}

/// The patches of `grids` as a `[patches, C·T·P·P]` tensor.
pub(crate) fn patch_tensor(patches: &Array, device: &Device, dtype: DType) -> Result<Tensor> {
    Ok(Tensor::from_slice(&patches.data, patches.shape.as_slice(), device)?.to_dtype(dtype)?)
}

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

pub struct Vision {
    patch_embed: Linear,
    blocks: Vec<Block>,
    ln_q: LayerNorm,
    merger0: Linear,
    merger2: Linear,
    heads: usize,
    head_dim: usize,
    merge: usize,
    act: Act,
    theta: f32,
}

impl Vision {
    pub fn load(w: &Weights, config: &Value, out_dim: usize) -> Result<Vision> {
        let v = &config["vision_config"];
        let dim = uint(v, "embed_dim", Some(1280))?;
        let depth = uint(v, "depth", Some(32))?;
        let heads = uint(v, "num_heads", Some(16))?;
        let mlp = (dim as f64 * float(v, "mlp_ratio", 4.0)) as usize;
        let channels = uint(v, "in_chans", Some(uint(v, "in_channels", Some(3))?))?;
        let patch = uint(v, "patch_size", Some(14))?;
        let temporal = uint(v, "temporal_patch_size", Some(2))?;
        let merge = uint(v, "spatial_merge_size", Some(2))?;
        let merged_out = uint(v, "hidden_size", Some(out_dim))?;
        if merged_out != out_dim {
            return Err(Error::Config(format!(
                "config.json: vision_config.hidden_size {merged_out} (the merger's output) differs from the language model's hidden_size {out_dim}"
            )));
        }
        if !(dim / heads).is_multiple_of(4) {
            return Err(Error::Config(format!("config.json: vision head_dim {} must be a multiple of 4", dim / heads)));
        }
        let p = "model.visual";
        let flat = channels * temporal * patch * patch;
        let pw = w.get(&format!("{p}.patch_embed.proj.weight"), &[dim, channels, temporal, patch, patch])?;
        let patch_embed = Linear::new(format!("{p}.patch_embed.proj"), pw.reshape((dim, flat))?, None);
        let mut blocks = Vec::with_capacity(depth);
        for b in 0..depth {
            let bp = format!("{p}.blocks.{b}");
            blocks.push(Block {
                norm1: LayerNorm::load(w, &format!("{bp}.norm1"), dim, 1e-6)?,
                norm2: LayerNorm::load(w, &format!("{bp}.norm2"), dim, 1e-6)?,
                qkv: Linear::load(w, &format!("{bp}.attn.qkv"), dim, 3 * dim, true)?,
                proj: Linear::load(w, &format!("{bp}.attn.proj"), dim, dim, true)?,
                fc1: Linear::load(w, &format!("{bp}.mlp.fc1"), dim, mlp, true)?,
                fc2: Linear::load(w, &format!("{bp}.mlp.fc2"), mlp, dim, true)?,
            });
        }
        let hidden = dim * merge * merge;
        Ok(Vision {
            patch_embed,
            blocks,
            ln_q: LayerNorm::load(w, &format!("{p}.merger.ln_q"), dim, 1e-6)?,
            merger0: Linear::load(w, &format!("{p}.merger.mlp.0"), hidden, hidden, true)?,
            merger2: Linear::load(w, &format!("{p}.merger.mlp.2"), hidden, out_dim, true)?,
            heads,
            head_dim: dim / heads,
            merge,
            act: Act::from_name(v["hidden_act"].as_str().unwrap_or("quick_gelu"))?,
            theta: v["rope_parameters"]["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
        })
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.patch_embed, &mut self.merger0, &mut self.merger2];
        for b in &mut self.blocks {
            out.extend([&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2]);
        }
        out
    }

    /// Image features `[merged patches, out_dim]` for `patches` of `grids`.
    pub fn forward(&self, patches: &Tensor, grids: &[[usize; 3]], ctx: &Ctx) -> Result<ImageFeatures> {
        let dev = patches.device();
        let (cos, sin) = vision_rope(grids, self.merge, self.head_dim, self.theta, dev)?;
        let lens: Vec<usize> = grids.iter().flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0])).collect();
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut x = self.patch_embed.forward(patches, ctx)?;
        for b in &self.blocks {
            let h = b.norm1.forward(&x, ctx.mode)?;
            let (q, k, v) = rotary_qkv(&b.qkv.forward(&h, ctx)?, self.heads, &cos, &sin, ctx.mode)?;
            let a = segment_attention(&q, &k, &v, &lens, scale, ctx)?;
            x = b.proj.forward_residual(&a, ctx, &x)?;
            x = b.fc1.forward_mlp(&b.fc2, &b.norm2, &x, ctx, self.act, &x)?;
        }
        let rows = x.dim(0)?;
        let m2 = self.merge * self.merge;
        let x = self.ln_q.forward(&x, ctx.mode)?.reshape((rows / m2, ()))?;
        let x = self.merger2.forward(&Act::Gelu.forward(&self.merger0.forward(&x, ctx)?, ctx.mode)?, ctx)?;
        Ok(ImageFeatures { embeds: x, deepstack: Vec::new() })
    }
}
