//! bfloat16 matrix products on Intel AMX (Advanced Matrix Extensions: Sapphire Rapids and later
//! Xeons), for inference on the CPU.
//!
//! candle's CPU matmul (the `gemm` crate) reaches about a third of an AVX-512 core's float32
//! peak and has no AMX path; PyTorch's bfloat16 goes through oneDNN's AMX kernels, an order
//! of magnitude faster (docs/benchmarks.md). AMX multiplies 16×32 bfloat16 tiles into 16×16
//! float32 accumulators in one instruction (`tdpbf16ps`). Here:
//!
//! - the right operand is packed once into AMX's "VNNI" tile layout ([`PackedB`]: a linear
//!   layer's weight at load, or a head's keys/values per call), rounded to bfloat16;
//! - the left operand (activations, float32) is rounded to bfloat16 row by row per call;
//! - products accumulate in float32 and come back as float32: only the operands are rounded,
//!   as in PyTorch's CPU autocast, so norms, softmax and residuals stay float32.
//!
//! The kernel computes 32×32 output blocks (four accumulator tiles, two A and two B tiles per
//! step of 32 along k), blocks spread over rayon's threads by (row range, column range). Each
//! block's output is written once, with the layer's bias, an activation (GELU) and the block's
//! residual applied in the same pass ([`linear`]). Tile configuration is per thread: a task
//! loads it, runs its blocks and releases it with no rayon call in between, so no other task
//! can run on that thread while its tiles are configured.
//! Instructions are written with `asm!` (AMX intrinsics are not stable in Rust); the process
//! asks Linux for the tile state once (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), and
//! [`available`] is false on any other CPU, OS or when `MMLOOP_AMX=0`.

use std::sync::OnceLock;

use rayon::prelude::*;

/// k step of one tile product (bfloat16 pairs: 16 rows × 64 bytes).
const TK: usize = 32;
/// Rows and columns of one output block (2 × 2 tiles of 16).
const BLOCK: usize = 32;

/// Whether this process can run AMX bfloat16 tile products (checked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("MMLOOP_AMX").is_ok_and(|v| v == "0" || v.eq_ignore_ascii_case("off")) {
            return false;
        }
        imp::enable()
    })
}

/// Rounds to the nearest bfloat16, ties to even (PyTorch's conversion); NaN stays NaN.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded }
}

/// Rounds `src` into `dst` (the shorter's length) to the nearest bfloat16, ties to even:
/// activations and attention probabilities are rounded on every call, over a billion values per
/// SmolVLM image. Where the CPU has AVX-512 BF16 (every CPU with AMX does) this is its
/// conversion instruction, which flushes subnormal inputs (|x| < 1.2e-38) to zero; elsewhere
/// [`bf16_bits`], which keeps them.
fn round_into(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU supports AVX-512F, AVX-512BW, AVX-512VL and AVX-512 BF16 (checked above).
        return unsafe { round_into_avx512(src, dst) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bf16_bits(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn round_into_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i < n {
        // The last group takes the lanes it has (masked load and store).
        let mask: u16 = if n - i >= 16 { u16::MAX } else { (1u16 << (n - i)) - 1 };
        // SAFETY: the mask covers only the `min(16, n - i)` floats left in `src` and as many
        // u16 in `dst`; masked-off lanes are neither read nor written.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
            let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), mask, b);
        }
        i += 16;
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16")
    })
}

