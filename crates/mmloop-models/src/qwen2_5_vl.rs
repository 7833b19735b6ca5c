//! Qwen2.5-VL (transformers `Qwen2_5_VLForConditionalGeneration`).
//!
//! Like Qwen2-VL ([`crate::qwen2_vl`]) but the vision tower uses RMSNorm and SwiGLU MLPs
//! with biases, and attends within windows: the merged patch grid is tiled row-major into
//! `window_size / merge / patch` squares; patches are permuted once, before the first block,
//! so each window's patches are contiguous (rotary tables alike); blocks listed in
//! `fullatt_block_indexes` attend over the whole image, the others per window; the merger's
//! output is put back in image order at the end. `vision_config.hidden_size` is the ViT
//! width here and `out_hidden_size` the language model's.

use candle_core::Tensor;
use serde_json::Value;

use crate::model::ImageFeatures;
use crate::nn::{Act, Ctx, Linear, RmsNorm, segment_attention};
use crate::qwen2_vl::{float, rotary_qkv, uint, vision_rope};
use crate::weights::Weights;
use crate::{Error, Result};

struct Block {
    norm1: RmsNorm,
    norm2: RmsNorm,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Vision {
    patch_embed: Linear,
    blocks: Vec<Block>,
    full_attention: Vec<usize>,
    ln_q: RmsNorm,
    merger0: Linear,
    merger2: Linear,
    heads: usize,
    head_dim: usize,
    merge: usize,
    patch: usize,
    window: usize,
    act: Act,
    theta: f32,
}

/// transformers' `get_vision_window_index`: the merged-token order that makes windows
/// contiguous, and the window lengths in patches.
pub fn window_index(grids: &[[usize; 3]], merge: usize, window: usize, patch: usize) -> (Vec<usize>, Vec<usize>) {
    let ws = window / merge / patch;
    let m2 = merge * merge;
    let mut order = Vec::new();
    let mut lens = Vec::new();
    let mut base = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        let (nwh, nww) = ((lh + ws - lh % ws) / ws, (lw + ws - lw % ws) / ws);
        for ti in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut n = 0;
                    for y in wy * ws..(wy * ws + ws).min(lh) {
                        for x in wx * ws..(wx * ws + ws).min(lw) {
                            order.push(base + ti * lh * lw + y * lw + x);
                            n += 1;
                        }
                    }
                    if n > 0 {
                        lens.push(n * m2);
                    }
                }
            }
        }
        base += t * lh * lw;
    }
    (order, lens)
}

impl Vision {
    pub fn load(w: &Weights, config: &Value, out_dim: usize) -> Result<Vision> {
        let v = &config["vision_config"];
        let dim = uint(v, "hidden_size", Some(1280))?;
        let depth = uint(v, "depth", Some(32))?;
        let heads = uint(v, "num_heads", Some(16))?;
        let inter = uint(v, "intermediate_size", Some(3420))?;
        let channels = uint(v, "in_chans", Some(uint(v, "in_channels", Some(3))?))?;
        let patch = uint(v, "patch_size", Some(14))?;
        let temporal = uint(v, "temporal_patch_size", Some(2))?;
        let merge = uint(v, "spatial_merge_size", Some(2))?;
        let window = uint(v, "window_size", Some(112))?;
        let merged_out = uint(v, "out_hidden_size", Some(out_dim))?;
        if merged_out != out_dim {
            return Err(Error::Config(format!(
                "config.json: vision_config.out_hidden_size {merged_out} differs from the language model's hidden_size {out_dim}"
            )));
        }
        if window / merge / patch == 0 {
            return Err(Error::Config(format!("config.json: window_size {window} is smaller than one merged patch")));
        }
        let full_attention: Vec<usize> = v["fullatt_block_indexes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64().map(|n| n as usize)).collect())
            .unwrap_or_else(|| vec![7, 15, 23, 31]);
        let p = "model.visual";
        let flat = channels * temporal * patch * patch;
        let pw = w.get(&format!("{p}.patch_embed.proj.weight"), &[dim, channels, temporal, patch, patch])?;
        let patch_embed = Linear::new(format!("{p}.patch_embed.proj"), pw.reshape((dim, flat))?, None);
        let mut blocks = Vec::with_capacity(depth);
        for b in 0..depth {
            let bp = format!("{p}.blocks.{b}");
            blocks.push(Block {
                norm1: RmsNorm::load(w, &format!("{bp}.norm1"), dim, 1e-6)?,
                norm2: RmsNorm::load(w, &format!("{bp}.norm2"), dim, 1e-6)?,
                qkv: Linear::load(w, &format!("{bp}.attn.qkv"), dim, 3 * dim, true)?,
                proj: Linear::load(w, &format!("{bp}.attn.proj"), dim, dim, true)?,
                gate: Linear::load(w, &format!("{bp}.mlp.gate_proj"), dim, inter, true)?,
                up: Linear::load(w, &format!("{bp}.mlp.up_proj"), dim, inter, true)?,
                down: Linear::load(w, &format!("{bp}.mlp.down_proj"), inter, dim, true)?,
            });
        }
        let hidden = dim * merge * merge;
        Ok(Vision {
            patch_embed,
            blocks,
            full_attention,
            ln_q: RmsNorm::load(w, &format!("{p}.merger.ln_q"), dim, 1e-6)?,
            merger0: Linear::load(w, &format!("{p}.merger.mlp.0"), hidden, hidden, true)?,
            merger2: Linear::load(w, &format!("{p}.merger.mlp.2"), hidden, out_dim, true)?,
            heads,
            head_dim: dim / heads,
            merge,
            patch,
            window,
            act: Act::from_name(v["hidden_act"].as_str().unwrap_or("silu"))?,
            theta: float(&v["rope_parameters"], "rope_theta", 10_000.0) as f32,
        })
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.patch_embed, &mut self.merger0, &mut self.merger2];
        for b in &mut self.blocks {
            out.extend([&mut b.qkv, &mut b.proj, &mut b.gate, &mut b.up, &mut b.down]);
        }
        out
    }

