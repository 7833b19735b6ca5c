//! CPU kernels where profiling showed candle's generic element-wise loops to cost more than
//! they should (docs/benchmarks.md): the tanh-form GELU (glibc's scalar `tanhf`/`expm1f`
//! took 10% of a SmolVLM image), softmax over the last dimension (scalar `expf`, 8%) and
//! LayerNorm / RMSNorm (a serial sum per row, 3%).
//!
//! All run on contiguous float32 CPU tensors, row-parallel, with an exp that the compiler
//! vectorises (AVX-512 or AVX2 + FMA when the CPU has them, checked at run time); any other device,
//! dtype or layout goes to candle's own op. The exp is Cephes' single-precision polynomial
//! (≈ 1 ulp), so results agree with the libm path to ~1e-7 relative. Inference only: the
//! training path ([`crate::nn::Mode::Train`]) uses plain differentiable ops.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `e^x`, branch-free (Cephes `expf`); `x` below −87 gives exactly 0 (masked scores).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let xc = x.clamp(-87.0, 88.376_26);
    let fx = (xc * LOG2E + 0.5).floor();
    let r = xc - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let y = p * z + r + 1.0;
    // 2^fx from the float itself: fx + 127 is an integer in [2, 255], and adding 2^23 puts it
    // in the low mantissa bits, which the shift moves into the exponent. (`fx as i32` would be
    // a saturating conversion, which LLVM does one lane at a time.)
    let scale = f32::from_bits((fx + (127.0 + 8_388_608.0)).to_bits() << 23);
    if x < -87.0 { 0.0 } else { y * scale }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
fn gelu_slice(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        // 0.5·x·(1 + tanh(u)) = x / (1 + e^(−2u))
        let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        *d = x / (1.0 + exp(-2.0 * u));
    }
}

/// Sixteen running lanes (one AVX-512 register, two AVX2 ones), so float reductions vectorise
/// (their order differs from a serial loop's by rounding only).
#[inline(always)]
fn lanes(src: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = src.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    let mut r = acc.iter().copied().fold(init, &f);
    for &x in rest {
        r = f(r, x);
    }
    r
}

/// `Σ g(x)` over `src` on sixteen running lanes (see [`lanes`]).
#[inline(always)]
fn sum_lanes(src: &[f32], g: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = src.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += g(c[i]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&x| g(x)).sum::<f32>()
}

/// One row of LayerNorm, `(x − mean) / sqrt(var + eps) · w + b`, the variance from the
/// centred values in a second pass as PyTorch computes it (one pass of `Σx²/n − mean²` loses
/// digits when the mean is large against the spread: residual streams).
#[inline(always)]
fn layer_norm_row(src: &[f32], w: &[f32], b: &[f32], eps: f32, dst: &mut [MaybeUninit<f32>]) {
    let n = src.len() as f32;
    let mean = sum_lanes(src, |x| x) / n;
    let var = sum_lanes(src, |x| (x - mean) * (x - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((d, &x), &w), &b) in dst.iter_mut().zip(src).zip(w).zip(b) {
        d.write((x - mean) * inv * w + b);
    }
}

/// One row of RMSNorm, `x / sqrt(mean(x²) + eps) · w`.
#[inline(always)]
fn rms_norm_row(src: &[f32], w: &[f32], eps: f32, dst: &mut [MaybeUninit<f32>]) {
    let inv = 1.0 / (sum_lanes(src, |x| x * x) / src.len() as f32 + eps).sqrt();
    for ((d, &x), &w) in dst.iter_mut().zip(src).zip(w) {
        d.write(x * inv * w);
    }
}

/// [`layer_norm_row`] (with a bias) or [`rms_norm_row`] (without) over each `w.len()`-wide row
/// of `src`, every value of `dst` written.
#[inline(always)]
fn norm_rows(src: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, dst: &mut [MaybeUninit<f32>]) {
    for (s, d) in src.chunks_exact(w.len()).zip(dst.chunks_exact_mut(w.len())) {
        match b {
            Some(b) => layer_norm_row(s, w, b, eps, d),
            None => rms_norm_row(s, w, eps, d),
        }
    }
}

#[inline(always)]
fn softmax_row(src: &[f32], dst: &mut [f32], scale: f32) {
    let max = lanes(src, f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    let max = if max.is_finite() { max } else { 0.0 };
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = exp((x - max) * scale);
    }
    let inv = 1.0 / lanes(dst, 0.0, |a, b| a + b);
    for d in dst.iter_mut() {
        *d *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(src: &[f32], dst: &mut [f32]) {
    gelu_slice(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(src: &[f32], dst: &mut [f32], scale: f32) {
    softmax_row(src, dst, scale)
}

/// [`exp`] on 16 lanes, the same steps in AVX-512 instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.376_26));
    let t = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(0.5));
    let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
    let r = _mm512_sub_ps(
        _mm512_sub_ps(xc, _mm512_mul_ps(fx, _mm512_set1_ps(0.693_359_4))),
        _mm512_mul_ps(fx, _mm512_set1_ps(-2.121_944_4e-4)),
    );
    let z = _mm512_mul_ps(r, r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0));
    let y = _mm512_scalef_ps(y, fx);
    // Below −87: exactly 0 (masked scores).
    let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.0));
    _mm512_mask_blend_ps(low, y, _mm512_setzero_ps())
}

