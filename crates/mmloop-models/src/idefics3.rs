//! Idefics3 / SmolVLM (transformers `Idefics3ForConditionalGeneration`).
//!
//! Vision: SigLIP on square tiles — a biased patch convolution, learned position
//! embeddings, pre-norm LayerNorm blocks with `gelu_pytorch_tanh` MLPs, full attention within
//! a tile, a final LayerNorm. Connector: pixel shuffle (each `scale × scale` block of patch
//! features concatenated, in transformers' order) and one Linear without bias. Language:
//! Llama (SmolLM2) with plain rope; image features replace the `<image>` tokens in order.
//!
//! The published SmolVLM config omits much of `vision_config` (layers, MLP width, activation,
//! eps) and `text_config` (activation): transformers' defaults apply, as here.

use candle_core::Tensor;
use serde_json::Value;

use crate::model::ImageFeatures;
use crate::nn::{Act, Ctx, FusedProjections, LayerNorm, Linear, segment_attention};
use crate::processor::Array;
use crate::qwen2_vl::{float, uint};
use crate::text::{RopeKind, TextConfig};
use crate::weights::Weights;
use crate::{Error, Result};

/// The Llama text model of an Idefics3 config.
pub fn text_config(config: &Value) -> Result<TextConfig> {
    let t = &config["text_config"];
    if !t.is_object() {
        return Err(Error::Config("config.json: `text_config` is missing".into()));
    }
    let hidden = uint(t, "hidden_size", Some(4096))?;
    let heads = uint(t, "num_attention_heads", Some(32))?;
    let rope_params = t.get("rope_parameters").filter(|r| r.is_object());
    if let Some(kind) = t["rope_scaling"]["rope_type"].as_str().or(t["rope_scaling"]["type"].as_str())
        && kind != "default"
    {
        return Err(Error::Unsupported(format!("config.json: text_config rope_scaling {kind:?} is not supported")));
    }
    let cfg = TextConfig {
        prefix: "model.text_model".into(),
        vocab_size: uint(t, "vocab_size", config["vocab_size"].as_u64().map(|v| v as usize))?,
        hidden_size: hidden,
        intermediate_size: uint(t, "intermediate_size", Some(11008))?,
        num_layers: uint(t, "num_hidden_layers", Some(32))?,
        num_heads: heads,
        num_kv_heads: uint(t, "num_key_value_heads", Some(heads))?,
        head_dim: uint(t, "head_dim", Some(hidden / heads))?,
        rms_norm_eps: float(t, "rms_norm_eps", 1e-6),
        rope_theta: t["rope_theta"]
            .as_f64()
            .or_else(|| rope_params.and_then(|r| r["rope_theta"].as_f64()))
            .unwrap_or(10_000.0),
        rope: RopeKind::Default,
        qkv_bias: t["attention_bias"].as_bool().unwrap_or(false),
        o_bias: t["attention_bias"].as_bool().unwrap_or(false),
        qk_norm: false,
        hidden_act: Act::from_name(t["hidden_act"].as_str().unwrap_or("silu"))?,
        tie_word_embeddings: config["tie_word_embeddings"].as_bool().unwrap_or(false),
    };
    cfg.check("config.json")?;
    Ok(cfg)
}

/// The position-embedding row of each patch of a full tile, as transformers computes it:
/// fractional coordinates `i · (1/g)` (float32) bucketized against `arange(1/g, 1, 1/g)`
/// (float64 values rounded to float32) — the identity for most `g`, not guaranteed for all.
pub fn tile_position_ids(g: usize) -> Vec<u32> {
    let step = 1.0f32 / g as f32;
    let unit = 1.0 / g as f64;
    let boundaries: Vec<f32> = (0..g - 1).map(|k| (unit + k as f64 * unit) as f32).collect();
    let bucket = |i: usize| -> usize {
        let frac = (i as f32 * step).min(1.0 - 1e-6);
        boundaries.iter().filter(|&&b| b <= frac).count()
    };
    let buckets: Vec<usize> = (0..g).map(bucket).collect();
    let mut out = Vec::with_capacity(g * g);
    for &h in &buckets {
        for &w in &buckets {
            out.push((h * g + w) as u32);
        }
    }
    out
}

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    fc1: Linear,
    fc2: Linear,
    /// q, k and v as one product on `norm1`'s output ([`FusedProjections`]).
    qkv: FusedProjections,
}

pub struct Vision {
    patch_embed: Linear,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    post_norm: LayerNorm,
    projection: Linear,
    heads: usize,
    head_dim: usize,
    patch: usize,
    per_side: usize,
    scale: usize,
    act: Act,
}

