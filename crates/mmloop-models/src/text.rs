//! The language model every family ends in: a decoder-only transformer (Qwen2, Qwen3,
//! Llama) with RMSNorm, SwiGLU and rotary positions, run over a *packed* batch.
//!
//! Packing: the rows of every sequence in a step (a whole prompt at prefill, one token at a
//! decode step) are stacked into one `[rows, hidden]` matrix, so every linear layer runs once
//! for the whole batch; only attention is done per sequence, against that sequence's own KV
//! cache. A sequence's rows never meet another's, so a batched step computes what the same
//! sequences would alone (up to the summation order of the matrix kernels).
//!
//! Positions are three numbers per token (temporal, height, width): M-RoPE for the Qwen VL
//! families, the same number three times for plain 1-D rope.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, IndexOp, Tensor};

use crate::nn::{Act, Ctx, Embedding, Linear, Mode, RmsNorm, Span, attention, causal_attention, rope};
use crate::weights::Weights;
use crate::{Error, Result};

/// How rotary angles are taken from a token's three position numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeKind {
    /// One position (the first of the three).
    Default,
    /// Qwen2-VL / Qwen2.5-VL: the frequencies are cut into contiguous sections for t, h, w.
    MRope { sections: [usize; 3] },
    /// Qwen3-VL: frequency `j` takes h when `j % 3 == 1` and `j < 3·sₕ`, w when `j % 3 == 2`
    /// and `j < 3·s_w`, t otherwise.
    MRopeInterleaved { sections: [usize; 3] },
}

/// The decoder's shape, in one spelling for every family.
#[derive(Clone, Debug)]
pub struct TextConfig {
    /// Module path prefix: `model.language_model` (Qwen) or `model.text_model` (Idefics3).
    pub prefix: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope: RopeKind,
    /// Biases on q/k/v (Qwen2).
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// RMSNorm on q and k per head (Qwen3).
    pub qk_norm: bool,
    pub hidden_act: Act,
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    pub fn check(&self, file: &str) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("{file}: {what}")));
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} is odd", self.head_dim));
        }
        match &self.rope {
            RopeKind::MRope { sections } if sections.iter().sum::<usize>() != self.head_dim / 2 => {
                bad(format!("mrope_section {sections:?} must add up to head_dim / 2 = {}", self.head_dim / 2))
            }
            RopeKind::MRopeInterleaved { sections } if sections.iter().sum::<usize>() > self.head_dim / 2 => {
                bad(format!("mrope_section {sections:?} adds up to more than head_dim / 2 = {}", self.head_dim / 2))
            }
            _ => Ok(()),
        }
    }

    /// Rotary inverse frequencies as transformers computes them in float32.
    fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        (0..dim / 2).map(|j| 1.0f32 / (self.rope_theta as f32).powf((2 * j) as f32 / dim as f32)).collect()
    }
}

/// The keys and values one sequence has seen, per layer.
pub struct KvCache {
    /// Per layer: key and value buffers `[kv_heads, capacity, head_dim]` (inference), or
    /// exactly the keys and values seen (training).
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions stored (every layer holds as many).
    len: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache { layers: (0..layers).map(|_| None).collect(), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (for memory accounting).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()).sum()
    }

    /// Appends `n` new positions to `layer` and returns all its keys and values
    /// (`[kv_heads, len + n, head_dim]`). Inference writes into buffers that double when
    /// full; training concatenates, which autograd follows.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor, mode: Mode) -> Result<(Tensor, Tensor)> {
        let total = self.len + k.dim(1)?;
        if mode == Mode::Train {
            let (k, v) = match &self.layers[layer] {
                Some((pk, pv)) => (Tensor::cat(&[pk, k], 1)?, Tensor::cat(&[pv, v], 1)?),
                None => (k.clone(), v.clone()),
            };
            self.layers[layer] = Some((k.clone(), v.clone()));
            return Ok((k, v));
        }
        let full = match &self.layers[layer] {
            Some((bk, _)) => bk.dim(1)? < total,
            None => true,
        };
        if full {
            let cap = total.next_power_of_two().max(16);
            let (h, _, d) = k.dims3()?;
            let nk = Tensor::zeros((h, cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((h, cap, d), v.dtype(), v.device())?;
            if let Some((bk, bv)) = &self.layers[layer]
                && self.len > 0
            {
                nk.slice_set(&bk.narrow(1, 0, self.len)?, 1, 0)?;
                nv.slice_set(&bv.narrow(1, 0, self.len)?, 1, 0)?;
            }
            self.layers[layer] = Some((nk, nv));
        }
        let (bk, bv) = self.layers[layer].as_ref().expect("allocated above");
        bk.slice_set(&k.contiguous()?, 1, self.len)?;
        bv.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((bk.narrow(1, 0, total)?, bv.narrow(1, 0, total)?))
    }

    /// The step's new positions become part of the cache.
    fn commit(&mut self, n: usize) {
        self.len += n;
    }
}