/// GELU on 16 lanes: `x / (1 + e^(−2u))` with the division as a 14-bit reciprocal and one
/// Newton step (a 16-lane division costs more than the whole exp).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_avx512(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 ≤ n` floats remain in `src` and `dst`.
        unsafe {
            let x = _mm512_loadu_ps(src.as_ptr().add(i));
            // The scalar path's order of operations: the argument of exp is large where x is
            // (−2u ≈ 58 at x = −8.6), so its rounding shows in the result.
            let c3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.044_715), x), x), x);
            let u = _mm512_mul_ps(_mm512_set1_ps(SQRT_2_OVER_PI), _mm512_add_ps(x, c3));
            let den = _mm512_add_ps(_mm512_set1_ps(1.0), exp512(_mm512_mul_ps(_mm512_set1_ps(-2.0), u)));
            let r = _mm512_rcp14_ps(den);
            let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(1.0)), r);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_mul_ps(x, r));
        }
        i += 16;
    }
    gelu_slice(&src[i..n], &mut dst[i..n])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_avx512(src: &[f32], dst: &mut [f32], scale: f32) {
    softmax_row(src, dst, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn norm_rows_avx2(src: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, dst: &mut [MaybeUninit<f32>]) {
    norm_rows(src, w, b, eps, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn norm_rows_avx512(src: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, dst: &mut [MaybeUninit<f32>]) {
    norm_rows(src, w, b, eps, dst)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::is_x86_feature_detected!("avx512f") && has_avx2())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The tanh-form GELU of `src` into `dst`.
pub(crate) fn gelu_chunk(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked above).
        return unsafe { gelu_avx512(src, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { gelu_avx2(src, dst) };
    }
    gelu_slice(src, dst)
}

/// `softmax(scale · src)` of one row into `dst` (`scale > 0`).
pub(crate) fn softmax_chunk(src: &[f32], dst: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked above).
        return unsafe { softmax_avx512(src, dst, scale) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { softmax_avx2(src, dst, scale) };
    }
    softmax_row(src, dst, scale)
}

/// LayerNorm (with `b`) or RMSNorm of whole rows of `src` into `dst` (as long), the numbers of
/// [`layer_norm`] / [`rms_norm`] to the bit: for a product that packs its normalised operand
/// itself ([`crate::amx`]).
pub(crate) fn norm_rows_into(src: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, dst: &mut [f32]) {
    assert!(
        src.len() == dst.len() && src.len().is_multiple_of(w.len().max(1)),
        "rows of {} for {}",
        w.len(),
        src.len()
    );
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and every value written is a float.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    norm_chunk(src, w, b, eps, dst)
}

/// [`norm_rows`] on the widest vectors the CPU has.
fn norm_chunk(src: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked above).
        return unsafe { norm_rows_avx512(src, w, b, eps, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { norm_rows_avx2(src, w, b, eps, dst) };
    }
    norm_rows(src, w, b, eps, dst)
}

/// Rows of a matrix inside a larger buffer: row `j` is `data[j * stride..][..width]` (a KV
/// cache's first rows, read where they lie).
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

impl<'a> Rows<'a> {
    #[inline(always)]
    fn row(&self, j: usize, width: usize) -> &'a [f32] {
        &self.data[j * self.stride..][..width]
    }
}

/// One key head's part of a decoding step: the `rep` query rows that share it (`rep × d`, one
/// new position each) and its keys and values (`d` wide).
#[derive(Clone, Copy)]
pub(crate) struct Group<'a> {
    pub q: &'a [f32],
    pub d: usize,
    pub k: Rows<'a>,
    pub v: Rows<'a>,
}

/// What one key range contributes to a group's decoding attention, before the ranges are
/// combined: per query row its largest score, `Σ e^(s − max)`, and `Σ e^(s − max)·v`.
pub(crate) struct Partial {
    pub max: Vec<f32>,
    pub sum: Vec<f32>,
    pub acc: Vec<f32>,
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut r = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        r += x * y;
    }
    r
}

