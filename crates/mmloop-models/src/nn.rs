//! The layers every family is made of, each with an inference path and a training path.
//!
//! candle's fused `rms_norm`, `layer_norm`, `softmax_last_dim` and `rope` are fast but have
//! no backward pass: gradients stop silently behind them. In [`Mode::Train`] the same
//! functions are written as plain tensor ops that autograd follows; [`Mode::Infer`] takes the
//! fused kernels. A test holds the two paths to the same numbers.
//!
//! [`Linear`] is the one linear layer of every model: it knows its PEFT module path
//! (`model.language_model.layers.0.self_attn.q_proj`), can be quantized for inference, and
//! carries LoRA / DoRA adapters applied per row span, so one batch can mix requests for
//! different adapters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Module, Shape, Tensor};

use crate::weights::Weights;
use crate::{Error, Result};

/// Which kernels to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused kernels, no gradients.
    #[default]
    Infer,
    /// Plain, differentiable tensor ops.
    Train,
}

/// Rows of a packed batch that share one adapter (`None`: the base model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub rows: usize,
    pub adapter: Option<usize>,
}

/// What a forward pass needs besides its inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx<'a> {
    pub mode: Mode,
    /// The adapter of each row span, in row order; empty: no adapter anywhere.
    pub spans: &'a [Span],
    /// Attention products in bfloat16 on AMX (`--quant bf16` on a CPU that has it); linear
    /// layers follow their own weights' format.
    pub bf16: bool,
    /// The first rows are this many sequences' single decoding rows (a decoding step's, or the
    /// head of a step that also admits prompts). On the AMX path their products always take
    /// the dot-product kernel and the rest always tiles, so no row's numbers depend on what
    /// else is in its batch (the two kernels round differently).
    pub decode_rows: usize,
}

impl<'a> Ctx<'a> {
    pub fn infer() -> Ctx<'static> {
        Ctx { mode: Mode::Infer, spans: &[], bf16: false, decode_rows: 0 }
    }

    /// The same context without adapters and decoding rows (vision towers, which adapters
    /// never touch here).
    pub fn base(&self) -> Ctx<'a> {
        Ctx { mode: self.mode, spans: &[], bf16: self.bf16, decode_rows: 0 }
    }
}

/// One LoRA (or DoRA) adapter on one linear layer, PEFT's formula:
/// LoRA `y = xWᵀ + b + s·(xAᵀ)Bᵀ`; DoRA `y = g ⊙ (xWᵀ + s·(xAᵀ)Bᵀ) + b` with
/// `g = m / ‖W + s·BA‖` per output feature, the norm treated as a constant.
pub struct LoraWeights {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
    /// DoRA's magnitude `m`, `[out]`.
    pub magnitude: Option<Tensor>,
    /// `‖W + s·BA‖` per output row, computed once for inference.
    norm: OnceLock<Tensor>,
    /// PEFT's `lora_dropout` on the adapter's input, training path only.
    dropout: Option<Dropout>,
}

/// Dropout drawn from a seed the trainer sets before each forward pass (mixed with the
/// layer's path), so a resumed run draws the masks the uninterrupted one would have.
struct Dropout {
    p: f64,
    seed: AtomicU64,
}

impl LoraWeights {
    pub fn new(a: Tensor, b: Tensor, scale: f64, magnitude: Option<Tensor>) -> LoraWeights {
        LoraWeights { a, b, scale, magnitude, norm: OnceLock::new(), dropout: None }
    }

    /// With dropout `p` on the adapter's input in training (`0` turns it off).
    pub fn with_dropout(mut self, p: f64) -> LoraWeights {
        self.dropout = (p > 0.0).then(|| Dropout { p, seed: AtomicU64::new(0) });
        self
    }

    /// The seed of the next training forward pass's dropout masks.
    pub fn set_dropout_seed(&self, seed: u64) {
        if let Some(d) = &self.dropout {
            d.seed.store(seed, Ordering::Relaxed);
        }
    }

    /// `x` with each element zeroed with probability `p` and the rest scaled by `1/(1-p)`,
    /// as `torch.nn.Dropout` in training; the mask is a function of the seed, the layer's
    /// path and `x`'s shape.
    fn drop(&self, x: &Tensor, path: &str) -> Result<Option<Tensor>> {
        use rand::{Rng, SeedableRng};
        let Some(d) = &self.dropout else { return Ok(None) };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in path.bytes() {
            h = (h ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(d.seed.load(Ordering::Relaxed) ^ h);
        let keep = 1.0 / (1.0 - d.p);
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if rng.random::<f64>() < d.p { 0.0 } else { keep as f32 }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(Some((x * mask)?))
    }

    /// `s·BA`, `[out, in]`.
    pub fn delta(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scale)?)
    }

    fn weight_norm(&self, w: &Tensor, mode: Mode) -> Result<Tensor> {
        let compute = || -> Result<Tensor> {
            let full = (w + self.delta()?.detach())?;
            Ok(full.sqr()?.sum(D::Minus1)?.sqrt()?.detach())
        };
        match mode {
            Mode::Train => compute(),
            Mode::Infer => {
                if let Some(n) = self.norm.get() {
                    return Ok(n.clone());
                }
                let n = compute()?;
                Ok(self.norm.get_or_init(|| n).clone())
            }
        }
    }
}

/// A linear layer's weight `[out, in]`: full precision, or quantized in GGML blocks with the
/// full-precision tensor dropped (what makes QLoRA's base small).
#[derive(Clone)]
enum Weight {
    Dense(Tensor),
    Quantized {
        q: Arc<QTensor>,
        /// Inference's quantized matmul over `q`.
        mm: QMatMul,
        /// The dtype the layer computes in (the dequantized weight's).
        dtype: DType,
    },
    /// Rounded to bfloat16 for inference (`--quant bf16`); activations are rounded per call
    /// the same way and products accumulate in float32.
    Bf16(Bf16Weight),
}

#[derive(Clone)]
enum Bf16Weight {
    /// Packed into AMX tiles (the CPU has them: [`crate::amx`]).
    Amx(Arc<crate::amx::PackedB>),
    /// A float32 tensor of the rounded values, multiplied by candle's matmul: the same
    /// numbers as the AMX path up to summation order, on any device.
    Emulated(Tensor),
}

impl Weight {
    /// The full-precision weight (dequantized on each call when quantized).
    fn dense(&self) -> candle_core::Result<Tensor> {
        match self {
            Weight::Dense(w) => Ok(w.clone()),
            Weight::Quantized { q, dtype, .. } => q.dequantize(&q.device())?.to_dtype(*dtype),
            Weight::Bf16(Bf16Weight::Emulated(w)) => Ok(w.clone()),
            Weight::Bf16(Bf16Weight::Amx(p)) => Tensor::from_vec(p.unpack(), (p.n, p.k), &candle_core::Device::Cpu),
        }
    }
}

/// A linear layer `y = xWᵀ + b`, addressable by its module path.
pub struct Linear {
    pub path: String,
    weight: Weight,
    pub bias: Option<Tensor>,
    /// Adapter slots (index = adapter id of the model); `None` where the adapter does not
    /// touch this layer.
    adapters: RwLock<Vec<Option<Arc<LoraWeights>>>>,
}

impl Linear {
    pub fn new(path: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { path: path.into(), weight: Weight::Dense(weight), bias, adapters: RwLock::new(Vec::new()) }
    }

    /// `path.weight` `[out, in]` and, when `bias`, `path.bias` `[out]`.
    pub fn load(w: &Weights, path: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let weight = w.get(&format!("{path}.weight"), &[out_dim, in_dim])?;
        let bias = if bias { Some(w.get(&format!("{path}.bias"), &[out_dim])?) } else { None };
        let mut layer = Linear::new(path, weight, bias);
        if w.rounds_linears_to_bf16() {
            layer.to_bf16()?;
        }
        Ok(layer)
    }

    fn dims(&self) -> (usize, usize) {
        let d = match &self.weight {
            Weight::Dense(w) => w.dims(),
            Weight::Quantized { q, .. } => q.shape().dims(),
            Weight::Bf16(Bf16Weight::Emulated(w)) => w.dims(),
            Weight::Bf16(Bf16Weight::Amx(p)) => return (p.n, p.k),
        };
        (d[0], d[1])
    }

    pub fn in_dim(&self) -> usize {
        self.dims().1
    }

    pub fn out_dim(&self) -> usize {
        self.dims().0
    }

    /// The weight `[out, in]` in full precision; a quantized layer dequantizes it (a new tensor
    /// each call).
    pub fn weight(&self) -> Result<Tensor> {
        Ok(self.weight.dense()?)
    }