/// Extra image features a Qwen3-VL sequence adds to its image rows after the first decoder
/// layers (DeepStack).
pub struct Deepstack {
    /// Rows of this step's chunk that hold image tokens.
    pub rows: Vec<u32>,
    /// One `[rows.len(), hidden]` tensor per decoder layer, from layer 0.
    pub features: Vec<Tensor>,
}

/// One sequence's part of a packed step.
pub struct SeqStep<'a> {
    /// `[n, hidden]`
    pub embeds: Tensor,
    /// `n` positions (t, h, w).
    pub positions: Vec<[i64; 3]>,
    pub cache: &'a mut KvCache,
    pub deepstack: Option<Deepstack>,
    pub adapter: Option<usize>,
}

/// A packed step's input rows and what every decoder layer reads besides them.
pub(crate) struct Packed {
    /// `[rows, hidden]`: every sequence's embeddings, in order.
    pub x: Tensor,
    lens: Vec<usize>,
    offsets: Vec<usize>,
    cos: Tensor,
    sin: Tensor,
    /// Deepstack rows (packed coordinates) and their features per layer.
    deepstack: Vec<(Tensor, Vec<Tensor>)>,
    spans: Vec<Span>,
    mode: Mode,
    /// Prefill attention on AMX ([`TextModel::bf16_attention`]).
    bf16: bool,
}

impl Packed {
    fn ctx(&self) -> Ctx<'_> {
        let adapted = self.spans.iter().any(|s| s.adapter.is_some());
        // Decoding sequences come first in a step (the scheduler's order).
        let decoding = if self.mode == Mode::Infer { self.lens.iter().take_while(|&&n| n == 1).count() } else { 0 };
        Ctx { mode: self.mode, spans: if adapted { &self.spans } else { &[] }, bf16: self.bf16, decode_rows: decoding }
    }

    /// Sequences in the step.
    pub fn sequences(&self) -> usize {
        self.lens.len()
    }
}

/// What a step returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Logits of each sequence's last row: `[sequences, vocab]`.
    LastLogits,
    /// Logits of every row: `[rows, vocab]`.
    AllLogits,
    /// Logits of these rows of the packed batch, in this order: `[rows.len(), vocab]`
    /// (training: the rows before labelled tokens; the output head is the largest matmul).
    Rows(Vec<u32>),
}

struct Layer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.gate, &mut self.up, &mut self.down]
    }
}

pub struct TextModel {
    pub cfg: TextConfig,
    pub embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    pub lm_head: Linear,
    inv_freq: Vec<f32>,
    /// Prefill's causal attention in bfloat16 on AMX (`--quant bf16`; where the CPU has it).
    pub bf16_attention: bool,
}