#[inline(always)]
fn attend_range_impl(g: Group, keys: std::ops::Range<usize>, scale: f32) -> Partial {
    let Group { q, d, k, v } = g;
    let rep = q.len() / d;
    let n = keys.len();
    // Scores row-major per query row; each key row is read once for the group's `rep` queries.
    let mut s = vec![0f32; rep * n];
    for (jj, j) in keys.clone().enumerate() {
        let kr = k.row(j, d);
        for r in 0..rep {
            s[r * n + jj] = dot(&q[r * d..][..d], kr) * scale;
        }
    }
    let mut max = vec![f32::NEG_INFINITY; rep];
    let mut sum = vec![0f32; rep];
    for r in 0..rep {
        let row = &mut s[r * n..][..n];
        let m = lanes(row, f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
        for x in row.iter_mut() {
            *x = exp(*x - m);
        }
        max[r] = m;
        sum[r] = lanes(row, 0.0, |a, b| a + b);
    }
    let mut acc = vec![0f32; rep * d];
    for (jj, j) in keys.enumerate() {
        let vr = v.row(j, d);
        for r in 0..rep {
            let w = s[r * n + jj];
            for (a, x) in acc[r * d..][..d].iter_mut().zip(vr) {
                *a += w * x;
            }
        }
    }
    Partial { max, sum, acc }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_range_avx2(g: Group, keys: std::ops::Range<usize>, scale: f32) -> Partial {
    attend_range_impl(g, keys, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_range_avx512(g: Group, keys: std::ops::Range<usize>, scale: f32) -> Partial {
    attend_range_impl(g, keys, scale)
}

/// Attention of one group's query rows over its keys `keys`, unnormalised: combine the ranges
/// of one group with [`combine`].
pub(crate) fn attend_range(g: Group, keys: std::ops::Range<usize>, scale: f32) -> Partial {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked above).
        return unsafe { attend_range_avx512(g, keys, scale) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { attend_range_avx2(g, keys, scale) };
    }
    attend_range_impl(g, keys, scale)
}

/// The softmax-weighted values of one group from its key ranges' [`Partial`]s, into `out`
/// (`rep × d`), as flash-decoding combines its splits.
pub(crate) fn combine(parts: &[Partial], out: &mut [f32]) {
    let rep = parts[0].max.len();
    let d = out.len() / rep;
    for r in 0..rep {
        let m = parts.iter().map(|p| p.max[r]).fold(f32::NEG_INFINITY, f32::max);
        let o = &mut out[r * d..][..d];
        o.fill(0.0);
        let mut total = 0.0;
        for p in parts {
            let w = exp(p.max[r] - m);
            total += w * p.sum[r];
            for (a, x) in o.iter_mut().zip(&p.acc[r * d..][..d]) {
                *a += w * x;
            }
        }
        let inv = 1.0 / total;
        for a in o.iter_mut() {
            *a *= inv;
        }
    }
}

/// [`contiguous_f32`], or an error naming the op and the operand.
pub(crate) fn f32_operand<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> Result<&'a [f32]> {
    contiguous_f32(s, l).ok_or_else(|| candle_core::Error::Msg(format!("{op}: contiguous float32 {what} only")))
}

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Some(&v[a..b]),
        _ => None,
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "mmloop-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_operand(s, l, "gelu kernel", "input")?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(16_384).zip(src.par_chunks(16_384)).for_each(|(d, s)| gelu_chunk(s, d));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "mmloop-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_operand(s, l, "softmax kernel", "input")?;
        let n = *l.shape().dims().last().unwrap_or(&1);
        let mut out = vec![0f32; src.len()];
        // Rows in blocks so each task has work enough.
        let rows_per = (8_192 / n.max(1)).max(1);
        out.par_chunks_mut(n * rows_per).zip(src.par_chunks(n * rows_per)).for_each(|(d, s)| {
            for (dr, sr) in d.chunks_mut(n).zip(s.chunks(n)) {
                softmax_chunk(sr, dr, 1.0)
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// LayerNorm (`bias` given) or RMSNorm over the last dimension.
struct Norm {
    eps: f32,
}

impl Norm {
    fn run(&self, src: &[f32], l: &Layout, w: &[f32], b: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let n = w.len();
        if n == 0 || l.shape().dims().last() != Some(&n) || b.is_some_and(|b| b.len() != n) {
            candle_core::bail!("norm kernel: rows of {:?} against a weight of {n}", l.shape());
        }
        // Written once, never zeroed first.
        let mut out = Vec::with_capacity(src.len());
        let rows_per = (8_192 / n).max(1);
        out.spare_capacity_mut()[..src.len()]
            .par_chunks_mut(n * rows_per)
            .zip(src.par_chunks(n * rows_per))
            .for_each(|(d, s)| norm_chunk(s, w, b, self.eps, d));
        // SAFETY: `norm_chunk` wrote every one of the `src.len()` values (whole rows: the
        // length is a multiple of `n`, checked above with the shape).
        unsafe { out.set_len(src.len()) };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

fn norm_operand<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    f32_operand(s, l, "norm kernel", "operand")
}

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        "mmloop-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(norm_operand(s1, l1)?, l1, norm_operand(s2, l2)?, None)
    }
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "mmloop-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(norm_operand(s1, l1)?, l1, norm_operand(s2, l2)?, Some(norm_operand(s3, l3)?))
    }
}

fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.is_contiguous()
}

/// GELU, tanh form (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) { x.apply_op1_no_bwd(&Gelu) } else { x.gelu() }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) { x.apply_op1_no_bwd(&Softmax) } else { candle_nn::ops::softmax_last_dim(x) }
}

/// LayerNorm over the last dimension (weight and bias `[dim]`).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    if [x, w, b].iter().all(|t| fast_path(t)) {
        x.apply_op3_no_bwd(w, b, &Norm { eps })
    } else {
        candle_nn::ops::layer_norm(x, w, b, eps)
    }
}