    pub fn device(&self) -> candle_core::Device {
        match &self.weight {
            Weight::Dense(w) => w.device().clone(),
            Weight::Quantized { q, .. } => q.device(),
            Weight::Bf16(Bf16Weight::Emulated(w)) => w.device().clone(),
            Weight::Bf16(Bf16Weight::Amx(_)) => candle_core::Device::Cpu,
        }
    }

    /// The dtype the layer computes in.
    pub fn dtype(&self) -> DType {
        match &self.weight {
            Weight::Dense(w) => w.dtype(),
            Weight::Quantized { dtype, .. } => *dtype,
            Weight::Bf16(_) => DType::F32,
        }
    }

    /// Quantizes the weight (`q8_0`, `q4k`) and drops the full-precision tensor. k-quants work
    /// on rows of 256: a layer of another width takes llama.cpp's fallback (`q4k` → `q5_0`,
    /// `q5k` → `q5_1`, `q6k` → `q8_0`); one no format fits stays in full precision (returns
    /// false). Inference runs candle's quantized matmul; training dequantizes the frozen weight
    /// on the fly, forward and backward, as QLoRA does.
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<bool> {
        let Weight::Dense(w) = &self.weight else { return Ok(true) };
        let fits = |d: GgmlDType| self.in_dim().is_multiple_of(d.block_size());
        let fallback = match dtype {
            GgmlDType::Q4K => Some(GgmlDType::Q5_0),
            GgmlDType::Q5K => Some(GgmlDType::Q5_1),
            GgmlDType::Q6K => Some(GgmlDType::Q8_0),
            _ => None,
        };
        let Some(dtype) = Some(dtype).filter(|&d| fits(d)).or(fallback.filter(|&d| fits(d))) else {
            return Ok(false);
        };
        let q = Arc::new(QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?);
        self.weight = Weight::Quantized { mm: QMatMul::from_arc(q.clone())?, q, dtype: w.dtype() };
        Ok(true)
    }

    /// Rounds a float32 weight to bfloat16 for inference (`--quant bf16`): on a CPU with AMX
    /// the weight is packed into tiles once and products run there (an order of magnitude
    /// above candle's float32 matmul, docs/benchmarks.md); elsewhere the rounded values stay
    /// a float32 tensor and candle multiplies them, with the same rounding of activations.
    pub fn to_bf16(&mut self) -> Result<()> {
        let Weight::Dense(w) = &self.weight else { return Ok(()) };
        if w.dtype() != DType::F32 {
            return Err(Error::Unsupported(format!(
                "{}: --quant bf16 rounds float32 weights; this layer is {:?} (use --dtype f32)",
                self.path,
                w.dtype()
            )));
        }
        self.weight = Weight::Bf16(if w.device().is_cpu() && crate::amx::available() {
            let (n, k) = w.dims2()?;
            let (storage, layout) = w.storage_and_layout();
            let packed = match (&*storage, w.is_contiguous()) {
                // Packed from where the values lie (a 3B model's weights are 12 GB in float32).
                (candle_core::Storage::Cpu(s), true) => {
                    let values = crate::kernels::contiguous_f32(s, layout).expect("a contiguous float32 weight");
                    crate::amx::PackedB::from_rows(values, n, k)
                }
                _ => crate::amx::PackedB::from_rows(&w.flatten_all()?.to_vec1::<f32>()?, n, k),
            };
            Bf16Weight::Amx(Arc::new(packed))
        } else {
            Bf16Weight::Emulated(round_bf16(w)?)
        });
        Ok(())
    }

    /// The GGML format of a quantized layer's weight.
    pub fn quant_format(&self) -> Option<GgmlDType> {
        match &self.weight {
            Weight::Dense(_) => None,
            Weight::Quantized { q, .. } => Some(q.dtype()),
            Weight::Bf16(_) => Some(GgmlDType::BF16),
        }
    }

