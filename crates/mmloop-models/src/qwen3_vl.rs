//! Qwen3-VL (transformers `Qwen3VLForConditionalGeneration`).
//!
//! Vision: 16×16 patches (a biased Conv3d), plus a learned square grid of position
//! embeddings resampled bilinearly (align-corners) to each image's patch grid; LayerNorm blocks
//! with `gelu_pytorch_tanh` MLPs and 2-D rotary attention within each image; the merger
//! (LayerNorm → Linear → GELU → Linear over 2×2 windows); and DeepStack: after the blocks in
//! `deepstack_visual_indexes`, extra mergers (normalising after the 2×2 concatenation) make
//! features that are added to the image tokens' hidden states after the first decoder layers.
//! Language: Qwen3 (q/k RMSNorm, no biases) with interleaved M-RoPE.

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::model::ImageFeatures;
use crate::nn::{Act, Ctx, LayerNorm, Linear, segment_attention};
use crate::qwen2_vl::{float, rotary_qkv, uint, vision_rope};
use crate::weights::Weights;
use crate::{Error, Result};

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

struct Merger {
    norm: LayerNorm,
    /// Normalise the concatenated 2×2 window (DeepStack mergers) rather than each patch.
    post_shuffle: bool,
    fc1: Linear,
    fc2: Linear,
}

impl Merger {
    fn load(w: &Weights, p: &str, dim: usize, m2: usize, out: usize, post_shuffle: bool) -> Result<Merger> {
        let hidden = dim * m2;
        Ok(Merger {
            norm: LayerNorm::load(w, &format!("{p}.norm"), if post_shuffle { hidden } else { dim }, 1e-6)?,
            post_shuffle,
            fc1: Linear::load(w, &format!("{p}.linear_fc1"), hidden, hidden, true)?,
            fc2: Linear::load(w, &format!("{p}.linear_fc2"), hidden, out, true)?,
        })
    }

    fn forward(&self, x: &Tensor, m2: usize, ctx: &Ctx) -> Result<Tensor> {
        let rows = x.dim(0)? / m2;
        let x = if self.post_shuffle {
            self.norm.forward(&x.reshape((rows, ()))?, ctx.mode)?
        } else {
            self.norm.forward(x, ctx.mode)?.reshape((rows, ()))?
        };
        self.fc2.forward(&Act::Gelu.forward(&self.fc1.forward(&x, ctx)?, ctx.mode)?, ctx)
    }
}

pub struct Vision {
    patch_embed: Linear,
    pos_embed: Tensor,
    grid_side: usize,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack_layers: Vec<usize>,
    deepstack: Vec<Merger>,
    heads: usize,
    head_dim: usize,
    merge: usize,
    act: Act,
    theta: f32,
}