impl TextModel {
    /// Loads the language model; with `quant`, each decoder layer's linear layers are quantized
    /// as soon as the layer is read, so the full-precision model never sits in memory whole.
    pub fn load(w: &Weights, cfg: TextConfig, quant: Option<GgmlDType>) -> Result<TextModel> {
        let p = cfg.prefix.clone();
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let embed = Embedding { weight: w.get(&format!("{p}.embed_tokens.weight"), &[cfg.vocab_size, h])? };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let lp = format!("{p}.layers.{l}");
            let eps = cfg.rms_norm_eps;
            layers.push(Layer {
                input_norm: RmsNorm::load(w, &format!("{lp}.input_layernorm"), h, eps)?,
                post_norm: RmsNorm::load(w, &format!("{lp}.post_attention_layernorm"), h, eps)?,
                q: Linear::load(w, &format!("{lp}.self_attn.q_proj"), h, cfg.num_heads * hd, cfg.qkv_bias)?,
                k: Linear::load(w, &format!("{lp}.self_attn.k_proj"), h, cfg.num_kv_heads * hd, cfg.qkv_bias)?,
                v: Linear::load(w, &format!("{lp}.self_attn.v_proj"), h, cfg.num_kv_heads * hd, cfg.qkv_bias)?,
                o: Linear::load(w, &format!("{lp}.self_attn.o_proj"), cfg.num_heads * hd, h, cfg.o_bias)?,
                q_norm: cfg
                    .qk_norm
                    .then(|| RmsNorm::load(w, &format!("{lp}.self_attn.q_norm"), hd, eps))
                    .transpose()?,
                k_norm: cfg
                    .qk_norm
                    .then(|| RmsNorm::load(w, &format!("{lp}.self_attn.k_norm"), hd, eps))
                    .transpose()?,
                gate: Linear::load(w, &format!("{lp}.mlp.gate_proj"), h, i, false)?,
                up: Linear::load(w, &format!("{lp}.mlp.up_proj"), h, i, false)?,
                down: Linear::load(w, &format!("{lp}.mlp.down_proj"), i, h, false)?,
            });
            if let (Some(q), Some(layer)) = (quant, layers.last_mut()) {
                for l in layer.linears_mut() {
                    l.quantize(q)?;
                }
            }
        }
        let norm = RmsNorm::load(w, &format!("{p}.norm"), h, cfg.rms_norm_eps)?;
        let lm_head = match w.maybe("lm_head.weight", &[cfg.vocab_size, h])? {
            Some(t) => Linear::new("lm_head", t, None),
            None if cfg.tie_word_embeddings => Linear::new("lm_head", embed.weight.clone(), None),
            None => {
                return Err(Error::Load(
                    "tensor lm_head.weight is missing and the config does not tie it to the embeddings".into(),
                ));
            }
        };
        let inv_freq = cfg.inv_freq();
        Ok(TextModel { cfg, embed, layers, norm, lm_head, inv_freq, bf16_attention: false })
    }

    /// Every linear layer, for adapters and quantization.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for l in &mut self.layers {
            out.extend(l.linears_mut());
        }
        out
    }

    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend([&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]);
        }
        out
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn device(&self) -> &Device {
        self.embed.weight.device()
    }

    /// Token embeddings of `ids`: `[n, hidden]`.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::new(ids, self.device())?;
        self.embed.forward(&t)
    }

    /// cos and sin tables `[rows, head_dim / 2]` for the given positions.
    fn rope_tables(&self, positions: &[[i64; 3]], dtype: candle_core::DType) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.head_dim / 2;
        let axis: Vec<usize> = match &self.cfg.rope {
            RopeKind::Default => vec![0; half],
            RopeKind::MRope { sections } => (0..half)
                .map(|j| {
                    if j < sections[0] {
                        0
                    } else if j < sections[0] + sections[1] {
                        1
                    } else {
                        2
                    }
                })
                .collect(),
            RopeKind::MRopeInterleaved { sections } => (0..half)
                .map(|j| {
                    if j % 3 == 1 && j < 3 * sections[1] {
                        1
                    } else if j % 3 == 2 && j < 3 * sections[2] {
                        2
                    } else {
                        0
                    }
                })
                .collect(),
        };
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for p in positions {
            for (j, f) in self.inv_freq.iter().enumerate() {
                let angle = p[axis[j]] as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        let dev = self.device();
        Ok((Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?, Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?))
    }

    /// One packed step over `seqs`; the caches grow by each sequence's rows.
    pub fn forward(&self, seqs: &mut [SeqStep], mode: Mode, output: Output) -> Result<Tensor> {
        let packed = self.pack(seqs, mode)?;
        let mut x = packed.x.clone();
        for li in 0..self.layers.len() {
            let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
            x = self.layer(li, &x, &packed, &mut caches)?;
        }
        for (s, n) in seqs.iter_mut().zip(&packed.lens) {
            s.cache.commit(*n);
        }
        self.head(&x, &packed, output)
    }

    /// The rows of `seqs` packed into one `[rows, hidden]` input, with what every layer reads.
    pub(crate) fn pack(&self, seqs: &[SeqStep], mode: Mode) -> Result<Packed> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.positions.len()).collect();
        for (s, n) in seqs.iter().zip(&lens) {
            if s.embeds.dim(0)? != *n {
                return Err(Error::Input(format!("{} embeddings for {n} positions", s.embeds.dim(0)?)));
            }
        }
        let spans: Vec<Span> = seqs.iter().map(|s| Span { rows: s.positions.len(), adapter: s.adapter }).collect();
        let x = Tensor::cat(&seqs.iter().map(|s| s.embeds.clone()).collect::<Vec<_>>(), 0)?;
        let positions: Vec<[i64; 3]> = seqs.iter().flat_map(|s| s.positions.iter().copied()).collect();
        let (cos, sin) = self.rope_tables(&positions, x.dtype())?;
        let offsets: Vec<usize> = lens
            .iter()
            .scan(0, |acc, n| {
                let o = *acc;
                *acc += n;
                Some(o)
            })
            .collect();
        // Deepstack rows in packed coordinates, per layer.
        let mut deepstack: Vec<(Tensor, Vec<Tensor>)> = Vec::new();
        for (s, off) in seqs.iter().zip(&offsets) {
            if let Some(d) = &s.deepstack {
                let rows: Vec<u32> = d.rows.iter().map(|r| r + *off as u32).collect();
                deepstack.push((Tensor::new(rows.as_slice(), self.device())?, d.features.clone()));
            }
        }
        Ok(Packed { x, lens, offsets, cos, sin, deepstack, spans, mode, bf16: self.bf16_attention })
    }

    /// Decoder layer `li` over the packed rows `x`; each sequence's keys and values go into
    /// its cache (`caches` in sequence order).
    pub(crate) fn layer(&self, li: usize, x: &Tensor, p: &Packed, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let layer = &self.layers[li];
        let (heads, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let rows = x.dim(0)?;
        let ctx = p.ctx();
        let scale = 1.0 / (hd as f64).sqrt();
        let residual = x.clone();
        let h = layer.input_norm.forward(x, ctx.mode)?;
        let q = layer.q.forward(&h, &ctx)?.reshape((rows, heads, hd))?;
        let k = layer.k.forward(&h, &ctx)?.reshape((rows, kvh, hd))?;
        let v = layer.v.forward(&h, &ctx)?.reshape((rows, kvh, hd))?;
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q, ctx.mode)?, kn.forward(&k, ctx.mode)?),
            _ => (q, k),
        };
        // [1, heads, rows, d] for the rotary kernel.
        let q = rope(&q.transpose(0, 1)?.unsqueeze(0)?, &p.cos, &p.sin, ctx.mode)?.squeeze(0)?;
        let k = rope(&k.transpose(0, 1)?.unsqueeze(0)?, &p.cos, &p.sin, ctx.mode)?.squeeze(0)?;
        let v = v.transpose(0, 1)?;
        let mut kvs = Vec::with_capacity(caches.len());
        for (si, cache) in caches.iter_mut().enumerate() {
            let (off, n) = (p.offsets[si], p.lens[si]);
            kvs.push(cache.append(li, &k.narrow(1, off, n)?, &v.narrow(1, off, n)?, ctx.mode)?);
        }
        // The decoding sequences (one new position each, first in the step): all in one CPU
        // pass, in a decoding step or beside new prompts alike, so that their numbers do not
        // depend on the step; the prompts one by one.
        let decoding = ctx.decode_rows;
        let batched = if decoding > 0 {
            crate::nn::decode_attention(&q.narrow(1, 0, decoding)?, &kvs[..decoding], scale)?
        } else {
            None
        };
        let attn = match batched {
            Some(a) if decoding == kvs.len() => a,
            Some(a) => Tensor::cat(&[a, self.attention_per_sequence(&q, &kvs, decoding, p, ctx, scale)?], 0)?,
            None => self.attention_per_sequence(&q, &kvs, 0, p, ctx, scale)?,
        };
        let x = layer.o.forward_residual(&attn, &ctx, &residual)?;
        let h = layer.post_norm.forward(&x, ctx.mode)?;
        let mlp = layer.gate.forward_gated(&h, &ctx, cfg.hidden_act, &layer.up.forward(&h, &ctx)?)?;
        let mut x = layer.down.forward_residual(&mlp, &ctx, &x)?;
        for (rows_t, feats) in &p.deepstack {
            if let Some(f) = feats.get(li) {
                x = x.index_add(rows_t, f, 0)?;
            }
        }
        Ok(x)
    }

    /// Each sequence's query rows (`q` `[heads, rows, d]`, packed) over its keys and values,
    /// causal within its new rows, sequences `from..` only; out `[their rows, heads·d]`.
    fn attention_per_sequence(
        &self,
        q: &Tensor,
        kvs: &[(Tensor, Tensor)],
        from: usize,
        p: &Packed,
        ctx: Ctx,
        scale: f64,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (heads, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let mut outs = Vec::with_capacity(kvs.len());
        for (si, (ks, vs)) in kvs.iter().enumerate().skip(from) {
            let (off, n) = (p.offsets[si], p.lens[si]);
            let qi = q.narrow(1, off, n)?;
            let rep = heads / kvh;
            let qg = qi.contiguous()?.reshape((kvh, rep * n, hd))?;
            let amx = if n > 1 && ctx.bf16 && ctx.mode == Mode::Infer {
                crate::nn::causal_attention_bf16(&qg, ks, vs, n, scale)?
            } else {
                None
            };
            let o = if let Some(o) = amx {
                o
            } else if n > 1 {
                causal_attention(&qg, ks, &vs.contiguous()?, n, scale, ctx.mode)?
            } else {
                attention(&qg, ks, &vs.contiguous()?, scale, None, ctx.mode)?
            };
            // [kvh, rep*n, d] → [heads, n, d] → [n, heads*d]
            outs.push(o.reshape((heads, n, hd))?.transpose(0, 1)?.reshape((n, heads * hd))?);
        }
        Ok(if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? })
    }

    /// The final norm and the output head over the rows `output` names of the last layer's `x`.
    pub(crate) fn head(&self, x: &Tensor, p: &Packed, output: Output) -> Result<Tensor> {
        let x = match output {
            Output::AllLogits => x.clone(),
            Output::Rows(rows) => x.index_select(&Tensor::new(rows.as_slice(), self.device())?, 0)?,
            Output::LastLogits => {
                let last: Vec<u32> = p.offsets.iter().zip(&p.lens).map(|(o, n)| (o + n - 1) as u32).collect();
                x.index_select(&Tensor::new(last.as_slice(), self.device())?, 0)?
            }
        };
        let x = self.norm.forward(&x, p.mode)?;
        let head_ctx = Ctx { mode: p.mode, ..Ctx::infer() };
        self.lm_head.forward(&x, &head_ctx)
    }

    /// Final hidden row → logits, used by tests that need one row.
    pub fn logits_row(logits: &Tensor, i: usize) -> Result<Vec<f32>> {
        Ok(logits.i(i)?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
    }
}

/// 1-D positions `start..start+n` as (t, h, w) triples.
pub fn linear_positions(start: i64, n: usize) -> Vec<[i64; 3]> {
    (0..n as i64).map(|i| [start + i; 3]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_mrope_picks_axes_like_transformers() {
        // transformers Qwen3VLTextRotaryEmbedding.recomposition_frequencies, mrope_section [4, 2, 2], dim 16.
        let cfg = TextConfig {
            prefix: String::new(),
            vocab_size: 1,
            hidden_size: 1,
            intermediate_size: 1,
            num_layers: 0,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 16,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope: RopeKind::MRopeInterleaved { sections: [4, 2, 2] },
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            hidden_act: Act::Silu,
            tie_word_embeddings: true,
        };
        let half = 8;
        let axes: Vec<usize> = (0..half)
            .map(|j| {
                if j % 3 == 1 && j < 6 {
                    1
                } else if j % 3 == 2 && j < 6 {
                    2
                } else {
                    0
                }
            })
            .collect();
        assert_eq!(axes, [0, 1, 2, 0, 1, 2, 0, 0]);
        assert!(cfg.check("config.json").is_ok());
    }
}