    /// Replaces the weight with a full-precision `[out, in]` tensor of the same shape.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != [self.out_dim(), self.in_dim()] {
            return Err(Error::Load(format!(
                "{}: weight of shape {:?} for a {}×{} layer",
                self.path,
                weight.dims(),
                self.out_dim(),
                self.in_dim()
            )));
        }
        self.weight = Weight::Dense(weight);
        Ok(())
    }

    pub fn is_quantized(&self) -> bool {
        self.quant_format().is_some()
    }

    /// Puts `lora` in adapter slot `slot` (replacing what was there).
    pub fn set_adapter(&self, slot: usize, lora: Option<Arc<LoraWeights>>) {
        let mut a = self.adapters.write().expect("adapter lock");
        if a.len() <= slot {
            a.resize(slot + 1, None);
        }
        a[slot] = lora;
    }

    pub fn adapter(&self, slot: usize) -> Option<Arc<LoraWeights>> {
        self.adapters.read().expect("adapter lock").get(slot).cloned().flatten()
    }

    /// Folds adapter `slot` into the weight (PEFT's merge) and removes it; a quantized layer
    /// becomes a full-precision one.
    pub fn merge_adapter(&mut self, slot: usize) -> Result<()> {
        let Some(l) = self.adapter(slot) else { return Ok(()) };
        let weight = self.weight()?;
        let merged = (&weight + l.delta()?)?;
        let merged = match &l.magnitude {
            None => merged,
            Some(m) => {
                let g = (m / l.weight_norm(&weight, Mode::Train)?)?;
                merged.broadcast_mul(&g.unsqueeze(1)?)?
            }
        };
        self.weight = Weight::Dense(merged);
        self.set_adapter(slot, None);
        Ok(())
    }

    /// `x · Wᵀ`, no bias; `dot_rows` as [`Ctx::decode_rows`] (the AMX path's kernel choice).
    fn base(&self, x: &Tensor, mode: Mode, dot_rows: usize) -> Result<Tensor> {
        match (&self.weight, mode) {
            (Weight::Quantized { mm, .. }, Mode::Infer) => Ok(mm.forward(x)?),
            (Weight::Bf16(Bf16Weight::Amx(p)), Mode::Infer) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let op = crate::amx::Linear {
                    weight: p.clone(),
                    bias: None,
                    epilogue: crate::amx::Epilogue::None,
                    dot_rows,
                };
                Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
            }
            (Weight::Bf16(w), Mode::Infer) => {
                let w = match w {
                    Bf16Weight::Emulated(w) => w.clone(),
                    Bf16Weight::Amx(_) => self.weight.dense()?,
                };
                Ok(round_bf16(x)?.matmul(&w.t()?)?)
            }
            (w, Mode::Train) if x.track_op() && x.device().is_cpu() => {
                let y = x.detach().matmul(&w.dense()?.t()?)?;
                Ok(x.apply_op1(FrozenMatmul { weight: w.clone(), product: Handover::new(y) })?)
            }
            (w, _) => Ok(x.matmul(&w.dense()?.t()?)?),
        }
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.forward_act(x, ctx, None)
    }

    /// `residual + x · Wᵀ + b`, a block's residual connection: on the AMX path the sum is made
    /// as the output is written; elsewhere it is a pass of its own.
    pub fn forward_residual(&self, x: &Tensor, ctx: &Ctx, residual: &Tensor) -> Result<Tensor> {
        if let Some(op) = self.amx_op(x, ctx, crate::amx::Epilogue::None)?
            && residual.device().is_cpu()
            && residual.dtype() == DType::F32
        {
            return Ok(x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op)?);
        }
        Ok((residual + self.forward(x, ctx)?)?)
    }

    /// `residual + fc2(act(fc1(norm(x))))` with `self` as `fc1`, a pre-norm block's two-layer MLP
    /// (SigLIP's): on the AMX path one op that normalises the rows as it packs them and whose
    /// hidden activations never reach float32 memory ([`crate::amx::mlp`], the same numbers as
    /// the norm's and the two layers' own ops); elsewhere the norm,
    /// [`Linear::forward_act`] and [`Linear::forward_residual`].
    pub fn forward_mlp(
        &self,
        fc2: &Linear,
        norm: &LayerNorm,
        x: &Tensor,
        ctx: &Ctx,
        act: Act,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let epilogue = match act {
            Act::GeluTanh => Some(crate::amx::Epilogue::GeluTanh),
            _ => None,
        };
        if let Some(epilogue) = epilogue
            && ctx.decode_rows == 0
            && residual.device().is_cpu()
            && residual.dtype() == DType::F32
            && let (Some(first), Some(second)) =
                (self.amx_op(x, ctx, epilogue)?, fc2.amx_op(x, ctx, crate::amx::Epilogue::None)?)
            && let Some(norm) = norm.row_weights()?
        {
            let op = crate::amx::Mlp { norm: Some(norm), fc1: first, fc2: second };
            return Ok(x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op)?);
        }
        let h = norm.forward(x, ctx.mode)?;
        fc2.forward_residual(&self.forward_act(&h, ctx, Some(act))?, ctx, residual)
    }

    /// `act(x · Wᵀ + b) ⊙ factor`, a gated MLP's gate (`factor`: its up projection): on the
    /// AMX path SiLU and the product are applied as the output is written; elsewhere they are
    /// passes of their own.
    pub fn forward_gated(&self, x: &Tensor, ctx: &Ctx, act: Act, factor: &Tensor) -> Result<Tensor> {
        let amx_gate = act == Act::Silu
            && matches!(self.weight, Weight::Bf16(Bf16Weight::Amx(_)))
            && ctx.mode == Mode::Infer
            && factor.device().is_cpu()
            && factor.dtype() == DType::F32;
        if amx_gate && let Some(op) = self.amx_op(x, ctx, crate::amx::Epilogue::SiluTimes)? {
            return Ok(x.contiguous()?.apply_op2_no_bwd(&factor.contiguous()?, &op)?);
        }
        let gate = self.forward(x, ctx)?;
        if amx_gate && gate.device().is_cpu() && gate.dtype() == DType::F32 {
            // An adapter active in the batch: the fused pass's own SiLU and product all the same.
            return Ok(gate.contiguous()?.apply_op2_no_bwd(&factor.contiguous()?, &crate::amx::SiluTimes)?);
        }
        Ok((act.forward(&gate, ctx.mode)? * factor)?)
    }

    /// The fused AMX op for `x` (`--quant bf16` on a CPU with AMX, inference, no adapter
    /// active), else `None`.
    fn amx_op(&self, x: &Tensor, ctx: &Ctx, epilogue: crate::amx::Epilogue) -> Result<Option<crate::amx::Linear>> {
        let Weight::Bf16(Bf16Weight::Amx(p)) = &self.weight else { return Ok(None) };
        if ctx.mode != Mode::Infer || !x.device().is_cpu() || x.dtype() != DType::F32 {
            return Ok(None);
        }
        let adapters = self.adapters.read().expect("adapter lock");
        if ctx.spans.iter().any(|s| s.adapter.and_then(|a| adapters.get(a).cloned().flatten()).is_some()) {
            return Ok(None);
        }
        // The bias goes in with the product's output, not as a pass of its own.
        let bias = match &self.bias {
            Some(b) => Some(Arc::from(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
            None => None,
        };
        Ok(Some(crate::amx::Linear { weight: p.clone(), bias, epilogue, dot_rows: ctx.decode_rows }))
    }

    /// `act(x · Wᵀ + b)`: on the AMX path the activation is applied as the output is written
    /// (the tanh GELU of SigLIP's MLP); elsewhere it is a pass of its own.
    pub fn forward_act(&self, x: &Tensor, ctx: &Ctx, act: Option<Act>) -> Result<Tensor> {
        let epilogue = match act {
            Some(Act::GeluTanh) => crate::amx::Epilogue::GeluTanh,
            _ => crate::amx::Epilogue::None,
        };
        if let Some(op) = self.amx_op(x, ctx, epilogue)? {
            let y = x.contiguous()?.apply_op1_no_bwd(&op)?;
            return match act {
                Some(a) if epilogue == crate::amx::Epilogue::None => a.forward(&y, ctx.mode),
                _ => Ok(y),
            };
        }
        let adapters = self.adapters.read().expect("adapter lock");
        let active = |slot: Option<usize>| slot.and_then(|s| adapters.get(s).cloned().flatten());
        let plain = ctx.spans.iter().all(|s| active(s.adapter).is_none());
        let base = self.base(x, ctx.mode, ctx.decode_rows)?;
        let out = if plain {
            base
        } else if let [only] = ctx.spans {
            self.adapted(x, &base, &active(only.adapter).expect("checked above"), ctx.mode)?
        } else {
            let mut parts = Vec::with_capacity(ctx.spans.len());
            let mut row = 0;
            for span in ctx.spans {
                let b = base.narrow(0, row, span.rows)?;
                parts.push(match active(span.adapter) {
                    None => b,
                    Some(l) => self.adapted(&x.narrow(0, row, span.rows)?, &b, &l, ctx.mode)?,
                });
                row += span.rows;
            }
            Tensor::cat(&parts, 0)?
        };
        let out = match &self.bias {
            Some(b) => out.broadcast_add(b)?,
            None => out,
        };
        match act {
            Some(a) => a.forward(&out, ctx.mode),
            None => Ok(out),
        }
    }

    /// The adapted output, without bias, from the base output `xWᵀ`. With dropout in
    /// training, as PEFT: LoRA `xWᵀ + s·B(A(drop(x)))`; DoRA
    /// `xWᵀ + (g − 1)·drop(x)Wᵀ + g·s·B(A(drop(x)))`.
    fn adapted(&self, x: &Tensor, base: &Tensor, l: &LoraWeights, mode: Mode) -> Result<Tensor> {
        let dropped = if mode == Mode::Train { l.drop(x, &self.path)? } else { None };
        let xd = dropped.as_ref().unwrap_or(x);
        // The scale goes on the rank-r product, the smallest tensor of the chain.
        let lora = (xd.matmul(&l.a.t()?)? * l.scale)?.matmul(&l.b.t()?)?;
        match &l.magnitude {
            None => Ok((base + lora)?),
            Some(m) => {
                let g = (m / l.weight_norm(&self.weight()?, mode)?)?;
                match &dropped {
                    None => Ok((base + lora)?.broadcast_mul(&g)?),
                    Some(xd) => {
                        let base_d = self.base(xd, mode, 0)?;
                        Ok((base + base_d.broadcast_mul(&(&g - 1.0)?)? + lora.broadcast_mul(&g)?)?)
                    }
                }
            }
        }
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), kept in float32.
fn round_bf16(x: &Tensor) -> candle_core::Result<Tensor> {
    x.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// `xWᵀ` for a frozen `W` on the training path: autograd gets the input's gradient
/// (`grad · W`) and nothing else. candle's matmul backward would also compute `xᵀ · grad`, the
/// weight's gradient, and keep a `[out, in]` tensor per layer until the step ends, which
/// nothing reads. The product is computed outside the graph and handed to the op, which the
/// graph keeps with its input only. A quantized weight is dequantized again for the backward
/// pass (QLoRA's way: the full-precision tensor exists one layer at a time).
struct FrozenMatmul {
    weight: Weight,
    product: Handover,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, _x: &CpuStorage, _layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.product.take("frozen-matmul")
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight.dense()?)?))
    }
}

/// A result computed outside the autograd graph, handed to a custom op's forward pass once
/// (so the graph does not keep a second copy of it as an operand).
struct Handover(std::sync::Mutex<Option<Tensor>>);

impl Handover {
    fn new(t: Tensor) -> Handover {
        Handover(std::sync::Mutex::new(Some(t)))
    }

    fn take(&self, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(t) = self.0.lock().expect("handover").take() else { candle_core::bail!("{op}: the op ran twice") };
        let shape = t.shape().clone();
        let flat = t.flatten_all()?;
        let storage = match t.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            DType::F64 => CpuStorage::F64(flat.to_vec1()?),
            DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
            DType::F16 => CpuStorage::F16(flat.to_vec1()?),
            other => candle_core::bail!("{op}: {other:?} is not a float dtype"),
        };
        Ok((storage, shape))
    }
}

/// `[vocab, hidden]` lookup table.
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.weight.index_select(ids, 0)?)
    }
}

/// RMSNorm as transformers computes it: `w · x / sqrt(mean(x²) + eps)`.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, path: &str, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: w.get(&format!("{path}.weight"), &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Infer => Ok(crate::kernels::rms_norm(x, &self.weight, self.eps as f32)?),
            Mode::Train => {
                let dim = x.dim(D::Minus1)? as f64;
                let var = (x.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
                let normed = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
                Ok(normed.broadcast_mul(&self.weight)?)
            }
        }
    }
}