/// The float32 value of a bfloat16 bit pattern.
#[inline(always)]
pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A right-hand operand `Bᵀ` of shape `[n, k]` (a linear layer's weight `[out, in]`) in
/// bfloat16, packed into AMX tiles: for each block of 16 columns, for each step of 32 along
/// k, 16 rows of 16 (k, k+1) pairs — 1 KiB per tile, a column block's tiles contiguous. `n`
/// and `k` are padded with zeros to multiples of 32.
#[derive(Clone, Debug)]
pub struct PackedB {
    pub n: usize,
    pub k: usize,
    kp: usize,
    np: usize,
    data: Vec<u16>,
}

impl PackedB {
    /// `w` row-major `[n, k]`: `out = a · wᵀ` (a linear layer's weight).
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> PackedB {
        assert_eq!(w.len(), n * k, "weight of {} values for [{n}, {k}]", w.len());
        PackedB::pack(n, k, |col, kk| w[col * k + kk])
    }

    /// `[n, k]` from `get(col, kk)`: a weight's rows, or attention's keys and values (`[keys,
    /// d]` seen as `[d, keys]`) wherever they lie.
    fn pack(n: usize, k: usize, get: impl Fn(usize, usize) -> f32 + Sync) -> PackedB {
        let kp = k.next_multiple_of(TK);
        let np = n.next_multiple_of(BLOCK);
        let steps = kp / TK;
        let tile = 16 * TK;
        let mut data = vec![0u16; np * kp];
        // One column block of 16 (all its k steps) per task.
        data.par_chunks_mut(steps * tile).enumerate().for_each(|(cb, panel)| {
            for (step, t) in panel.chunks_mut(tile).enumerate() {
                for c in 0..16 {
                    let col = cb * 16 + c;
                    if col >= n {
                        break;
                    }
                    for p in 0..16 {
                        for j in 0..2 {
                            let kk = step * TK + 2 * p + j;
                            if kk < k {
                                t[p * 32 + c * 2 + j] = bf16_bits(get(col, kk));
                            }
                        }
                    }
                }
            }
        });
        PackedB { n, k, kp, np, data }
    }

    /// The operand `[n, k]` back as float32 (bfloat16 values), for tests and fallbacks.
    pub fn unpack(&self) -> Vec<f32> {
        let steps = self.kp / TK;
        let mut out = vec![0f32; self.n * self.k];
        for col in 0..self.n {
            for kk in 0..self.k {
                let (cb, c, step, p, j) = (col / 16, col % 16, kk / TK, (kk % TK) / 2, kk % 2);
                out[col * self.k + kk] = bf16_value(self.data[(cb * steps + step) * 16 * TK + p * 32 + c * 2 + j]);
            }
        }
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// A left operand `[m, k]` rounded to bfloat16, row-major with rows padded to `kp` (a
/// multiple of 32) and `m` to a multiple of 32, zeros in the padding.
struct PackedA {
    m: usize,
    kp: usize,
    data: Vec<u16>,
}

impl PackedA {
    /// `a` row-major `[m, k]`, rounded in parallel blocks of 64 rows.
    fn from_rows(a: &[f32], m: usize, k: usize, kp: usize) -> PackedA {
        let mut data = vec![0u16; m.next_multiple_of(BLOCK) * kp];
        data[..m * kp].par_chunks_mut(kp * 64).zip(a.par_chunks(k * 64)).for_each(|(dst, src)| {
            for (d, s) in dst.chunks_mut(kp).zip(src.chunks(k)) {
                round_into(s, d);
            }
        });
        PackedA { m, kp, data }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the wrapper (`Send`), not the raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[m, n] = a[m, k] · Bᵀ` into a buffer the caller keeps (the peak benchmark reuses
/// one), `a` rounded to bfloat16, float32 accumulation. Needs [`available`]; panics on
/// mismatched sizes.
pub fn matmul(a: &[f32], m: usize, k: usize, b: &PackedB, out: &mut [f32]) {
    assert!(available(), "AMX is not available");
    assert_eq!(k, b.k, "inner dimensions: {k} against {}", b.k);
    assert_eq!(a.len(), m * k);
    assert_eq!(out.len(), m * b.n);
    if m == 0 || b.n == 0 {
        return;
    }
    // SAFETY: `out` holds the `m × n` floats `matmul_packed` writes.
    unsafe { matmul_packed(&PackedA::from_rows(a, m, k, b.kp), b, out.as_mut_ptr(), None, Epilogue::None, None) };
}

/// What is applied to each output value as it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// GELU, tanh form (`gelu_pytorch_tanh`): [`crate::kernels`]' kernel.
    GeluTanh,
}

/// `epilogue(a[m, k] · Bᵀ + bias) + residual` into a new `[m, n]` vector (a linear layer's
/// forward pass, with the block's residual connection when given), `a` rounded to bfloat16,
/// float32 accumulation: the output is written once, never zeroed first. Needs [`available`];
/// panics on mismatched sizes.
pub fn linear(
    a: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    assert!(available(), "AMX is not available");
    assert_eq!(k, b.k, "inner dimensions: {k} against {}", b.k);
    assert_eq!(a.len(), m * k);
    assert!(bias.is_none_or(|v| v.len() == b.n), "bias of another width");
    assert!(residual.is_none_or(|v| v.len() == m * b.n), "residual of another shape");
    let mut out = Vec::with_capacity(m * b.n);
    if m > 0 && b.n > 0 {
        // SAFETY: the capacity holds `m × n` floats; `matmul_packed` writes every one of them
        // before the length is set.
        unsafe {
            matmul_packed(&PackedA::from_rows(a, m, k, b.kp), b, out.as_mut_ptr(), bias, epilogue, residual);
            out.set_len(m * b.n);
        }
    }
    out
}

/// `out[m, n] = A · Bᵀ` for a packed `A` (`kp` equal to `B`'s).
///
/// # Safety
/// `out` must be valid for writes of `pa.m × b.n` floats; every one of them is written (with
/// `bias` added per column when given, then `epilogue`, then `residual` `[m, n]`).
unsafe fn matmul_packed(
    pa: &PackedA,
    b: &PackedB,
    out: *mut f32,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
) {
    debug_assert_eq!(pa.kp, b.kp);
    let m = pa.m;
    // Tasks: 256 rows × 256 columns of the output; the B panel of one task (256 × k bfloat16)
    // stays in L2 while its row blocks pass.
    const SPAN: usize = 8;
    let (mblocks, nblocks) = (m.div_ceil(BLOCK), b.np / BLOCK);
    let (mtasks, ntasks) = (mblocks.div_ceil(SPAN), nblocks.div_ceil(SPAN));
    let out_ptr = SendPtr(out);
    let n = b.n;
    (0..mtasks * ntasks).into_par_iter().for_each(|task| {
        let (mt, nt) = (task / ntasks, task % ntasks);
        let mut scratch = [0f32; BLOCK * BLOCK];
        let _tiles = imp::Tiles::configure();
        for mb in mt * SPAN..((mt + 1) * SPAN).min(mblocks) {
            for nb in nt * SPAN..((nt + 1) * SPAN).min(nblocks) {
                let steps = b.kp / TK;
                let a0 = pa.data[mb * BLOCK * b.kp..].as_ptr();
                let b0 = b.data[(2 * nb) * steps * 16 * TK..].as_ptr();
                // SAFETY: `pa` holds 32 padded rows from `mb·32` of `kp` values each, `b.data`
                // two column panels of `steps` tiles from column block `2·nb`; the scratch
                // holds 32×32 floats.
                unsafe { imp::block(a0, b.kp, b0, steps, scratch.as_mut_ptr(), BLOCK) };
                let (r0, c0) = (mb * BLOCK, nb * BLOCK);
                let cols = BLOCK.min(n - c0);
                for r in 0..BLOCK.min(m - r0) {
                    // SAFETY: row `r0 + r < m`, columns `c0..c0 + cols ≤ n`; tasks write
                    // disjoint blocks.
                    let dst = unsafe { out_ptr.get().add((r0 + r) * n + c0) };
                    let row = &mut scratch[r * BLOCK..r * BLOCK + cols];
                    if let Some(b) = bias {
                        for (v, b) in row.iter_mut().zip(&b[c0..c0 + cols]) {
                            *v += b;
                        }
                    }
                    if epilogue == Epilogue::GeluTanh {
                        let mut done = [0f32; BLOCK];
                        crate::kernels::gelu_chunk(row, &mut done[..cols]);
                        row.copy_from_slice(&done[..cols]);
                    }
                    if let Some(res) = residual {
                        let at = (r0 + r) * n + c0;
                        for (v, x) in row.iter_mut().zip(&res[at..at + cols]) {
                            *v += x;
                        }
                    }
                    // SAFETY: see above; written through the pointer (the memory may be
                    // uninitialised, so no slice is formed over it).
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst, cols) };
                }
            }
        }
    });
}

/// The operands of [`attention_into`]: `heads` (or key groups) of `rows` queries against `keys`
/// keys and values, each `d` wide.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub rows: usize,
    pub keys: usize,
    pub d: usize,
}

/// One operand of [`attention_into`]: element `(head, row, i)` at `data[head·head_stride +
/// row·row_stride + i]`, so both `[heads, rows, d]` and the projections' own `[rows, heads, d]`
/// are read in place.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub head_stride: usize,
    pub row_stride: usize,
}

impl<'a> View<'a> {
    /// The same operand from row `rows` on (a later segment).
    pub fn skip_rows(self, rows: usize) -> View<'a> {
        View { data: &self.data[rows * self.row_stride..], ..self }
    }

    fn row(&self, head: usize, row: usize, d: usize) -> &'a [f32] {
        let at = head * self.head_stride + row * self.row_stride;
        &self.data[at..at + d]
    }

    /// Whether every `(head, row)` of `shape` lies inside `data`.
    fn covers(&self, heads: usize, rows: usize, d: usize) -> bool {
        heads == 0 || rows == 0 || (heads - 1) * self.head_stride + (rows - 1) * self.row_stride + d <= self.data.len()
    }
}

/// `softmax(q·kᵀ·scale)·v` for each head, the products on AMX (operands rounded to
/// bfloat16), scores and softmax in float32: `q` `[heads, rows, d]`, `k` and `v` `[heads,
/// keys, d]` (any strides, [`View`]); the output goes to `out`, element `(head, row, i)` at
/// `head·out_strides.0 + row·out_strides.1 + i`. Query row `r` of every head sees the first
/// `visible(r)` keys (all of them without a mask; a causal mask in prefill). Needs
/// [`available`]; panics where a view or `out` is too short for `shape`.
///
/// Blocked like flash attention's forward pass: each task takes 32 query rows, computes their
/// scores against every key, softmax, rounds the probabilities straight into the bfloat16
/// operand and multiplies by the values, so a task's working set (`32 × n` scores) stays in
/// cache instead of a head's `n × n` scores passing through memory twice.
#[allow(clippy::too_many_arguments)]
pub fn attention_into(
    q: View,
    k: View,
    v: View,
    shape: Heads,
    scale: f32,
    visible: impl Fn(usize) -> usize + Sync,
    out: &mut [f32],
    out_strides: (usize, usize),
) {
    assert!(available(), "AMX is not available");
    let Heads { heads, rows: n_rows, keys: n_keys, d } = shape;
    assert!(
        q.covers(heads, n_rows, d) && k.covers(heads, n_keys, d) && v.covers(heads, n_keys, d),
        "attention operands"
    );
    let (oh, or) = out_strides;
    assert!(heads == 0 || n_rows == 0 || (heads - 1) * oh + (n_rows - 1) * or + d <= out.len(), "attention output");
    if heads == 0 || n_rows == 0 || n_keys == 0 || d == 0 {
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    for h in 0..heads {
        let keys = PackedB::pack(n_keys, d, |key, i| k.data[h * k.head_stride + key * k.row_stride + i]);
        let values = PackedB::pack(d, n_keys, |i, key| v.data[h * v.head_stride + key * v.row_stride + i]);
        (0..n_rows.div_ceil(BLOCK)).into_par_iter().for_each(|rb| {
            let (r0, rows) = (rb * BLOCK, BLOCK.min(n_rows - rb * BLOCK));
            let seen: Vec<usize> = (r0..r0 + rows).map(|r| visible(r).clamp(1, n_keys)).collect();
            let most = seen.iter().copied().max().unwrap_or(n_keys);
            let mut qa = vec![0u16; BLOCK * keys.kp];
            for r in 0..rows {
                round_into(q.row(h, r0 + r, d), &mut qa[r * keys.kp..]);
            }
            let mut scores = vec![0f32; BLOCK * keys.np];
            // Zeros past each row's visible keys: they add nothing to `p · v`.
            let mut probs = vec![0u16; BLOCK * values.kp];
            let mut row = vec![0f32; n_keys];
            let mut scratch = [0f32; BLOCK * BLOCK];
            let _tiles = imp::Tiles::configure();
            let steps_d = keys.kp / TK;
            // Key blocks no row of this block sees are skipped (causal masks).
            for nb in 0..most.div_ceil(BLOCK) {
                // SAFETY: `qa` holds 32 rows of `keys.kp`; the key panels `2·nb`, `2·nb + 1`
                // exist (`np` is a multiple of 32); `scores` holds 32 rows of `np` floats.
                unsafe {
                    imp::block(
                        qa.as_ptr(),
                        keys.kp,
                        keys.data[2 * nb * steps_d * 16 * TK..].as_ptr(),
                        steps_d,
                        scores[nb * BLOCK..].as_mut_ptr(),
                        keys.np,
                    )
                };
            }
            for (r, &vis) in seen.iter().enumerate() {
                let src = &scores[r * keys.np..r * keys.np + vis];
                crate::kernels::softmax_chunk(src, &mut row[..vis], scale);
                round_into(&row[..vis], &mut probs[r * values.kp..]);
            }
            let (steps_n, steps_seen) = (values.kp / TK, most.div_ceil(TK));
            for nb in 0..values.np / BLOCK {
                // SAFETY: as above, with `probs` 32 rows of `values.kp`, the first `steps_seen ≤
                // steps_n` k-steps of the value panels, and the scratch 32×32.
                unsafe {
                    imp::block(
                        probs.as_ptr(),
                        values.kp,
                        values.data[2 * nb * steps_n * 16 * TK..].as_ptr(),
                        steps_seen,
                        scratch.as_mut_ptr(),
                        BLOCK,
                    )
                };
                let (c0, cols) = (nb * BLOCK, BLOCK.min(d - nb * BLOCK));
                for r in 0..rows {
                    // SAFETY: `(h, r0 + r, c0..c0 + cols)` lies inside `out` (checked above), and
                    // no other task writes this head's rows `r0..r0 + rows`.
                    unsafe {
                        let dst = out_ptr.get().add(h * oh + (r0 + r) * or + c0);
                        std::ptr::copy_nonoverlapping(scratch[r * BLOCK..].as_ptr(), dst, cols);
                    }
                }
            }
        });
    }
}

/// candle's side: `x · Wᵀ` for a float32 CPU tensor `x` `[.., in]` and a packed `W`.
pub(crate) struct Linear {
    pub weight: std::sync::Arc<PackedB>,
    /// Added in the same pass as the product's output is written.
    pub bias: Option<std::sync::Arc<[f32]>>,
    pub epilogue: Epilogue,
}

impl Linear {
    /// The op's CPU pass: `x` `[.., in]` → `[.., out]`, plus `residual` of the output's shape.
    fn run(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
        residual: Option<(&candle_core::CpuStorage, &candle_core::Layout)>,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let msg = |m: &str| candle_core::Error::Msg(format!("AMX linear: {m}"));
        let x = crate::kernels::contiguous_f32(s, l).ok_or_else(|| msg("contiguous float32 input only"))?;
        let k = *l.shape().dims().last().unwrap_or(&0);
        if k != self.weight.k {
            return Err(msg(&format!("input of width {k} for a layer of {}", self.weight.k)));
        }
        let m = x.len() / k.max(1);
        let mut shape = l.shape().dims().to_vec();
        *shape.last_mut().expect("a dimension") = self.weight.n;
        let residual = match residual {
            None => None,
            Some((rs, rl)) if rl.shape().dims() == shape => {
                Some(crate::kernels::contiguous_f32(rs, rl).ok_or_else(|| msg("contiguous float32 residual only"))?)
            }
            Some((_, rl)) => {
                return Err(msg(&format!("residual of shape {:?} for an output of {shape:?}", rl.shape().dims())));
            }
        };
        let out = linear(x, m, k, &self.weight, self.bias.as_deref(), self.epilogue, residual);
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }
}

impl candle_core::CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        "mmloop-amx-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.run(s, l, None)
    }
}

/// The same layer with the block's residual added as the output is written: `(x, residual)`.
impl candle_core::CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "mmloop-amx-linear-residual"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
        rs: &candle_core::CpuStorage,
        rl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.run(s, l, Some((rs, rl)))
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    /// CPUID leaf 7 says AMX-TILE and AMX-BF16, and Linux grants this process the tile data
    /// state.
    pub fn enable() -> bool {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that reports AVX2-era features;
        // leaf 0 is checked first.
        let leaf7 = unsafe {
            if std::arch::x86_64::__cpuid(0).eax < 7 {
                return false;
            }
            std::arch::x86_64::__cpuid_count(7, 0)
        };
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(amx_bf16 && amx_tile) {
            return false;
        }
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call with a permission request touches no memory.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// The tile configuration of [`block`] (eight tiles of 16 rows × 64 bytes), loaded for the
    /// life of the guard and released after it.
    pub struct Tiles(());

    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Tiles {
        pub fn configure() -> Tiles {
            let mut c = [0u8; 64];
            c[0] = 1; // palette 1
            for t in 0..8 {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                c[48 + t] = 16;
            }
            let cfg = Config(c);
            // SAFETY: called only after `enable` succeeded (`matmul` asserts `available`); the
            // configuration is a valid palette-1 layout.
            unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
            Tiles(())
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: tiles were configured by `configure`.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// One 32×32 output block into `c` (row stride `ldc` floats): `a` two row tiles of 16 rows
    /// (row stride `kp` bfloat16), `b` two consecutive column panels of `steps` tiles.
    ///
    /// # Safety
    /// Tiles configured ([`Tiles`]); `a` readable for 32 rows × `kp`, `b` for 2 × `steps` KiB,
    /// `c` writable for 32 rows of `ldc ≥ 32` floats.
    #[inline(never)]
    pub unsafe fn block(a: *const u16, kp: usize, b: *const u16, steps: usize, c: *mut f32, ldc: usize) {
        let sa = kp * 2;
        unsafe {
            let a1 = a.add(16 * kp);
            let b1 = b.add(steps * 16 * super::TK);
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for s in 0..steps {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(s * super::TK),
                    a1 = in(reg) a1.add(s * super::TK),
                    b0 = in(reg) b.add(s * 16 * super::TK),
                    b1 = in(reg) b1.add(s * 16 * super::TK),
                    sa = in(reg) sa,
                    sb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {sc}*1], tmm0",
                "tilestored [{c1} + {sc}*1], tmm1",
                "tilestored [{c2} + {sc}*1], tmm2",
                "tilestored [{c3} + {sc}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * ldc),
                c3 = in(reg) c.add(16 * ldc + 16),
                sc = in(reg) ldc * 4,
                options(nostack),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn enable() -> bool {
        false
    }

    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Tiles {
            unreachable!("AMX is never available here")
        }
    }

    #[inline(never)]
    pub unsafe fn block(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut f32, _: usize) {
        unreachable!("AMX is never available here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operand(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn rounded(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| bf16_value(bf16_bits(v))).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even_like_half() {
        for &x in
            &[0.0f32, -0.0, 1.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -3.3333, 1e-40, f32::MAX, f32::INFINITY, 65504.5]
        {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn rounding_many_at_once_equals_one_at_a_time() {
        // Ties, carries into the exponent, subnormals, infinities, NaNs, and a ragged tail.
        let mut x = operand(1_000, 3);
        x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, 1e-40, -1e-40, f32::MAX, f32::MIN, f32::INFINITY]);
        x.extend([f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0x3f80_8000)]);
        for len in [x.len(), 15, 16, 17, 1] {
            let mut got = vec![7u16; len + 1];
            round_into(&x[..len], &mut got);
            assert_eq!(got[len], 7, "nothing written past the input");
            for (&v, &g) in x.iter().zip(&got[..len]) {
                // AVX-512 BF16's instruction flushes subnormals to (signed) zero.
                let flushed = v.is_subnormal() && g == (v.to_bits() >> 16) as u16 & 0x8000;
                assert!(g == bf16_bits(v) || flushed, "{v:e}: {g:#x} against {:#x}", bf16_bits(v));
            }
        }
    }

    #[test]
    fn packing_round_trips_both_layouts() {
        let (n, k) = (37, 45);
        let w = operand(n * k, 1);
        assert_eq!(PackedB::from_rows(&w, n, k).unpack(), rounded(&w));
        // The same operand given as [k, n].
        let mut v = vec![0f32; n * k];
        for col in 0..n {
            for kk in 0..k {
                v[kk * n + col] = w[col * k + kk];
            }
        }
        assert_eq!(PackedB::pack(n, k, |col, kk| v[kk * n + col]).unpack(), rounded(&w));
    }

    /// Every size class: below one tile, ragged edges in all three dimensions, several tasks.
    #[test]
    fn products_match_float64_on_rounded_operands() {
        if !available() {
            eprintln!("AMX not available on this CPU: the kernel is not exercised (Linear falls back)");
            return;
        }
        for &(m, k, n) in &[(1, 1, 1), (1, 64, 17), (5, 33, 31), (32, 32, 32), (300, 100, 70), (257, 768, 600)] {
            let a = operand(m * k, 7);
            let w = operand(n * k, 9);
            let b = PackedB::from_rows(&w, n, k);
            let mut out = vec![f32::NAN; m * n];
            matmul(&a, m, k, &b, &mut out);
            let (ar, wr) = (rounded(&a), rounded(&w));
            for r in 0..m {
                for c in 0..n {
                    let exact: f64 = (0..k).map(|i| ar[r * k + i] as f64 * wr[c * k + i] as f64).sum();
                    let got = out[r * n + c] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * (1.0 + exact.abs()) * (k as f64).sqrt(),
                        "{m}x{k}x{n} [{r},{c}]: {got} vs {exact}"
                    );
                }
            }
        }
    }
}