/// RMSNorm over the last dimension (weight `[dim]`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if fast_path(x) && fast_path(w) {
        x.apply_op2_no_bwd(w, &Norm { eps })
    } else {
        candle_nn::ops::rms_norm(x, w, eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_within_a_few_ulp() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let want = x.exp();
            let got = exp(x);
            let rel = ((got - want) / want).abs();
            assert!(rel < 4e-7, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
    }

    #[test]
    fn vector_gelu_matches_the_scalar_one() {
        // −100 … 100 (exp clamped at both ends), a ragged tail for the scalar remainder.
        let x: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 20.0).collect();
        let (mut fast, mut slow) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        gelu_chunk(&x, &mut fast);
        gelu_slice(&x, &mut slow);
        for ((&a, &b), &v) in fast.iter().zip(&slow).zip(&x) {
            assert!((a - b).abs() <= 2e-6 * b.abs() + 1e-30, "gelu({v}) = {a}, scalar {b}");
        }
    }

    #[test]
    fn kernels_match_candle() {
        let x = (Tensor::randn(0f32, 3.0, (37, 129), &Device::Cpu).unwrap() * 1.0).unwrap();
        let d = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(d(&gelu_tanh(&x).unwrap(), &x.gelu().unwrap()) < 2e-6);
        assert!(d(&softmax_last_dim(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap()) < 1e-6);
        // Norms against float64: 37 short rows, and rows of 768 around a large mean (a residual
        // stream), where float32's own steps (3e-5 at 300) bound any method (candle's one-pass
        // variance is off by 0.5 there).
        for (x, most) in
            [(x.clone(), 1e-5), ((Tensor::randn(0f32, 1.0, (5, 768), &Device::Cpu).unwrap() + 300.0).unwrap(), 1e-3)]
        {
            let n = x.dim(1).unwrap();
            let w = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap();
            let want = |rms: bool| {
                let x = x.to_dtype(candle_core::DType::F64).unwrap();
                let (w, b) =
                    (w.to_dtype(candle_core::DType::F64).unwrap(), b.to_dtype(candle_core::DType::F64).unwrap());
                let c = if rms { x } else { x.broadcast_sub(&x.mean_keepdim(1).unwrap()).unwrap() };
                let norm =
                    c.broadcast_div(&(c.sqr().unwrap().mean_keepdim(1).unwrap() + 1e-6).unwrap().sqrt().unwrap());
                let y = norm.unwrap().broadcast_mul(&w).unwrap();
                if rms { y } else { y.broadcast_add(&b).unwrap() }.to_dtype(candle_core::DType::F32).unwrap()
            };
            assert!(d(&layer_norm(&x, &w, &b, 1e-6).unwrap(), &want(false)) < most);
            assert!(d(&rms_norm(&x, &w, 1e-6).unwrap(), &want(true)) < 1e-5);
        }
        // Masked scores (−inf) get exactly zero weight.
        let m = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &Device::Cpu).unwrap();
        let s = softmax_last_dim(&m).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(s[0][1], 0.0);
    }
}