/// LayerNorm with weight and bias.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// The weights as a product's [`crate::amx::RowNorm`] takes them (float32 on the CPU).
    fn row_weights(&self) -> Result<Option<crate::amx::NormWeights>> {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !cpu_f32(&self.weight) || !cpu_f32(&self.bias) {
            return Ok(None);
        }
        Ok(Some(crate::amx::NormWeights {
            weight: self.weight.to_vec1()?,
            bias: Some(self.bias.to_vec1()?),
            eps: self.eps as f32,
        }))
    }

    pub fn load(w: &Weights, path: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: w.get(&format!("{path}.weight"), &[dim])?,
            bias: w.get(&format!("{path}.bias"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Infer => Ok(crate::kernels::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?),
            Mode::Train => {
                let dim = x.dim(D::Minus1)? as f64;
                let mean = (x.sum_keepdim(D::Minus1)? / dim)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = (centered.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
                let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
                Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
            }
        }
    }
}

/// Linear layers that read the same normalised input (a pre-norm block's q, k and v) as one
/// AMX product whose operand is normalised as it is packed ([`crate::amx::normed_linear`]):
/// the normalised rows are never written as float32 and rounded once instead of once per
/// layer. The layers' packed weights side by side are built at the first fused call.
#[derive(Default)]
pub struct FusedProjections {
    weights: OnceLock<Option<SideBySide>>,
}

/// [`FusedProjections`]' packed weights and biases side by side.
type SideBySide = (Arc<crate::amx::PackedB>, Option<Arc<[f32]>>);

impl FusedProjections {
    /// `norm(x)` through `layers`, their outputs side by side `[rows, Σ out]`; `None` where the
    /// fused product does not apply (no AMX `--quant bf16`, training, decoding rows, an adapter
    /// active, widths that are not multiples of 32): the caller runs the layers one by one.
    pub fn forward(&self, norm: &LayerNorm, layers: &[&Linear], x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        if ctx.decode_rows != 0 || layers.is_empty() {
            return Ok(None);
        }
        let mut ops = Vec::with_capacity(layers.len());
        for l in layers {
            match l.amx_op(x, ctx, crate::amx::Epilogue::None)? {
                Some(op) => ops.push(op),
                None => return Ok(None),
            }
        }
        let Some(norm) = norm.row_weights()? else { return Ok(None) };
        let fused = self.weights.get_or_init(|| {
            let parts: Vec<&crate::amx::PackedB> = ops.iter().map(|o| &*o.weight).collect();
            let weight = crate::amx::PackedB::concat(&parts)?;
            let bias = ops.iter().any(|o| o.bias.is_some()).then(|| {
                let each =
                    |o: &crate::amx::Linear| o.bias.as_deref().map_or_else(|| vec![0.0; o.weight.n], <[f32]>::to_vec);
                ops.iter().flat_map(each).collect::<Arc<[f32]>>()
            });
            Some((Arc::new(weight), bias))
        });
        let Some((weight, bias)) = fused else { return Ok(None) };
        let op = crate::amx::NormedLinear { norm, weight: weight.clone(), bias: bias.clone() };
        Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Infer => Ok(crate::kernels::softmax_last_dim(x)?),
        Mode::Train => {
            let max = x.max_keepdim(D::Minus1)?.detach();
            let e = x.broadcast_sub(&max)?.exp()?;
            Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
        }
    }
}

/// The activation functions the configs name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// Exact GELU (`gelu`, PyTorch's `nn.GELU()`).
    Gelu,
    /// `gelu_pytorch_tanh`.
    GeluTanh,
    /// `quick_gelu`: `x · σ(1.702x)`.
    QuickGelu,
}

impl Act {
    pub fn from_name(name: &str) -> Result<Act> {
        Ok(match name {
            "silu" | "swish" => Act::Silu,
            "gelu" => Act::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Act::GeluTanh,
            "quick_gelu" => Act::QuickGelu,
            other => return Err(Error::Unsupported(format!("activation function {other:?}"))),
        })
    }

    pub fn forward(self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match self {
            Act::Silu => x.silu()?,
            Act::Gelu => x.gelu_erf()?,
            Act::GeluTanh if mode == Mode::Infer => crate::kernels::gelu_tanh(x)?,
            Act::GeluTanh => x.gelu()?,
            Act::QuickGelu => (x * ((x * -1.702)?.exp()? + 1.0)?.recip()?)?,
        })
    }
}

/// Rotary embedding with the half-split rotation (`rotate_half`): `x` `[b, heads, t, d]`,
/// `cos`/`sin` `[t, d/2]` (one row of angles per position).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Infer => Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)?),
        Mode::Train => {
            let half = x.dim(D::Minus1)? / 2;
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
        }
    }
}

/// Scaled dot-product attention over `[heads, q, d]` × `[heads, k, d]`, with an additive
/// mask broadcast to `[heads, q, k]` when given.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    Ok(softmax_last(&scores, mode)?.matmul(v)?)
}

/// Causal attention for training: `q` `[groups, rep·n, d]` (the `rep` query heads that share a
/// key head, each `n` rows), `k`, `v` `[groups, total, d]`; query row `i` of a head sees keys up
/// to `total − n + i`. Autograd would keep every head's `[n, total]` scores and probabilities
/// (several copies each) until the backward pass — O(n²) per layer, tens of GiB for a batch
/// of tiled images. This is one op that keeps only its inputs and output and recomputes the
/// probabilities in its backward pass, as flash attention does.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, n: usize, scale: f64, mode: Mode) -> Result<Tensor> {
    let (groups, rows, d) = q.dims3()?;
    let total = k.dim(1)?;
    let mask = causal_mask(n, total, q.device())?.to_dtype(q.dtype())?;
    let train = mode == Mode::Train && q.device().is_cpu() && q.dtype() == DType::F32;
    if !train || !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(causal_probs(q, k, &mask, n, scale, mode)?.matmul(v)?);
    }
    // Outside the graph, so the fused kernels serve.
    let out = causal_probs(&q.detach(), &k.detach(), &mask, n, scale, Mode::Infer)?.matmul(&v.detach())?;
    debug_assert_eq!(out.dims(), [groups, rows, d]);
    let op = CausalAttention { out: Handover::new(out), mask, n, scale };
    Ok(q.apply_op3(k, v, op)?)
}

/// [`causal_attention`] for inference on AMX (`--quant bf16`): the same grouped layout, the
/// products in bfloat16 with float32 accumulation, each query row's softmax over the keys it
/// sees. `None` where AMX cannot serve (another device or dtype, no AMX).
pub fn causal_attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, n: usize, scale: f64) -> Result<Option<Tensor>> {
    if !(q.device().is_cpu() && q.dtype() == DType::F32 && crate::amx::available()) {
        return Ok(None);
    }
    Ok(Some(q.apply_op3_no_bwd(k, v, &CausalAttentionBf16 { n, scale: scale as f32 })?))
}

/// Attention for a decoding step on the CPU, every sequence of the batch at once: each adds
/// one position, whose `heads` query heads attend over that sequence's whole cache. `q`
/// `[heads, seqs, d]` (row `i`: sequence `i`), `kv[i]` its keys and values `[kv_heads, len_i,
/// d]` with contiguous rows (the cache buffers, read in place); out `[seqs, heads·d]`. One
/// parallel pass over (sequence, key head, key range), the ranges combined as flash-decoding
/// does; per sequence it replaces a score product, a softmax, a copy of the values and a value
/// product through candle (2026-12-05: those took half of a 16-sequence decoding step). `None`
/// where it cannot serve (another device or dtype).
pub fn decode_attention(q: &Tensor, kv: &[(Tensor, Tensor)], scale: f64) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !cpu_f32(q) || !kv.iter().all(|(k, v)| cpu_f32(k) && cpu_f32(v)) {
        return Ok(None);
    }
    let (heads, seqs, d) = q.dims3()?;
    if seqs != kv.len() {
        return Err(Error::Input(format!("decoding attention: {seqs} query rows for {} caches", kv.len())));
    }
    let q: Vec<f32> = q.transpose(0, 1)?.flatten_all()?.to_vec1()?;
    let guards: Vec<_> = kv.iter().map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout())).collect();
    let op = "decoding attention";
    fn cpu(s: &candle_core::Storage) -> Result<&CpuStorage> {
        match s {
            candle_core::Storage::Cpu(c) => Ok(c),
            _ => Err(Error::Input("decoding attention: a cache off the CPU".into())),
        }
    }
    // Per sequence: its key heads' keys and values, and how many query heads share each.
    let mut caches = Vec::with_capacity(seqs);
    for ((ks, kl), (vs, vl)) in &guards {
        let ([kvh, len, kd], k) = amx_view(op, cpu(ks)?, kl)?;
        let (vdims, v) = amx_view(op, cpu(vs)?, vl)?;
        if kd != d || vdims != [kvh, len, d] || kvh == 0 || heads % kvh != 0 || len == 0 {
            return Err(Error::Input(format!("{op}: q {heads}×{d}, k {:?}, v {:?}", kl.dims(), vl.dims())));
        }
        caches.push((k, v, kvh, len));
    }
    // Key ranges of a fixed size, so a sequence's numbers do not depend on the batch it is in
    // nor on the number of threads (batched output equals one-at-a-time output).
    const RANGE: usize = 256;
    let tasks: Vec<(usize, usize, std::ops::Range<usize>)> = caches
        .iter()
        .enumerate()
        .flat_map(|(i, &(_, _, kvh, len))| {
            (0..kvh).flat_map(move |g| (0..len).step_by(RANGE).map(move |a| (i, g, a..(a + RANGE).min(len))))
        })
        .collect();
    let parts: Vec<crate::kernels::Partial> = tasks
        .par_iter()
        .map(|(i, g, keys)| {
            let (k, v, kvh, _) = &caches[*i];
            let rep = heads / kvh;
            fn rows<'a>(view: &crate::amx::View<'a>, g: usize) -> crate::kernels::Rows<'a> {
                crate::kernels::Rows { data: &view.data[g * view.head_stride..], stride: view.row_stride }
            }
            let qg = &q[(i * heads + g * rep) * d..][..rep * d];
            let group = crate::kernels::Group { q: qg, d, k: rows(k, *g), v: rows(v, *g) };
            crate::kernels::attend_range(group, keys.clone(), scale as f32)
        })
        .collect();
    let mut out = vec![0f32; seqs * heads * d];
    let mut at = 0;
    for (i, &(_, _, kvh, _)) in caches.iter().enumerate() {
        let rep = heads / kvh;
        for g in 0..kvh {
            let n = tasks[at..].iter().take_while(|t| (t.0, t.1) == (i, g)).count();
            crate::kernels::combine(&parts[at..at + n], &mut out[(i * heads + g * rep) * d..][..rep * d]);
            at += n;
        }
    }
    Ok(Some(Tensor::from_vec(out, (seqs, heads * d), &candle_core::Device::Cpu)?))
}