impl Vision {
    pub fn load(w: &Weights, config: &Value, out_dim: usize) -> Result<Vision> {
        let v = &config["vision_config"];
        let dim = uint(v, "hidden_size", Some(1152))?;
        let inter = uint(v, "intermediate_size", Some(3072))?;
        let layers = uint(v, "num_hidden_layers", Some(12))?;
        let heads = uint(v, "num_attention_heads", Some(16))?;
        let channels = uint(v, "num_channels", Some(3))?;
        let image = uint(v, "image_size", Some(224))?;
        let patch = uint(v, "patch_size", Some(32))?;
        let eps = float(v, "layer_norm_eps", 1e-6);
        let scale = uint(config, "scale_factor", Some(2))?;
        let per_side = image / patch;
        if !per_side.is_multiple_of(scale) {
            return Err(Error::Config(format!(
                "config.json: {per_side} patches per side is not a multiple of scale_factor {scale}"
            )));
        }
        let p = "model.vision_model";
        let pw = w.get(&format!("{p}.embeddings.patch_embedding.weight"), &[dim, channels, patch, patch])?;
        let pb = w.get(&format!("{p}.embeddings.patch_embedding.bias"), &[dim])?;
        let patch_embed = Linear::new(
            format!("{p}.embeddings.patch_embedding"),
            pw.reshape((dim, channels * patch * patch))?,
            Some(pb),
        );
        let mut blocks = Vec::with_capacity(layers);
        for l in 0..layers {
            let lp = format!("{p}.encoder.layers.{l}");
            blocks.push(Block {
                norm1: LayerNorm::load(w, &format!("{lp}.layer_norm1"), dim, eps)?,
                norm2: LayerNorm::load(w, &format!("{lp}.layer_norm2"), dim, eps)?,
                q: Linear::load(w, &format!("{lp}.self_attn.q_proj"), dim, dim, true)?,
                k: Linear::load(w, &format!("{lp}.self_attn.k_proj"), dim, dim, true)?,
                v: Linear::load(w, &format!("{lp}.self_attn.v_proj"), dim, dim, true)?,
                o: Linear::load(w, &format!("{lp}.self_attn.out_proj"), dim, dim, true)?,
                fc1: Linear::load(w, &format!("{lp}.mlp.fc1"), dim, inter, true)?,
                fc2: Linear::load(w, &format!("{lp}.mlp.fc2"), inter, dim, true)?,
                qkv: FusedProjections::default(),
            });
        }
        Ok(Vision {
            patch_embed,
            pos_embed: w.get(&format!("{p}.embeddings.position_embedding.weight"), &[per_side * per_side, dim])?,
            blocks,
            post_norm: LayerNorm::load(w, &format!("{p}.post_layernorm"), dim, eps)?,
            projection: Linear::load(
                w,
                "model.connector.modality_projection.proj",
                dim * scale * scale,
                out_dim,
                false,
            )?,
            heads,
            head_dim: dim / heads,
            patch,
            per_side,
            scale,
            act: Act::from_name(v["hidden_act"].as_str().unwrap_or("gelu_pytorch_tanh"))?,
        })
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.patch_embed, &mut self.projection];
        for b in &mut self.blocks {
            out.extend([&mut b.q, &mut b.k, &mut b.v, &mut b.o, &mut b.fc1, &mut b.fc2]);
        }
        out
    }

    /// Features of `tiles` (`[n, 3, S, S]`): `[n · (S/patch/scale)², out_dim]`, tile by tile.
    pub fn forward(
        &self,
        tiles: &Array,
        ctx: &Ctx,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> Result<ImageFeatures> {
        let [n, c, s, s2] = tiles.shape[..] else {
            return Err(Error::Input(format!("tiles of shape {:?}, expected [n, 3, S, S]", tiles.shape)));
        };
        if s != s2 || s != self.per_side * self.patch {
            return Err(Error::Input(format!(
                "tiles of {s}×{s2} pixels, the vision tower takes {0}×{0}",
                self.per_side * self.patch
            )));
        }
        let (g, p) = (self.per_side, self.patch);
        // [n, c, g, p, g, p] → [n, g, g, c, p, p]: one row per patch in raster order.
        let x = Tensor::from_slice(&tiles.data, (n, c, g, p, g, p), device)?
            .to_dtype(dtype)?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, c * p * p))?;
        let ids = Tensor::new(tile_position_ids(g).as_slice(), device)?;
        let pos = self.pos_embed.index_select(&ids, 0)?.repeat((n, 1))?;
        let mut x = (self.patch_embed.forward(&x, ctx)? + pos)?;
        let lens = vec![g * g; n];
        let rows = n * g * g;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let heads =
            |t: Tensor| -> Result<Tensor> { Ok(t.reshape((rows, self.heads, self.head_dim))?.transpose(0, 1)?) };
        for b in &self.blocks {
            let (q, k, v) = match b.qkv.forward(&b.norm1, &[&b.q, &b.k, &b.v], &x, ctx)? {
                // `[rows, 3·heads·d]`, each of q, k, v read in place per head.
                Some(qkv) => {
                    let t = qkv.reshape((rows, 3, self.heads, self.head_dim))?;
                    let part = |i: usize| -> Result<Tensor> { Ok(t.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?) };
                    (part(0)?, part(1)?, part(2)?)
                }
                None => {
                    let h = b.norm1.forward(&x, ctx.mode)?;
                    (heads(b.q.forward(&h, ctx)?)?, heads(b.k.forward(&h, ctx)?)?, heads(b.v.forward(&h, ctx)?)?)
                }
            };
            let a = segment_attention(&q, &k, &v, &lens, scale, ctx)?;
            x = b.o.forward_residual(&a, ctx, &x)?;
            x = b.fc1.forward_mlp(&b.fc2, &b.norm2, &x, ctx, self.act, &x)?;
        }
        let x = self.post_norm.forward(&x, ctx.mode)?;
        // transformers' pixel_shuffle on [n, g·g, d] with factor r.
        let (r, d) = (self.scale, x.dim(1)?);
        let x = x
            .reshape((n, g, g / r, d * r))?
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((n, g / r, g / r, d * r * r))?
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((n * (g / r) * (g / r), d * r * r))?;
        Ok(ImageFeatures { embeds: self.projection.forward(&x, ctx)?, deepstack: Vec::new() })
    }
}