/// transformers' `get_vision_interpolation_indices_and_weights` (bilinear, align_corners):
/// per patch (in merge-window order), the four table rows and their weights.
fn interpolation(grids: &[[usize; 3]], side: usize, merge: usize) -> (Vec<u32>, Vec<f32>) {
    let axis = |index: usize, size: usize| -> ([usize; 2], [f32; 2]) {
        let src = index as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
        let floor = src.floor();
        let mut taps = [0usize; 2];
        let mut weights = [0f32; 2];
        for (o, (t, w)) in taps.iter_mut().zip(weights.iter_mut()).enumerate() {
            *t = ((floor as i64 + o as i64).clamp(0, side as i64 - 1)) as usize;
            *w = (1.0 - (src - floor - o as f32).abs()).max(0.0);
        }
        (taps, weights)
    };
    let mut idx = Vec::new();
    let mut wts = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / merge {
                for bw in 0..w / merge {
                    for mh in 0..merge {
                        for mw in 0..merge {
                            let (ht, hw) = axis(bh * merge + mh, h);
                            let (wt, ww) = axis(bw * merge + mw, w);
                            for i in 0..2 {
                                for j in 0..2 {
                                    idx.push((ht[i] * side + wt[j]) as u32);
                                    wts.push(hw[i] * ww[j]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (idx, wts)
}

impl Vision {
    pub fn load(w: &Weights, config: &Value, out_dim: usize) -> Result<Vision> {
        let v = &config["vision_config"];
        let dim = uint(v, "hidden_size", Some(1152))?;
        let depth = uint(v, "depth", Some(27))?;
        let heads = uint(v, "num_heads", Some(16))?;
        let inter = uint(v, "intermediate_size", Some(4304))?;
        let channels = uint(v, "in_channels", Some(3))?;
        let patch = uint(v, "patch_size", Some(16))?;
        let temporal = uint(v, "temporal_patch_size", Some(2))?;
        let merge = uint(v, "spatial_merge_size", Some(2))?;
        let n_pos = uint(v, "num_position_embeddings", Some(2304))?;
        let merged_out = uint(v, "out_hidden_size", Some(out_dim))?;
        if merged_out != out_dim {
            return Err(Error::Config(format!(
                "config.json: vision_config.out_hidden_size {merged_out} differs from the language model's hidden_size {out_dim}"
            )));
        }
        let grid_side = (n_pos as f64).sqrt() as usize;
        if grid_side * grid_side != n_pos {
            return Err(Error::Config(format!("config.json: num_position_embeddings {n_pos} is not a square")));
        }
        let deepstack_layers: Vec<usize> = v["deepstack_visual_indexes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64().map(|n| n as usize)).collect())
            .unwrap_or_default();
        let p = "model.visual";
        let flat = channels * temporal * patch * patch;
        let pw = w.get(&format!("{p}.patch_embed.proj.weight"), &[dim, channels, temporal, patch, patch])?;
        let pb = w.get(&format!("{p}.patch_embed.proj.bias"), &[dim])?;
        let patch_embed = Linear::new(format!("{p}.patch_embed.proj"), pw.reshape((dim, flat))?, Some(pb));
        let mut blocks = Vec::with_capacity(depth);
        for b in 0..depth {
            let bp = format!("{p}.blocks.{b}");
            blocks.push(Block {
                norm1: LayerNorm::load(w, &format!("{bp}.norm1"), dim, 1e-6)?,
                norm2: LayerNorm::load(w, &format!("{bp}.norm2"), dim, 1e-6)?,
                qkv: Linear::load(w, &format!("{bp}.attn.qkv"), dim, 3 * dim, true)?,
                proj: Linear::load(w, &format!("{bp}.attn.proj"), dim, dim, true)?,
                fc1: Linear::load(w, &format!("{bp}.mlp.linear_fc1"), dim, inter, true)?,
                fc2: Linear::load(w, &format!("{bp}.mlp.linear_fc2"), inter, dim, true)?,
            });
        }
        let m2 = merge * merge;
        let deepstack = (0..deepstack_layers.len())
            .map(|i| Merger::load(w, &format!("{p}.deepstack_merger_list.{i}"), dim, m2, out_dim, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Vision {
            patch_embed,
            pos_embed: w.get(&format!("{p}.pos_embed.weight"), &[n_pos, dim])?,
            grid_side,
            blocks,
            merger: Merger::load(w, &format!("{p}.merger"), dim, m2, out_dim, false)?,
            deepstack_layers,
            deepstack,
            heads,
            head_dim: dim / heads,
            merge,
            act: Act::from_name(v["hidden_act"].as_str().unwrap_or("gelu_pytorch_tanh"))?,
            theta: float(&v["rope_parameters"], "rope_theta", 10_000.0) as f32,
        })
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = vec![&mut self.patch_embed, &mut self.merger.fc1, &mut self.merger.fc2];
        for m in &mut self.deepstack {
            out.extend([&mut m.fc1, &mut m.fc2]);
        }
        for b in &mut self.blocks {
            out.extend([&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2]);
        }
        out
    }

    pub fn forward(&self, patches: &Tensor, grids: &[[usize; 3]], ctx: &Ctx) -> Result<ImageFeatures> {
        let dev = patches.device();
        let (idx, wts) = interpolation(grids, self.grid_side, self.merge);
        let n = idx.len() / 4;
        let table = self.pos_embed.index_select(&Tensor::new(idx.as_slice(), dev)?, 0)?.reshape((n, 4, ()))?;
        let weights = Tensor::from_vec(wts, (n, 4, 1), dev)?.to_dtype(table.dtype())?;
        let pos = table.broadcast_mul(&weights)?.sum(1)?;
        let mut x = (self.patch_embed.forward(patches, ctx)? + pos)?;
        let (cos, sin) = vision_rope(grids, self.merge, self.head_dim, self.theta, dev)?;
        let lens: Vec<usize> = grids.iter().flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0])).collect();
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let m2 = self.merge * self.merge;
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let h = b.norm1.forward(&x, ctx.mode)?;
            let (q, k, v) = rotary_qkv(&b.qkv.forward(&h, ctx)?, self.heads, &cos, &sin, ctx.mode)?;
            x = b.proj.forward_residual(&segment_attention(&q, &k, &v, &lens, scale, ctx)?, ctx, &x)?;
            x = b.fc1.forward_mlp(&b.fc2, &b.norm2, &x, ctx, self.act, &x)?;
            if let Some(j) = self.deepstack_layers.iter().position(|&l| l == i) {
                deepstack.push(self.deepstack[j].forward(&x, m2, ctx)?);
            }
        }
        let embeds = self.merger.forward(&x, m2, ctx)?;
        let _ = DType::F32;
        Ok(ImageFeatures { embeds, deepstack })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_taps_cover_the_table_corners() {
        // A 2×2 patch grid over a 4×4 table: corners map exactly onto table corners.
        let (idx, wts) = interpolation(&[[1, 2, 2]], 4, 2);
        assert_eq!(idx.len(), 16);
        // Patch (0,0): table row 0 with weight 1.
        assert_eq!((idx[0], wts[0]), (0, 1.0));
        // Patch (1,1) (the 4th in merge order): table row 15 with weight 1.
        let last: Vec<(u32, f32)> = idx[12..].iter().copied().zip(wts[12..].iter().copied()).collect();
        assert!(last.iter().any(|&(i, w)| i == 15 && w == 1.0), "{last:?}");
    }
}