/// An AMX attention operand `[heads, rows, d]` read where it lies: any strides with
/// contiguous rows (the projections' `[rows, heads·d]` seen per head, a KV cache's first
/// rows). `op` names the caller in errors.
fn amx_view<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<([usize; 3], crate::amx::View<'a>)> {
    match (s, l.dims(), l.stride()) {
        (CpuStorage::F32(data), &[heads, rows, d], &[head_stride, row_stride, 1]) => {
            Ok(([heads, rows, d], crate::amx::View { data: &data[l.start_offset()..], head_stride, row_stride }))
        }
        _ => candle_core::bail!("{op}: float32 [heads, rows, d] with contiguous rows only"),
    }
}

/// [`causal_attention_bf16`]'s op: `q` `[groups, rep·n, d]`, the keys and values `[groups,
/// total, d]` read in place (the KV cache's rows, no copies), out `[groups, rep·n, d]`.
struct CausalAttentionBf16 {
    n: usize,
    scale: f32,
}

impl candle_core::CustomOp3 for CausalAttentionBf16 {
    fn name(&self) -> &'static str {
        "causal-attention-bf16"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let ([groups, rows, d], q) = amx_view(op, q, ql)?;
        let (([kg, keys, kd], k), (vdims, v)) = (amx_view(op, k, kl)?, amx_view(op, v, vl)?);
        if [kg, kd] != [groups, d] || vdims != [groups, keys, d] || keys < self.n {
            candle_core::bail!("{op}: q {:?}, k {:?}, v {:?} for {} new rows", ql.dims(), kl.dims(), vl.dims(), self.n);
        }
        let mut out = vec![0f32; groups * rows * d];
        let shape = crate::amx::Heads { heads: groups, rows, keys, d };
        // Row `i` is query `i mod n` of its head, which sees the cache and the new rows up to itself.
        let visible = |i: usize| keys - self.n + i % self.n + 1;
        crate::amx::attention_into(q, k, v, shape, self.scale, visible, &mut out, (rows * d, d));
        Ok((CpuStorage::F32(out), Shape::from((groups, rows, d))))
    }
}

/// `softmax(q·kᵀ·scale + mask)` over [`causal_attention`]'s grouped rows, `[groups, rep·n, total]`;
/// candle's error type, as the op's backward pass calls it too.
fn causal_probs(
    q: &Tensor,
    k: &Tensor,
    mask: &Tensor,
    n: usize,
    scale: f64,
    mode: Mode,
) -> candle_core::Result<Tensor> {
    let (groups, rows, _) = q.dims3()?;
    let total = k.dim(1)?;
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((groups, rows / n, n, total))?;
    softmax_last(&scores.broadcast_add(mask)?, mode).map_err(candle_core::Error::wrap)?.reshape((groups, rows, total))
}

/// [`causal_attention`]'s op: the output computed outside the graph is handed over in the
/// forward pass; the backward pass recomputes `P = softmax(q·kᵀ·scale + mask)` and returns
/// `dq = dS·k·scale`, `dk = dSᵀ·q·scale`, `dv = Pᵀ·dO` with `dS = P ⊙ (dO·vᵀ − rowsum(dO ⊙ O))`.
struct CausalAttention {
    out: Handover,
    /// `[n, total]`
    mask: Tensor,
    n: usize,
    scale: f64,
}

impl candle_core::CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        _q: &CpuStorage,
        _ql: &Layout,
        _k: &CpuStorage,
        _kl: &Layout,
        _v: &CpuStorage,
        _vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.out.take("causal-attention")
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, out, grad) = (q.detach(), k.detach(), v.detach(), out.detach(), grad.detach());
        let p = causal_probs(&q, &k, &self.mask, self.n, self.scale, Mode::Infer)?;
        let dv = p.t()?.matmul(&grad)?;
        let dp = grad.matmul(&v.t()?)?;
        let delta = (&grad * &out)?.sum_keepdim(D::Minus1)?;
        let ds = (p * dp.broadcast_sub(&delta)?)?;
        let dq = (ds.matmul(&k)? * self.scale)?;
        let dk = (ds.t()?.matmul(&q)? * self.scale)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Non-causal attention within each segment of `lens` rows (one image, one window): `q`,