    pub fn forward(&self, patches: &Tensor, grids: &[[usize; 3]], ctx: &Ctx) -> Result<ImageFeatures> {
        let dev = patches.device();
        let m2 = self.merge * self.merge;
        let (order, window_lens) = window_index(grids, self.merge, self.window, self.patch);
        // Patch rows in window order: merged token i's m² patches move together.
        let patch_order: Vec<u32> = order.iter().flat_map(|&i| (0..m2).map(move |j| (i * m2 + j) as u32)).collect();
        let perm = Tensor::new(patch_order.as_slice(), dev)?;
        let (cos, sin) = vision_rope(grids, self.merge, self.head_dim, self.theta, dev)?;
        let (cos, sin) = (cos.index_select(&perm, 0)?, sin.index_select(&perm, 0)?);
        let image_lens: Vec<usize> = grids.iter().flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0])).collect();
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut x = self.patch_embed.forward(patches, ctx)?.index_select(&perm, 0)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let lens = if self.full_attention.contains(&i) { &image_lens } else { &window_lens };
            let h = b.norm1.forward(&x, ctx.mode)?;
            let (q, k, v) = rotary_qkv(&b.qkv.forward(&h, ctx)?, self.heads, &cos, &sin, ctx.mode)?;
            x = b.proj.forward_residual(&segment_attention(&q, &k, &v, lens, scale, ctx)?, ctx, &x)?;
            let h = b.norm2.forward(&x, ctx.mode)?;
            let mlp = b.gate.forward_gated(&h, ctx, self.act, &b.up.forward(&h, ctx)?)?;
            x = b.down.forward_residual(&mlp, ctx, &x)?;
        }
        let rows = x.dim(0)?;
        let x = self.ln_q.forward(&x, ctx.mode)?.reshape((rows / m2, ()))?;
        let merged = self.merger2.forward(&Act::Gelu.forward(&self.merger0.forward(&x, ctx)?, ctx.mode)?, ctx)?;
        // Back to image order: out[order[i]] = merged[i].
        let mut inverse = vec![0u32; order.len()];
        for (i, &o) in order.iter().enumerate() {
            inverse[o] = i as u32;
        }
        let embeds = merged.index_select(&Tensor::new(inverse.as_slice(), dev)?, 0)?;
        Ok(ImageFeatures { embeds, deepstack: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_transformers() {
        // A 4×6 merged grid (8×12 patches) with 2×2-token windows: 2 rows × 3 columns of windows.
        let (order, lens) = window_index(&[[1, 8, 12]], 2, 56, 14);
        assert_eq!(&order[..4], [0, 1, 6, 7]);
        assert_eq!(&order[4..8], [2, 3, 8, 9]);
        assert_eq!(lens, vec![16; 6]);
        // A grid that does not divide: windows at the edge are smaller, none is empty.
        let (order, lens) = window_index(&[[1, 6, 6]], 2, 56, 14);
        assert_eq!(order.len(), 9);
        assert_eq!(lens, vec![16, 8, 8, 4]);
    }
}