/// `k`, `v` are `[heads, rows, d]`; returns `[rows, heads·d]`.
pub fn segment_attention(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], scale: f64, ctx: &Ctx) -> Result<Tensor> {
    let (heads, _, d) = q.dims3()?;
    let mode = ctx.mode;
    // Inference on the CPU: one op over every segment, reading the operands where they lie.
    let rows_contiguous = |t: &Tensor| t.stride().last() == Some(&1);
    if mode == Mode::Infer
        && q.device().is_cpu()
        && q.dtype() == DType::F32
        && [q, k, v].into_iter().all(rows_contiguous)
    {
        let (lens, scale) = (lens.to_vec(), scale as f32);
        return Ok(if ctx.bf16 && crate::amx::available() {
            q.apply_op3_no_bwd(k, v, &SegmentAttentionBf16 { lens, scale })?
        } else {
            q.apply_op3_no_bwd(k, v, &SegmentAttentionF32 { lens, scale })?
        });
    }
    let (q, k) = (q.contiguous()?, k.contiguous()?);
    let mut outs = Vec::with_capacity(lens.len());
    let mut start = 0;
    for &n in lens {
        if n == 0 {
            continue;
        }
        let o = attention(
            &q.narrow(1, start, n)?,
            &k.narrow(1, start, n)?,
            &v.narrow(1, start, n)?.contiguous()?,
            scale,
            None,
            mode,
        )?;
        outs.push(o.transpose(0, 1)?.reshape((n, heads * d))?);
        start += n;
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// The `q`, `k`, `v` operands of a segment attention op, `[heads, rows, d]` each, read where they
/// lie; `lens` must cover the rows.
fn segment_views<'a>(
    op: &str,
    lens: &[usize],
    qkv: [(&'a CpuStorage, &Layout); 3],
) -> candle_core::Result<([usize; 3], [crate::amx::View<'a>; 3])> {
    let [(q, ql), (k, kl), (v, vl)] = qkv;
    let ((dims, q), (kdims, k), (vdims, v)) = (amx_view(op, q, ql)?, amx_view(op, k, kl)?, amx_view(op, v, vl)?);
    let [heads, rows, d] = dims;
    if kdims != dims || vdims != dims || ![&q, &k, &v].iter().all(|x| x.covers(heads, rows, d)) {
        candle_core::bail!("{op}: q {:?}, k {:?}, v {:?}", ql.dims(), kl.dims(), vl.dims());
    }
    if lens.iter().sum::<usize>() != rows {
        candle_core::bail!("{op}: segments of {} rows for {rows}", lens.iter().sum::<usize>());
    }
    Ok((dims, [q, k, v]))
}

/// [`segment_attention`] on AMX, one op over every segment: it reads `q`, `k`, `v` `[heads,
/// rows, d]` where they lie (any strides with contiguous rows, such as the projections'
/// `[rows, heads·d]` seen per head) and writes `[rows, heads·d]`, the layout the output
/// projection takes, with no copies or concatenation around it.
struct SegmentAttentionBf16 {
    lens: Vec<usize>,
    scale: f32,
}

impl candle_core::CustomOp3 for SegmentAttentionBf16 {
    fn name(&self) -> &'static str {
        "segment-attention-bf16"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ([heads, rows, d], [q, k, v]) = segment_views(self.name(), &self.lens, [(q, ql), (k, kl), (v, vl)])?;
        let width = heads * d;
        let mut out = vec![0f32; rows * width];
        let mut start = 0;
        for &n in self.lens.iter().filter(|&&n| n > 0) {
            let (qs, ks, vs) = (q.skip_rows(start), k.skip_rows(start), v.skip_rows(start));
            let shape = crate::amx::Heads { heads, rows: n, keys: n, d };
            let dst = &mut out[start * width..(start + n) * width];
            crate::amx::attention_into(qs, ks, vs, shape, self.scale, |_| n, dst, (d, width));
            start += n;
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }
}

/// [`segment_attention`] in float32 on the CPU, one op over every segment, blocked as flash
/// attention is: per (segment, 64 query rows) and head, the scores `scale·q·kᵀ`, their softmax
/// and the product with the values pass through two reused `64 × n` buffers that stay in cache,
/// where candle's ops would write each head's `n × n` scores to fresh memory three times, zeroing
/// it first (2026-12-05: 19% of a SmolVLM image in f32 was zeroing and softmax passes). Reads `q`,
/// `k`, `v` `[heads, rows, d]` where they lie, writes `[rows, heads·d]`.
struct SegmentAttentionF32 {
    lens: Vec<usize>,
    scale: f32,
}

impl candle_core::CustomOp3 for SegmentAttentionF32 {
    fn name(&self) -> &'static str {
        "segment-attention-f32"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        const BLOCK: usize = 64;
        let ([heads, rows, d], [q, k, v]) = segment_views(self.name(), &self.lens, [(q, ql), (k, kl), (v, vl)])?;
        let width = heads * d;
        let mut out = vec![0f32; rows * width];
        // Tasks of up to 64 query rows within one segment, each with its own rows of `out`.
        let mut tasks = Vec::new();
        let mut rest = out.as_mut_slice();
        let mut start = 0;
        for &n in &self.lens {
            for r0 in (0..n).step_by(BLOCK) {
                let bm = BLOCK.min(n - r0);
                let (mine, later) = std::mem::take(&mut rest).split_at_mut(bm * width);
                tasks.push((start, n, start + r0, bm, mine));
                rest = later;
            }
            start += n;
        }
        let scale = self.scale;
        tasks.into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, probs): &mut (Vec<f32>, Vec<f32>), (seg, n, r0, bm, dst)| {
                scores.resize(bm * n, 0.0);
                probs.resize(bm * n, 0.0);
                for h in 0..heads {
                    let (qh, kh, vh) = (h * q.head_stride, h * k.head_stride, h * v.head_stride);
                    let q0 = &q.data[qh + r0 * q.row_stride..];
                    let (k0, v0) = (&k.data[kh + seg * k.row_stride..], &v.data[vh + seg * v.row_stride..]);
                    let (kt, vr) = ((k0, 1, k.row_stride), (v0, v.row_stride, 1));
                    // scores (bm × n) = scale · q (bm × d) · kᵀ (d × n)
                    product(bm, n, d, (scores, n), (q0, q.row_stride, 1), kt, scale);
                    for (s, p) in scores.chunks(n).zip(probs.chunks_mut(n)) {
                        crate::kernels::softmax_chunk(s, p, 1.0);
                    }
                    // out (bm × d) = probs (bm × n) · v (n × d), columns h·d.. of the task's rows
                    product(bm, d, n, (&mut dst[h * d..], width), (probs, n, 1), vr, 1.0);
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }
}

/// `dst = scale · a · b` on this thread (the gemm crate, candle's own f32 kernels): `a` is
/// `m × k`, `b` `k × n`, each given as (data, row stride, column stride); `dst` `m × n` as (data,
/// row stride) with contiguous rows.
fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: (&mut [f32], usize),
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    scale: f32,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        last(m, n, dst.1, 1) < dst.0.len() && last(m, k, a.1, a.2) < a.0.len() && last(k, n, b.1, b.2) < b.0.len(),
        "product operands"
    );
    // SAFETY: the assertion above keeps every element the product reads or writes inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0.as_mut_ptr(),
            1,
            dst.1 as isize,
            false,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The additive causal mask of `q` new positions at the end of `k` keys: `[q, k]`.
pub fn causal_mask(q: usize, k: usize, device: &candle_core::Device) -> Result<Tensor> {
    let offset = k - q;
    let data: Vec<f32> =
        (0..q).flat_map(|i| (0..k).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(data, (q, k), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The float32 segment attention (blocked, operands read where they lie: the projections'
    /// `[rows, heads·d]` seen per head) equals softmax(q·kᵀ)·v per segment through candle's ops,
    /// over segments shorter and longer than its 64-row blocks.
    #[test]
    fn float32_segment_attention_matches_candle_ops() {
        let (heads, d, lens) = (3, 40, [5usize, 71, 130]);
        let rows: usize = lens.iter().sum();
        let scale = 1.0 / (d as f64).sqrt();
        let view = |seed| rand(&[rows, heads, d], seed).transpose(0, 1).unwrap();
        let (q, k, v) = (view(1), view(2), view(3));
        let got = segment_attention(&q, &k, &v, &lens, scale, &Ctx::infer()).unwrap();
        assert_eq!(got.dims(), [rows, heads * d]);
        let mut start = 0;
        for n in lens {
            let part = |t: &Tensor| t.narrow(1, start, n).unwrap().contiguous().unwrap();
            let want = attention(&part(&q), &part(&k), &part(&v), scale, None, Mode::Train).unwrap();
            let want = want.transpose(0, 1).unwrap().reshape((n, heads * d)).unwrap();
            let diff = max_diff(&got.narrow(0, start, n).unwrap(), &want);
            assert!(diff < 1e-5, "segment of {n} rows: max |Δ| {diff}");
            start += n;
        }
    }

    /// A decoding step's attention for several sequences at once (grouped heads, caches of
    /// different lengths read in place from buffers with room to spare, key ranges split and
    /// combined) equals each sequence's softmax(q·kᵀ)·v through candle's ops.
    #[test]
    fn decoding_attention_matches_each_sequence_alone() {
        let (heads, kvh, d) = (6, 2, 40);
        let rep = heads / kvh;
        let lens = [1usize, 7, 300, 700];
        let scale = 1.0 / (d as f64).sqrt();
        let q = rand(&[heads, lens.len(), d], 1);
        let kvs: Vec<(Tensor, Tensor)> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let cap = len.next_power_of_two() + 16;
                let k = rand(&[kvh, cap, d], 10 + i as u64).narrow(1, 0, len).unwrap();
                let v = rand(&[kvh, cap, d], 20 + i as u64).narrow(1, 0, len).unwrap();
                (k, v)
            })
            .collect();
        // A sequence's rows do not depend on the batch it is in, nor where it sits there.
        {
            let q2 = Tensor::cat(&[q.narrow(1, 2, 2).unwrap(), q.narrow(1, 2, 1).unwrap()], 1).unwrap();
            let kv2 = [kvs[2].clone(), kvs[3].clone(), kvs[2].clone()];
            let got = decode_attention(&q2, &kv2, scale).unwrap().unwrap();
            let (a, b) = (got.narrow(0, 0, 1).unwrap(), got.narrow(0, 2, 1).unwrap());
            assert_eq!(max_diff(&a, &b), 0.0);
            let alone = decode_attention(&q.narrow(1, 2, 1).unwrap(), &kvs[2..3], scale).unwrap().unwrap();
            assert_eq!(max_diff(&a, &alone), 0.0);
        }
        // All four at once, then the longest alone.
        for (q, kvs, lens) in [(q.clone(), &kvs[..], &lens[..]), (q.narrow(1, 3, 1).unwrap(), &kvs[3..], &lens[3..])] {
            let got = decode_attention(&q, kvs, scale).unwrap().expect("CPU float32");
            assert_eq!(got.dims(), [lens.len(), heads * d]);
            for (i, (k, v)) in kvs.iter().enumerate() {
                let qi = q.narrow(1, i, 1).unwrap().contiguous().unwrap().reshape((kvh, rep, d)).unwrap();
                let want = attention(&qi, k, &v.contiguous().unwrap(), scale, None, Mode::Infer).unwrap();
                let want = want.reshape((1, heads * d)).unwrap();
                let diff = max_diff(&got.narrow(0, i, 1).unwrap(), &want);
                assert!(diff < 1e-5, "sequence {i} ({} keys): max |Δ| {diff}", lens[i]);
            }
        }
    }

    /// The attention op that recomputes its probabilities in the backward pass gives autograd's
    /// output and gradients (grouped heads, keys before the queries' own rows).
    #[test]
    fn causal_attention_matches_autograd() {
        use candle_core::Var;
        let (groups, rep, n, total, d) = (2, 3, 5, 7, 4);
        let q = Var::from_tensor(&rand(&[groups, rep * n, d], 3)).unwrap();
        let k = Var::from_tensor(&rand(&[groups, total, d], 4)).unwrap();
        let v = Var::from_tensor(&rand(&[groups, total, d], 5)).unwrap();
        let w = rand(&[groups, rep * n, d], 6);
        let fused = causal_attention(&q, &k, &v, n, 0.5, Mode::Train).unwrap();
        let plain = {
            let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.5).unwrap().reshape((groups, rep, n, total)).unwrap();
            let mask = causal_mask(n, total, &Device::Cpu).unwrap();
            let p = softmax_last(&scores.broadcast_add(&mask).unwrap(), Mode::Train).unwrap();
            p.reshape((groups, rep * n, total)).unwrap().matmul(&v).unwrap()
        };
        assert!(max_diff(&fused, &plain) < 1e-6);
        let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (gf.get(t.as_tensor()).unwrap(), gp.get(t.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-5, "d{name}: {}", max_diff(a, b));
        }
        // Inference takes the same numbers without the op.
        let infer = causal_attention(
            &q.as_tensor().detach(),
            &k.as_tensor().detach(),
            &v.as_tensor().detach(),
            n,
            0.5,
            Mode::Infer,
        )
        .unwrap();
        assert!(max_diff(&infer, &plain) < 1e-6);
    }

    /// The fused inference kernels and the differentiable training ops agree.
    #[test]
    fn fused_and_differentiable_paths_agree() {
        let x = rand(&[5, 16], 1);
        let w = rand(&[16], 2);
        let b = rand(&[16], 3);
        let rms = RmsNorm { weight: w.clone(), eps: 1e-6 };
        assert!(max_diff(&rms.forward(&x, Mode::Infer).unwrap(), &rms.forward(&x, Mode::Train).unwrap()) < 1e-5);
        let ln = LayerNorm { weight: w, bias: b, eps: 1e-6 };
        assert!(max_diff(&ln.forward(&x, Mode::Infer).unwrap(), &ln.forward(&x, Mode::Train).unwrap()) < 1e-5);
        assert!(max_diff(&softmax_last(&x, Mode::Infer).unwrap(), &softmax_last(&x, Mode::Train).unwrap()) < 1e-6);
        let q = rand(&[1, 2, 5, 8], 4);
        let cos = rand(&[5, 4], 5).cos().unwrap();
        let sin = rand(&[5, 4], 5).sin().unwrap();
        assert!(
            max_diff(&rope(&q, &cos, &sin, Mode::Infer).unwrap(), &rope(&q, &cos, &sin, Mode::Train).unwrap()) < 1e-5
        );
    }

    /// Gradients flow through the training path of every op (no silent stop).
    #[test]
    fn the_training_path_has_gradients() {
        let x = candle_core::Var::from_tensor(&rand(&[3, 8], 7)).unwrap();
        let rms = RmsNorm { weight: rand(&[8], 8), eps: 1e-6 };
        let ln = LayerNorm { weight: rand(&[8], 9), bias: rand(&[8], 10), eps: 1e-6 };
        let cos = rand(&[3, 4], 11);
        let sin = rand(&[3, 4], 12);
        let y = rms.forward(x.as_tensor(), Mode::Train).unwrap();
        let y = ln.forward(&y, Mode::Train).unwrap();
        let y = softmax_last(&y, Mode::Train).unwrap();
        let y = rope(&y.reshape((1, 1, 3, 8)).unwrap(), &cos, &sin, Mode::Train).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("x has a gradient");
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }

    /// On the training path a frozen weight gets no gradient, and no tensor of its size is
    /// kept: the input's and the adapter's gradients equal those of a plain matmul.
    #[test]
    fn frozen_weights_hold_no_gradient() {
        let (rows, inp, out) = (3, 7, 5);
        let w = rand(&[out, inp], 30);
        let x = candle_core::Var::from_tensor(&rand(&[rows, inp], 31)).unwrap();
        let a = candle_core::Var::from_tensor(&rand(&[2, inp], 32)).unwrap();
        let b = candle_core::Var::from_tensor(&rand(&[out, 2], 33)).unwrap();
        let lin = Linear::new("m.q_proj", w.clone(), None);
        let lora = LoraWeights::new(a.as_tensor().clone(), b.as_tensor().clone(), 2.0, None);
        lin.set_adapter(0, Some(Arc::new(lora)));
        let spans = [Span { rows, adapter: Some(0) }];
        let y = lin.forward(x.as_tensor(), &Ctx { mode: Mode::Train, spans: &spans, ..Ctx::infer() }).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let weight_sized =
            grads.get_ids().filter(|id| grads.get_id(**id).is_some_and(|g| g.elem_count() == out * inp)).count();
        assert_eq!(weight_sized, 0, "a weight-sized gradient was kept");
        let sizes: Vec<usize> = [x.as_tensor(), a.as_tensor(), b.as_tensor()]
            .iter()
            .map(|t| grads.get(t).expect("a variable's gradient").elem_count())
            .collect();
        assert_eq!(sizes, [rows * inp, 2 * inp, out * 2]);
        // The same gradients as candle's own matmul, which keeps one for the frozen weight.
        let plain = (x.as_tensor().matmul(&w.t().unwrap()).unwrap()
            + (x.as_tensor()
                .matmul(&a.as_tensor().t().unwrap())
                .unwrap()
                .matmul(&b.as_tensor().t().unwrap())
                .unwrap()
                * 2.0)
                .unwrap())
        .unwrap();
        let want = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let plain_sized =
            want.get_ids().filter(|id| want.get_id(**id).is_some_and(|g| g.elem_count() == out * inp)).count();
        assert_eq!(plain_sized, 1, "candle's matmul keeps the frozen weight's gradient");
        for t in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
            assert!(max_diff(grads.get(t).unwrap(), want.get(t).unwrap()) < 1e-4);
        }
    }

    #[test]
    fn lora_and_dora_follow_peft_and_merge_to_the_same_output() {
        let x = rand(&[4, 6], 20);
        let w = rand(&[5, 6], 21);
        let bias = rand(&[5], 22);
        let a = rand(&[2, 6], 23);
        let b = rand(&[5, 2], 24);
        for magnitude in [None, Some(rand(&[5], 25).abs().unwrap())] {
            let mut lin = Linear::new("m.q_proj", w.clone(), Some(bias.clone()));
            lin.set_adapter(0, Some(Arc::new(LoraWeights::new(a.clone(), b.clone(), 4.0, magnitude.clone()))));
            let spans = [Span { rows: 4, adapter: Some(0) }];
            let ctx = Ctx { spans: &spans, ..Ctx::infer() };
            let y = lin.forward(&x, &ctx).unwrap();
            // By hand: W' = W + s·BA; LoRA: xW'ᵀ + b; DoRA: (m/‖W'‖) ⊙ xW'ᵀ + b.
            let wp = (&w + (b.matmul(&a).unwrap() * 4.0).unwrap()).unwrap();
            let mut want = x.matmul(&wp.t().unwrap()).unwrap();
            if let Some(m) = &magnitude {
                let norm = wp.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
                want = want.broadcast_mul(&(m / norm).unwrap()).unwrap();
            }
            let want = want.broadcast_add(&bias).unwrap();
            assert!(max_diff(&y, &want) < 1e-4, "{magnitude:?}");
            // Mixed spans: the base rows are untouched.
            let spans = [Span { rows: 2, adapter: None }, Span { rows: 2, adapter: Some(0) }];
            let mixed = lin.forward(&x, &Ctx { spans: &spans, ..Ctx::infer() }).unwrap();
            let base = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
            assert!(max_diff(&mixed.narrow(0, 0, 2).unwrap(), &base.narrow(0, 0, 2).unwrap()) < 1e-5);
            assert!(max_diff(&mixed.narrow(0, 2, 2).unwrap(), &want.narrow(0, 2, 2).unwrap()) < 1e-4);
            lin.merge_adapter(0).unwrap();
            let merged = lin.forward(&x, &Ctx::infer()).unwrap();
            assert!(max_diff(&merged, &want) < 1e-4);
        }
    }

    #[test]
    fn causal_masks_let_each_query_see_its_past() {
        let m = causal_mask(2, 4, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0], [0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], [0.0; 4]);
    }

    /// `--quant bf16`: the AMX layer equals candle's matmul on the same rounded operands (the
    /// fallback of CPUs without AMX), for a ragged shape, and stays within bfloat16's rounding
    /// of the float32 layer.
    #[test]
    fn bf16_linear_equals_its_emulation_and_stays_near_f32() {
        let (w, b, x) = (rand(&[70, 45], 1), rand(&[70], 2), rand(&[33, 45], 3));
        let full = Linear::new("l", w.clone(), Some(b.clone()));
        let mut fast = Linear::new("l", w.clone(), Some(b.clone()));
        fast.to_bf16().unwrap();
        assert_eq!(fast.quant_format(), Some(GgmlDType::BF16));
        let emulated = Linear {
            weight: Weight::Bf16(Bf16Weight::Emulated(round_bf16(&w).unwrap())),
            ..Linear::new("l", w.clone(), Some(b))
        };
        let ctx = Ctx::infer();
        let (y_fast, y_emu, y_f32) =
            (fast.forward(&x, &ctx).unwrap(), emulated.forward(&x, &ctx).unwrap(), full.forward(&x, &ctx).unwrap());
        if crate::amx::available() {
            assert!(matches!(fast.weight, Weight::Bf16(Bf16Weight::Amx(_))));
        }
        assert!(max_diff(&y_fast, &y_emu) < 2e-5, "AMX against emulation: {}", max_diff(&y_fast, &y_emu));
        // |x|, |w| ≤ 2 over 45 terms: rounding both (2^-9 relative each) moves a sum by < 0.7.
        let d = max_diff(&y_fast, &y_f32);
        assert!(d > 0.0 && d < 0.7, "bf16 against f32: {d}");
        // GELU applied as the AMX output is written equals GELU as a pass of its own.
        let fused = fast.forward_act(&x, &ctx, Some(Act::GeluTanh)).unwrap();
        let apart = Act::GeluTanh.forward(&y_fast, Mode::Infer).unwrap();
        assert!(max_diff(&fused, &apart) < 1e-6, "fused GELU: {}", max_diff(&fused, &apart));
        // So does the residual connection.
        let r = rand(&[33, 70], 4);
        let summed = fast.forward_residual(&x, &ctx, &r).unwrap();
        assert!(max_diff(&summed, &(&r + &y_fast).unwrap()) < 1e-6);
        // The weight reads back as its rounded values.
        assert_eq!(max_diff(&fast.weight().unwrap(), &round_bf16(&w).unwrap()), 0.0);
    }

    /// What the AMX attention rounds: `e^(s − max s)` per row, unnormalised, and the rows' sums.
    fn unnormalised_probs(scores: &Tensor) -> (Tensor, Tensor) {
        let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
        let sum = e.sum_keepdim(D::Minus1).unwrap();
        (e, sum)
    }

    /// The vision towers' attention with `bf16`: AMX products of rounded q·kᵀ and rounded
    /// exponentials · v, divided by the exponentials' sums, against the same rounding done
    /// with candle's ops, over two segments, after a NaN call has left its buffers behind
    /// (fails when a query row's padding is not rewritten: checked).
    #[test]
    fn bf16_segment_attention_equals_its_emulation() {
        let (heads, d, lens) = (3, 20, [37usize, 50]);
        let n: usize = lens.iter().sum();
        let (q, k, v) = (rand(&[heads, n, d], 4), rand(&[heads, n, d], 5), rand(&[heads, n, d], 6));
        let scale = 1.0 / (d as f64).sqrt();
        let ctx = Ctx { bf16: true, ..Ctx::infer() };
        // NaN operands, wider and longer, first: the buffers the op keeps for the next call
        // hold NaN where this one's padding lies.
        let nan = Tensor::full(f32::NAN, (heads, 2 * n, 2 * d + 8), &Device::Cpu).unwrap();
        segment_attention(&nan, &nan, &nan, &[2 * n], scale, &ctx).unwrap();
        let got = segment_attention(&q, &k, &v, &lens, scale, &ctx).unwrap();
        let mut want = Vec::new();
        let mut start = 0;
        for n in lens {
            let part = |t: &Tensor| round_bf16(&t.narrow(1, start, n).unwrap().contiguous().unwrap()).unwrap();
            let scores = (part(&q).matmul(&part(&k).t().unwrap()).unwrap() * scale).unwrap();
            let (e, sum) = unnormalised_probs(&scores);
            let o = round_bf16(&e).unwrap().matmul(&part(&v)).unwrap().broadcast_div(&sum).unwrap();
            want.push(o.transpose(0, 1).unwrap().reshape((n, heads * d)).unwrap());
            start += n;
        }
        let want = Tensor::cat(&want, 0).unwrap();
        let f32_out = segment_attention(&q, &k, &v, &lens, scale, &Ctx::infer()).unwrap();
        if crate::amx::available() {
            // Scores summed in another order differ in their last bit, so a probability on a
            // bfloat16 rounding boundary can round one step (2^-8 relative) the other way.
            assert!(max_diff(&got, &want) < 1e-3, "AMX against emulation: {}", max_diff(&got, &want));
        } else {
            // Without AMX the flag is ignored: float32 attention.
            assert_eq!(max_diff(&got, &f32_out), 0.0);
        }
        assert!(max_diff(&want, &f32_out) < 0.05, "bf16 against f32: {}", max_diff(&want, &f32_out));
        // The same operands where the towers leave them, read in place: q and k as the
        // projections' `[rows, heads·d]` seen per head (SigLIP), v a slice of a fused
        // `[rows, 3, heads, d]` (Qwen's qkv).
        let per_head = |t: &Tensor| t.transpose(0, 1).unwrap().contiguous().unwrap().reshape((n, heads, d)).unwrap();
        let (qs, ks) = (per_head(&q).transpose(0, 1).unwrap(), per_head(&k).transpose(0, 1).unwrap());
        let fused = Tensor::stack(&[per_head(&k), per_head(&q), per_head(&v)], 1).unwrap();
        let vs = fused.narrow(1, 2, 1).unwrap().squeeze(1).unwrap().transpose(0, 1).unwrap();
        assert!(!qs.is_contiguous() && !vs.is_contiguous());
        let strided = segment_attention(&qs, &ks, &vs, &lens, scale, &ctx).unwrap();
        assert_eq!(max_diff(&strided, &got), 0.0, "strided operands");
    }

    /// Prefill's causal attention on AMX: grouped heads (`rep` query heads per key head),
    /// cached keys before the new rows, against the same rounding with candle's ops and the
    /// causal mask. Wide enough (`d` over 32, keys over 64) that early row blocks see only
    /// some of the value panels' k steps while later ones see all.
    #[test]
    fn bf16_causal_attention_equals_its_emulation() {
        let (groups, rep, n, total, d) = (2, 3, 100, 120, 40);
        let (q, k, v) = (rand(&[groups, rep * n, d], 7), rand(&[groups, total, d], 8), rand(&[groups, total, d], 9));
        let scale = 0.25;
        let Some(got) = causal_attention_bf16(&q, &k, &v, n, scale).unwrap() else {
            assert!(!crate::amx::available());
            return;
        };
        let r = |t: &Tensor| round_bf16(t).unwrap();
        let scores =
            (r(&q).matmul(&r(&k).t().unwrap()).unwrap() * scale).unwrap().reshape((groups, rep, n, total)).unwrap();
        let mask = causal_mask(n, total, &Device::Cpu).unwrap();
        let (e, sum) = unnormalised_probs(&scores.broadcast_add(&mask).unwrap());
        let flat = |t: &Tensor| t.reshape((groups, rep * n, ())).unwrap();
        let want = flat(&r(&e)).matmul(&r(&v)).unwrap().broadcast_div(&flat(&sum)).unwrap();
        assert!(max_diff(&got, &want) < 1e-3, "AMX against emulation: {}", max_diff(&got, &want));
        let f32_out = causal_attention(&q, &k, &v, n, scale, Mode::Infer).unwrap();
        assert!(max_diff(&got, &f32_out) < 0.05, "bf16 against f32: {}", max_diff(&got, &f32_out));
        // Keys and values read where the KV cache keeps them: the first rows of a larger buffer.
        let cached =
            |t: &Tensor| Tensor::cat(&[t, &rand(&[groups, 19, d], 10)], 1).unwrap().narrow(1, 0, total).unwrap();
        let (kc, vc) = (cached(&k), cached(&v));
        assert!(!kc.is_contiguous());
        let strided = causal_attention_bf16(&q, &kc, &vc, n, scale).unwrap().unwrap();
        assert_eq!(max_diff(&strided, &got), 0.0, "cache-strided keys and values");
    }
}
