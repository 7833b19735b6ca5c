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
//! - the left operand (activations, float32) is rounded to bfloat16 per call, into tile-major
//!   order (each 16 × 32 tile 1 KiB contiguous: tile loads, not products, bound the kernel);
//! - products accumulate in float32 and come back as float32: only the operands are rounded,
//!   as in PyTorch's CPU autocast, so norms, softmax's sums and residuals stay float32.
//!
//! The kernel computes 32×32 output blocks (four accumulator tiles, two A and two B tiles per
//! step of 32 along k), blocks spread over rayon's threads by (row range, column range). Each
//! block's output is written once, with the layer's bias, an activation (GELU, or SiLU times a
//! gated MLP's up projection) and the block's residual applied in the same pass ([`linear`]).
//! Decoding rows (one per sequence, first in a step) use AVX-512 BF16 dot products over the same
//! packed weights instead, whatever else the step holds, so no row's numbers depend on its batch. Attention
//! ([`attention_into`]) is blocked like flash attention. Tile configuration is per thread: a task
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

/// Bfloat16 values in one tile (16 rows × 64 bytes).
const TILE: usize = 16 * TK;

/// Values a tile holds: bfloat16 bits or float32, whose all-zero bit pattern is zero.
///
/// # Safety
/// Every bit pattern, all zeros included, is a valid value of the type.
unsafe trait TileValue: Copy {}
// SAFETY: plain integers and floats: every bit pattern is a value.
unsafe impl TileValue for u16 {}
// SAFETY: as above.
unsafe impl TileValue for f32 {}

/// A zero-filled buffer of `len` values whose first one is 64-byte aligned, for tile operands
/// and the buffers tiles are stored to. A tile load whose 64-byte rows each straddle two cache
/// lines runs at about half the speed of an aligned one (one core, 2048×768 by 768×3072 from
/// tile-major operands: 626 against 1,102 GFLOP/s), and neither `Vec` nor the allocator
/// promises more than the element's own alignment (glibc's large blocks start 16 bytes into
/// a page).
struct Aligned<T: TileValue> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

// SAFETY: the buffer owns its values alone, as a `Vec` does.
unsafe impl<T: TileValue + Send> Send for Aligned<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: TileValue + Sync> Sync for Aligned<T> {}

impl<T: TileValue> Aligned<T> {
    const ALIGN: usize = 64;

    fn layout(len: usize) -> std::alloc::Layout {
        let bytes = len.max(1).checked_mul(size_of::<T>()).expect("buffer size overflows");
        std::alloc::Layout::from_size_align(bytes, Self::ALIGN).expect("buffer size overflows")
    }

    fn zeros(len: usize) -> Aligned<T> {
        let layout = Self::layout(len);
        // SAFETY: the layout's size is at least one value, so not zero.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<T>()) else { std::alloc::handle_alloc_error(layout) };
        Aligned { ptr, len }
    }
}

impl<T: TileValue> Default for Aligned<T> {
    fn default() -> Aligned<T> {
        Aligned::zeros(0)
    }
}

/// Buffers kept for later operands instead of zero-allocated per call: [`Spares::take`] hands
/// out the first one long enough, holding whatever was there (the caller writes every place it
/// reads), [`Spares::keep`] takes one back and keeps the `most` largest.
struct Spares<T: TileValue>(Vec<Aligned<T>>);

impl<T: TileValue> Spares<T> {
    const fn new() -> Spares<T> {
        Spares(Vec::new())
    }

    fn take(&mut self, len: usize) -> Aligned<T> {
        match self.0.iter().position(|d| d.len() >= len) {
            Some(i) => self.0.swap_remove(i),
            None => Aligned::zeros(len),
        }
    }

    fn keep(&mut self, buf: Aligned<T>, most: usize) {
        self.0.push(buf);
        if self.0.len() > most {
            let smallest = (0..self.0.len()).min_by_key(|&i| self.0[i].len()).expect("not empty");
            self.0.swap_remove(smallest);
        }
    }
}

impl<T: TileValue> Drop for Aligned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by `zeros` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), Self::layout(self.len)) };
    }
}

impl<T: TileValue> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` values, initialised (zeros are values: `TileValue`), owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: TileValue> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: TileValue> Clone for Aligned<T> {
    fn clone(&self) -> Aligned<T> {
        let mut copy = Aligned::zeros(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl<T: TileValue> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} values)", self.len)
    }
}

/// One 32×32 float32 output block, aligned for tile stores.
#[repr(C, align(64))]
struct BlockBuf([f32; BLOCK * BLOCK]);

/// Where element `i` of a row goes in a tile-major operand, from the row's place in its
/// first tile: pieces of [`TK`] values, one tile apart.
#[inline(always)]
fn tiled(i: usize) -> usize {
    (i / TK) * TILE + i % TK
}

/// Where row `r` of a tile-major operand begins ([`tiled`] places its values from there), with
/// `panel` values (`kp / 32` tiles) per 16 rows.
#[inline(always)]
fn tiled_row(r: usize, panel: usize) -> usize {
    (r / 16) * panel + (r % 16) * TK
}

/// The lanes of the 16-lane group at element `i` of `n` (`i < n`): all 16, or the tail's.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes_left(n: usize, i: usize) -> u16 {
    if n - i >= 16 { u16::MAX } else { (1u16 << (n - i)) - 1 }
}

/// Asks for `row`'s cache lines ahead of their use. Attention reads its operands a head at a
/// time, 64 to 128 values from rows thousands of bytes apart, a pattern the hardware's
/// prefetchers do not follow across pages: without this each row waits on memory in turn.
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch is a hint; it reads nothing architecturally and cannot fault.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
}

/// Where element `i` of a row goes: [`tiled`]`(i)` in a tile-major operand, else `i`.
#[inline(always)]
fn place<const TILED: bool>(i: usize) -> usize {
    if TILED { tiled(i) } else { i }
}

/// Rounds the row `src` to the nearest bfloat16, ties to even, into `dst`: element `i` at
/// [`place`]`(i)`, so with `TILED` as a row of a tile-major operand (nothing between the pieces
/// is written). Activations and attention probabilities are rounded on every call, over a
/// billion values per SmolVLM image. Where the CPU has AVX-512 BF16 (every CPU with AMX
/// does) this is its conversion instruction, which flushes subnormal inputs (|x| < 1.2e-38)
/// to zero; elsewhere [`bf16_bits`], which keeps them. Panics when `dst` is too short.
fn round_row<const TILED: bool>(src: &[f32], dst: &mut [u16]) {
    let Some(last) = src.len().checked_sub(1) else { return };
    assert!(place::<TILED>(last) < dst.len(), "a row of {} values for {} places", src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU supports AVX-512F, AVX-512BW, AVX-512VL and AVX-512 BF16 (checked
        // above); `dst` holds every place of `src` (asserted above).
        return unsafe { round_row_avx512::<TILED>(src, dst) };
    }
    for (i, &x) in src.iter().enumerate() {
        dst[place::<TILED>(i)] = bf16_bits(x);
    }
}

/// # Safety
/// The CPU has AVX-512F/BW/VL/BF16; `dst.len() > place::<TILED>(src.len() - 1)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn round_row_avx512<const TILED: bool>(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut i = 0;
    while i < n {
        // Groups of 16 never straddle a piece of 32; the last takes the lanes it has (masked
        // load and store).
        let mask = lanes_left(n, i);
        // SAFETY: the mask covers only the `min(16, n - i)` floats left in `src` and the as
        // many places from `place(i)` in `dst`, the last of them `place(j) ≤ place(n - 1)`
        // for `j < n`; masked-off lanes are neither read nor written.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
            let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(place::<TILED>(i)).cast(), mask, b);
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
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16")
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512_bf16() -> bool {
    false
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
    data: Aligned<u16>,
}

impl PackedB {
    /// `w` row-major `[n, k]`: `out = a · wᵀ` (a linear layer's weight), packed in parallel.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> PackedB {
        assert_eq!(w.len(), n * k, "weight of {} values for [{n}, {k}]", w.len());
        let mut b = PackedB::zeros(n, k);
        let panel = b.kp / TK * TILE;
        let kp = b.kp;
        b.data.par_chunks_mut(panel).enumerate().for_each(|(cb, panel)| {
            fill_rows(panel, cb, n, kp, |col| &w[col * k..(col + 1) * k]);
        });
        b
    }

    /// `[n, k]` from its rows, `row(col)` the `k` values of column `col` of the product
    /// (attention's keys, wherever they lie), into a spare buffer ([`PackedB::recycle`]).
    fn pack_rows<'a>(n: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) -> PackedB {
        let mut b = PackedB::spare(n, k);
        let (panel, kp, len) = (b.kp / TK * TILE, b.kp, b.np * b.kp);
        for (cb, panel) in b.data[..len].chunks_mut(panel).enumerate() {
            fill_rows(panel, cb, n, kp, &row);
        }
        b
    }

    /// `[n, k]` from the rows of its transpose, `row(kk)` the `n` values at step `kk` along k
    /// (attention's values: one row per key), into a spare buffer ([`PackedB::recycle`]).
    fn pack_transposed<'a>(n: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) -> PackedB {
        let mut b = PackedB::spare(n, k);
        let steps = b.kp / TK;
        // Two consecutive k rows, rounded, make one row of a tile: their values interleaved.
        let (mut even, mut odd) = (vec![0u16; b.np], vec![0u16; b.np]);
        // Rows ahead of their use (see [`prefetch`]).
        const AHEAD: usize = 16;
        for kk in 0..AHEAD.min(k) {
            prefetch(row(kk));
        }
        for kk in (0..k).step_by(2) {
            for ahead in kk + AHEAD..(kk + AHEAD + 2).min(k) {
                prefetch(row(ahead));
            }
            round_row::<false>(row(kk), &mut even);
            if kk + 1 < k {
                round_row::<false>(row(kk + 1), &mut odd);
            } else {
                odd.fill(0);
            }
            let (step, p) = (kk / TK, (kk % TK) / 2);
            for cb in 0..b.np / 16 {
                let t = &mut b.data[(cb * steps + step) * TILE + p * TK..][..TK];
                for c in 0..16 {
                    t[2 * c] = even[cb * 16 + c];
                    t[2 * c + 1] = odd[cb * 16 + c];
                }
            }
        }
        // The pairs past `k`: zeros.
        for kk in (k.next_multiple_of(2)..b.kp).step_by(2) {
            let (step, p) = (kk / TK, (kk % TK) / 2);
            for cb in 0..b.np / 16 {
                b.data[(cb * steps + step) * TILE + p * TK..][..TK].fill(0);
            }
        }
        b
    }

    /// Zeros for `[n, k]`, padded.
    fn zeros(n: usize, k: usize) -> PackedB {
        let (kp, np) = (k.next_multiple_of(TK), n.next_multiple_of(BLOCK));
        PackedB { n, k, kp, np, data: Aligned::zeros(np * kp) }
    }

    /// `[n, k]` in a buffer from [`SPARE_B`] when one is large enough, holding whatever was
    /// there: the caller writes every place.
    fn spare(n: usize, k: usize) -> PackedB {
        let (kp, np) = (k.next_multiple_of(TK), n.next_multiple_of(BLOCK));
        let data = match SPARE_B.lock() {
            Ok(mut spares) => spares.take(np * kp),
            Err(_) => Aligned::zeros(np * kp),
        };
        PackedB { n, k, kp, np, data }
    }

    /// Gives the buffer to [`SPARE_B`] for the next call's operands.
    fn recycle(self) {
        if let Ok(mut spares) = SPARE_B.lock() {
            spares.keep(self.data, SPARES_B);
        }
    }

    /// The products with `parts` side by side, `[Σn, k]` (a block's q, k and v projections as one):
    /// `None` unless every part has the same `k` and a width that is a multiple of 32 (no padding
    /// columns between them).
    pub fn concat(parts: &[&PackedB]) -> Option<PackedB> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.k != first.k || p.n % BLOCK != 0) {
            return None;
        }
        let n = parts.iter().map(|p| p.n).sum::<usize>();
        let mut out = PackedB::zeros(n, first.k);
        let mut at = 0;
        for p in parts {
            let len = p.np * p.kp;
            out.data[at..at + len].copy_from_slice(&p.data[..len]);
            at += len;
        }
        Some(out)
    }

    /// The operand `[n, k]` back as float32 (bfloat16 values), for tests and fallbacks.
    pub fn unpack(&self) -> Vec<f32> {
        let steps = self.kp / TK;
        let mut out = vec![0f32; self.n * self.k];
        for col in 0..self.n {
            for kk in 0..self.k {
                let (cb, c, step, p, j) = (col / 16, col % 16, kk / TK, (kk % TK) / 2, kk % 2);
                out[col * self.k + kk] = bf16_value(self.data[(cb * steps + step) * TILE + p * 32 + c * 2 + j]);
            }
        }
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// Buffers of attention's packed keys and values, for the next call's: each call would
/// otherwise zero new ones (a SmolVLM image: 480 MB, with its per-task buffers ~2% of the time).
/// Shared, as the heads are packed on any thread. At most [`SPARES_B`].
static SPARE_B: std::sync::Mutex<Spares<u16>> = std::sync::Mutex::new(Spares::new());
/// Most buffers [`SPARE_B`] keeps: keys and values of 32 heads.
const SPARES_B: usize = 64;

/// Column block `cb` (16 columns, all `kp / 32` of its tiles) of a [`PackedB`] from the
/// columns' rows of `k` values: each row rounded, then its (k, k+1) pairs placed one tile row
/// apart (AMX's "VNNI" layout); columns past `n` and values past `k` are zeros.
fn fill_rows<'a>(panel: &mut [u16], cb: usize, n: usize, kp: usize, row: impl Fn(usize) -> &'a [f32]) {
    let mut rounded = vec![0u16; kp];
    let cols = 16.min(n.saturating_sub(cb * 16));
    for c in 0..cols {
        prefetch(row(cb * 16 + c));
    }
    for c in 0..cols {
        round_row::<false>(row(cb * 16 + c), &mut rounded);
        for (step, tile) in panel.chunks_mut(TILE).enumerate() {
            for p in 0..16 {
                let at = step * TK + 2 * p;
                tile[p * TK + 2 * c..][..2].copy_from_slice(&rounded[at..at + 2]);
            }
        }
    }
    if cols < 16 {
        for tile in panel.chunks_mut(TILE) {
            for p in 0..16 {
                tile[p * TK + 2 * cols..(p + 1) * TK].fill(0);
            }
        }
    }
}

/// A LayerNorm (with a bias) or RMSNorm a product applies to its left operand's rows as it
/// packs them ([`normed_linear`], [`mlp`]): the numbers of [`crate::kernels::layer_norm`] /
/// [`crate::kernels::rms_norm`], to the bit.
#[derive(Clone, Copy, Debug)]
pub struct RowNorm<'a> {
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub eps: f32,
}

/// A left operand `[m, k]` rounded to bfloat16 in tile-major order: for each 16 rows, for
/// each step of 32 along k, one tile (16 rows × 32 values, 1 KiB contiguous) — a tile load of
/// contiguous memory is about a third faster than one of 16 rows `k` apart. `m` is padded to
/// a multiple of 32 and `k` to `kp`, zeros in the padding.
struct PackedA {
    m: usize,
    kp: usize,
    data: Aligned<u16>,
}

thread_local! {
    /// Buffers of this thread's last [`PackedA`]s, for its next ones. A new buffer (tens of
    /// MB for a SmolVLM image's tiles) would be zeroed on every product, by the kernel for
    /// fresh pages or by `memset` for reused ones: about 8% of a `--quant bf16` image. Holds
    /// the [`SPARES`] largest left operands the thread has had at once (an MLP's input and
    /// its hidden activations, [`mlp`]).
    static SPARE_A: std::cell::RefCell<Spares<u16>> = const { std::cell::RefCell::new(Spares::new()) };
    /// A task's float32 accumulators when its output goes to a [`PackedA`] ([`Dest::Packed`]).
    static SPARE_ACC: std::cell::RefCell<Spares<f32>> = const { std::cell::RefCell::new(Spares::new()) };
}

/// Most buffers [`SPARE_A`] keeps.
const SPARES: usize = 2;

impl PackedA {
    /// A buffer for an `[m, k]` operand (`kp` ≥ k, a multiple of 32), from this thread's spares
    /// when one is large enough. Its contents are whatever was there: the caller writes every
    /// place.
    fn spare(m: usize, kp: usize) -> PackedA {
        let len = m.next_multiple_of(BLOCK) / 16 * (kp / TK * TILE);
        PackedA { m, kp, data: SPARE_A.with_borrow_mut(|s| s.take(len)) }
    }

    /// `a` row-major `[m, k]`, rounded in parallel blocks of 64 rows, into a spare buffer
    /// ([`PackedA::recycle`] gives it back); every place is written, the padding with zeros.
    fn from_rows(a: &[f32], m: usize, k: usize, kp: usize) -> PackedA {
        PackedA::from_rows_normed(a, m, k, kp, None)
    }

    /// [`PackedA::from_rows`] of `norm(a)` when a [`RowNorm`] is given: each row normalised
    /// into a float32 row the task keeps, then rounded, instead of the whole normalised
    /// operand written to memory and read back.
    fn from_rows_normed(a: &[f32], m: usize, k: usize, kp: usize, norm: Option<RowNorm>) -> PackedA {
        assert!(
            norm.is_none_or(|n| n.weight.len() == k && n.bias.is_none_or(|b| b.len() == k)),
            "norm of another width than {k}"
        );
        let mut pa = PackedA::spare(m, kp);
        let panel = kp / TK * TILE;
        let len = m.next_multiple_of(BLOCK) / 16 * panel;
        pa.data[..len].par_chunks_mut(4 * panel).enumerate().for_each(|(chunk, dst)| {
            let mut normed = vec![0f32; if norm.is_some() { k } else { 0 }];
            // This chunk's rows, the padding rows past `m` included.
            for r in 0..dst.len() / panel * 16 {
                let (row, at) = (64 * chunk + r, tiled_row(r, panel));
                let written = if row < m {
                    let src = &a[row * k..(row + 1) * k];
                    let src = match norm {
                        Some(n) => {
                            crate::kernels::norm_rows_into(src, n.weight, n.bias, n.eps, &mut normed);
                            &normed[..]
                        }
                        None => src,
                    };
                    round_row::<true>(src, &mut dst[at..]);
                    k
                } else {
                    0
                };
                for i in written..kp {
                    dst[at + tiled(i)] = 0;
                }
            }
        });
        pa
    }

    /// Keeps the buffer for this thread's next operands (the [`SPARES`] largest).
    fn recycle(self) {
        SPARE_A.with_borrow_mut(|s| s.keep(self.data, SPARES));
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
    // SAFETY: `out` holds the `m × n` floats `product` writes.
    unsafe {
        product(a, m, k, b, out.as_mut_ptr(), Finish { bias: None, epilogue: Epilogue::None, other: None, n: b.n }, 0)
    };
}

/// What is applied to each output value as it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// GELU, tanh form (`gelu_pytorch_tanh`), as [`gelu_in_place`] computes it.
    GeluTanh,
    /// SiLU (`x·σ(x)`), then times the other operand instead of plus: a gated MLP's
    /// `silu(x·W_gateᵀ) ⊙ up` in one pass.
    SiluTimes,
}

/// `epilogue(a[m, k] · Bᵀ + bias) + other` into a new `[m, n]` vector (a linear layer's
/// forward pass, with the block's residual connection when given; with
/// [`Epilogue::SiluTimes`], `silu(a · Bᵀ + bias) ⊙ other`), `a` rounded to bfloat16, float32
/// accumulation: the output is written once, never zeroed first. The first `dot_rows` rows
/// (a step's decoding rows) take the dot-product kernel, the rest tiles ([`product`]). Needs
/// [`available`]; panics on mismatched sizes, or on `SiluTimes` without `other`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    a: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    other: Option<&[f32]>,
    dot_rows: usize,
) -> Vec<f32> {
    assert!(available(), "AMX is not available");
    assert_eq!(k, b.k, "inner dimensions: {k} against {}", b.k);
    assert_eq!(a.len(), m * k);
    assert!(bias.is_none_or(|v| v.len() == b.n), "bias of another width");
    assert!(other.is_none_or(|v| v.len() == m * b.n), "second operand of another shape");
    assert!(epilogue != Epilogue::SiluTimes || other.is_some(), "a gate without its factor");
    let mut out = Vec::with_capacity(m * b.n);
    if m > 0 && b.n > 0 {
        // SAFETY: the capacity holds `m × n` floats; `product` writes every one of them before
        // the length is set.
        unsafe {
            product(a, m, k, b, out.as_mut_ptr(), Finish { bias, epilogue, other, n: b.n }, dot_rows);
            out.set_len(m * b.n);
        }
    }
    out
}

/// A two-layer MLP's `epilogue(a · W1ᵀ + b1) · W2ᵀ + b2 + other` (SigLIP's `fc2(gelu(fc1(x)))`
/// plus the block's residual) into a new `[m, n2]` vector, `a`'s rows normalised first when a
/// [`RowNorm`] is given (the block's pre-MLP norm, packed as it is applied). The hidden activations go from the
/// first product's output pass straight into the second product's operand, rounded to bfloat16
/// in its tile-major order ([`Dest::Packed`]), never to float32 memory: the same numbers as the
/// two [`linear`] calls, bit for bit, without writing and re-reading `m × hidden` floats (a
/// SmolVLM image's tiles: 160 MB a layer). Tiles only (no decoding rows). Needs [`available`];
/// panics on mismatched sizes.
#[allow(clippy::too_many_arguments)]
pub fn mlp(
    a: &[f32],
    m: usize,
    k: usize,
    norm: Option<RowNorm>,
    (w1, b1): (&PackedB, Option<&[f32]>),
    epilogue: Epilogue,
    (w2, b2): (&PackedB, Option<&[f32]>),
    other: Option<&[f32]>,
) -> Vec<f32> {
    assert!(available(), "AMX is not available");
    assert_eq!(k, w1.k, "inner dimensions: {k} against {}", w1.k);
    assert_eq!(w1.n, w2.k, "hidden width {} against {}", w1.n, w2.k);
    assert_eq!(a.len(), m * k);
    assert!(b1.is_none_or(|v| v.len() == w1.n) && b2.is_none_or(|v| v.len() == w2.n), "bias of another width");
    assert!(other.is_none_or(|v| v.len() == m * w2.n), "second operand of another shape");
    assert!(epilogue != Epilogue::SiluTimes, "a gate needs its factor");
    let mut out = Vec::with_capacity(m * w2.n);
    if m > 0 && w2.n > 0 {
        let pa = PackedA::from_rows_normed(a, m, k, w1.kp, norm);
        let mut hidden = PackedA::spare(m, w2.kp);
        // SAFETY: `hidden` holds `m` rows (rounded up to 32) of `w1.np = w2.kp` places, all
        // written by the first product before the second reads them; the capacity of `out`
        // holds `m × n2` floats, every one written before the length is set.
        unsafe {
            matmul_packed(
                &pa,
                w1,
                Dest::Packed(hidden.data.as_mut_ptr()),
                Finish { bias: b1, epilogue, other: None, n: w1.n },
            );
            let finish = Finish { bias: b2, epilogue: Epilogue::None, other, n: w2.n };
            matmul_packed(&hidden, w2, Dest::Rows(out.as_mut_ptr()), finish);
            out.set_len(m * w2.n);
        }
        pa.recycle();
        hidden.recycle();
    }
    out
}

/// `norm(a) · Bᵀ + bias` into a new `[m, n]` vector: a pre-norm block's projections (SigLIP's
/// q, k and v as one [`PackedB::concat`]), the normalised rows packed as they are computed,
/// never written as float32 — the same numbers as the norm's op and [`linear`], bit for bit.
/// Tiles only (no decoding rows). Needs [`available`]; panics on mismatched sizes.
pub fn normed_linear(a: &[f32], m: usize, k: usize, norm: RowNorm, b: &PackedB, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(available(), "AMX is not available");
    assert_eq!(k, b.k, "inner dimensions: {k} against {}", b.k);
    assert_eq!(a.len(), m * k);
    assert!(bias.is_none_or(|v| v.len() == b.n), "bias of another width");
    let mut out = Vec::with_capacity(m * b.n);
    if m > 0 && b.n > 0 {
        let pa = PackedA::from_rows_normed(a, m, k, b.kp, Some(norm));
        let finish = Finish { bias, epilogue: Epilogue::None, other: None, n: b.n };
        // SAFETY: the capacity holds `m × n` floats, every one written before the length is set.
        unsafe {
            matmul_packed(&pa, b, Dest::Rows(out.as_mut_ptr()), finish);
            out.set_len(m * b.n);
        }
        pa.recycle();
    }
    out
}

/// `a · Bᵀ`, finished, into `out`: the first `dot_rows` rows (decoding rows) as AVX-512 BF16
/// dot products, [`FEW_ROWS`] per pass over the weights, where the CPU has them; the rest on
/// tiles. The two kernels round their sums differently; a row's numbers depend only on which
/// one it takes, never on the other rows, so callers keep each row on one kernel whatever its
/// batch (the text model: a sequence's decoding rows on dot products, prompts on tiles).
///
/// # Safety
/// `out` must be valid for writes of `m × b.n` floats; every one of them is written.
unsafe fn product(a: &[f32], m: usize, k: usize, b: &PackedB, out: *mut f32, finish: Finish, dot_rows: usize) {
    let n = b.n;
    let dots = if has_avx512_bf16() { dot_rows.min(m) } else { 0 };
    // The output pass of rows `r0..` (its other operand from that row on).
    let from = |r0: usize| Finish { other: finish.other.map(|o| &o[r0 * n..]), ..finish };
    // SAFETY: the caller's contract (rows `r0..` of `out` from `out.add(r0 · n)`), and the CPU
    // check for the dot products.
    unsafe {
        for r0 in (0..dots).step_by(FEW_ROWS) {
            let rows = FEW_ROWS.min(dots - r0);
            matmul_few_rows(&a[r0 * k..(r0 + rows) * k], rows, k, b, out.add(r0 * n), from(r0));
        }
        if dots < m {
            let pa = PackedA::from_rows(&a[dots * k..], m - dots, k, b.kp);
            matmul_packed(&pa, b, Dest::Rows(out.add(dots * n)), from(dots));
            pa.recycle();
        }
    }
}

/// What a linear layer's output pass does to each product as it is written:
/// `epilogue(product + bias) + other` (a residual connection), or with
/// [`Epilogue::SiluTimes`] `silu(product + bias) · other`; `other` of the output's shape
/// `[m, n]`.
#[derive(Clone, Copy)]
struct Finish<'a> {
    bias: Option<&'a [f32]>,
    epilogue: Epilogue,
    other: Option<&'a [f32]>,
    n: usize,
}

impl Finish<'_> {
    /// Finishes in place `rows` rows of `cols` values at `dst`, `ld` apart: output rows
    /// `r0..r0 + rows`, columns `c0..c0 + cols`. A whole block per call, so that on AVX-512
    /// its 64 vectors' GELUs overlap instead of waiting on each other a row at a time, and the
    /// bias and residual adds are 16 lanes wide (a SmolVLM image with `--quant bf16`: ~10%
    /// less time than row by row).
    ///
    /// # Safety
    /// `dst` is valid for reads and writes of those `rows × cols` floats; `r0 + rows ≤ m`,
    /// `c0 + cols ≤ n`.
    #[inline(always)]
    unsafe fn block(&self, dst: *mut f32, ld: usize, r0: usize, rows: usize, c0: usize, cols: usize) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512_bf16() {
            // SAFETY: the caller's contract; the CPU has AVX-512F (checked above).
            return unsafe { finish_avx512(self, dst, ld, r0, rows, c0, cols) };
        }
        // SAFETY: the caller's contract.
        unsafe { self.block_scalar(dst, ld, r0, rows, c0, cols) }
    }

    /// [`Finish::block`] a value at a time (CPUs without AVX-512).
    ///
    /// # Safety
    /// As [`Finish::block`].
    unsafe fn block_scalar(&self, dst: *mut f32, ld: usize, r0: usize, rows: usize, c0: usize, cols: usize) {
        for r in 0..rows {
            // SAFETY: the caller's contract.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * ld), cols) };
            if let Some(b) = self.bias {
                for (v, b) in row.iter_mut().zip(&b[c0..]) {
                    *v += b;
                }
            }
            let other = self.other.map(|o| &o[(r0 + r) * self.n + c0..]);
            match (self.epilogue, other) {
                (Epilogue::SiluTimes, Some(o)) => {
                    for (v, x) in row.iter_mut().zip(o) {
                        *v = silu(*v) * x;
                    }
                }
                (epilogue, other) => {
                    if epilogue == Epilogue::GeluTanh {
                        gelu_in_place(row);
                    }
                    for (v, x) in row.iter_mut().zip(other.unwrap_or_default()) {
                        *v += x;
                    }
                }
            }
        }
    }
}

/// [`Finish::block`] on AVX-512, the same operations in the same order.
///
/// # Safety
/// As [`Finish::block`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_avx512(f: &Finish, dst: *mut f32, ld: usize, r0: usize, rows: usize, c0: usize, cols: usize) {
    use std::arch::x86_64::*;
    let gelu = f.epilogue == Epilogue::GeluTanh;
    let gate = f.epilogue == Epilogue::SiluTimes;
    for j in (0..cols).step_by(16) {
        let mask = lanes_left(cols, j);
        // SAFETY (every load and store below): the mask covers columns `c0 + j ..` up to
        // `c0 + cols ≤ n`, of the bias (`n` values), of the other operand's rows `r0 + r < m`
        // (`m × n`) and of `dst`'s rows (the caller's contract).
        unsafe {
            let bias = f.bias.map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0 + j)));
            for r in 0..rows {
                let p = dst.add(r * ld + j);
                let mut x = _mm512_maskz_loadu_ps(mask, p);
                if let Some(b) = bias {
                    x = _mm512_add_ps(x, b);
                }
                if gelu {
                    x = gelu_512(x);
                }
                if let Some(o) = f.other {
                    let o = _mm512_maskz_loadu_ps(mask, o.as_ptr().add((r0 + r) * f.n + c0 + j));
                    x = if gate { _mm512_mul_ps(silu_512(x), o) } else { _mm512_add_ps(x, o) };
                }
                _mm512_mask_storeu_ps(p, mask, x);
            }
        }
    }
}

/// Where [`matmul_packed`] writes its finished output.
#[derive(Clone, Copy)]
enum Dest {
    /// Float32 rows `[m, n]`.
    Rows(*mut f32),
    /// The left operand of a next product: `[m, n]` rounded to bfloat16 in [`PackedA`]'s
    /// tile-major order (`kp` = `n` rounded up to 32), its padding rows and columns zeros.
    Packed(*mut u16),
}

// SAFETY: a destination is shared by the tasks of one product, each writing its own blocks.
unsafe impl Send for Dest {}
// SAFETY: as above.
unsafe impl Sync for Dest {}

/// `out[m, n] = A · Bᵀ` for a packed `A` (`kp` equal to `B`'s).
///
/// Tasks of up to 16 × 16 output blocks (spans balanced so the last task is not a sliver); in
/// a task, for each [`K_CHUNK`] steps along k, each row block meets every column block of the
/// span: its two A panels (48 KiB) stay in L1 while the B panels stream from L2, the task's
/// whole B span (768 KiB at k = 768) staying there. Whole blocks accumulate from chunk to chunk
/// in the output itself, or for [`Dest::Packed`] in the task's float32 buffer (stored as float32
/// and loaded back: the same sums as one pass), and are finished after the last; blocks cut by
/// `m` or `n` go through a scratch block. A packed destination gets each finished block rounded
/// as [`PackedA::from_rows`] rounds its rows, so the next product sees the same operand as from
/// a float32 output.
///
/// # Safety
/// For [`Dest::Rows`], `out` must be valid for writes of `pa.m × b.n` floats; every one of
/// them is written, finished ([`Finish`]). For [`Dest::Packed`], valid for writes of the
/// `pa.m` rows (rounded up to 32) of `b.n` rounded up to 32 values, in [`PackedA`]'s layout;
/// every one of them is written.
unsafe fn matmul_packed(pa: &PackedA, b: &PackedB, out: Dest, finish: Finish) {
    debug_assert_eq!(pa.kp, b.kp);
    let (m, n) = (pa.m, b.n);
    let steps = b.kp / TK;
    let panel = steps * TILE;
    // The packed output's panel: `np` (n rounded up to 32) values per row.
    let out_panel = b.np / TK * TILE;
    let (mblocks, nblocks) = (m.div_ceil(BLOCK), b.np / BLOCK);
    let (mspan, nspan) = (balanced_span(mblocks, SPAN), balanced_span(nblocks, SPAN));
    let ntasks = nblocks.div_ceil(nspan);
    // Rounds the finished block at `src` (`BLOCK` rows `ld` apart, `rows × cols` of them output
    // rows `r0..`, columns `c0..`) into the packed output, zeros past `rows` and `cols`.
    let pack = |packed: *mut u16, src: &[f32], ld: usize, r0: usize, rows: usize, c0: usize, cols: usize| {
        for r in 0..BLOCK {
            // SAFETY: row `r0 + r` lies within the output's rows rounded up to 32 and columns
            // `c0..c0 + 32` within `np` (`c0` a multiple of 32): one piece of 32 contiguous
            // places of this task's own block (the caller's contract).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(packed.add(tiled_row(r0 + r, out_panel) + tiled(c0)), TK) };
            let written = if r < rows {
                round_row::<true>(&src[r * ld..r * ld + cols], dst);
                cols
            } else {
                0
            };
            dst[written..].fill(0);
        }
    };
    (0..mblocks.div_ceil(mspan) * ntasks).into_par_iter().for_each(|task| {
        let (mt, nt) = (task / ntasks, task % ntasks);
        let rows_of = |mb: usize| BLOCK.min(m - mb * BLOCK);
        let cols_of = |nb: usize| BLOCK.min(n - nb * BLOCK);
        let whole = |mb: usize, nb: usize| rows_of(mb) == BLOCK && cols_of(nb) == BLOCK;
        // Where row block `mb`'s and column block `nb`'s two panels each reach step `k0`.
        let panels = |mb: usize, nb: usize, k0: usize| {
            (pa.data[2 * mb * panel + k0 * TILE..].as_ptr(), b.data[2 * nb * panel + k0 * TILE..].as_ptr())
        };
        let (mbs, nbs) = (mt * mspan..((mt + 1) * mspan).min(mblocks), nt * nspan..((nt + 1) * nspan).min(nblocks));
        // The whole blocks' accumulators: the output's own rows, or this task's buffer.
        let mut acc = match out {
            Dest::Rows(_) => None,
            Dest::Packed(_) => {
                let len = mspan * nspan * BLOCK * BLOCK;
                Some(SPARE_ACC.with_borrow_mut(|s| s.take(len)))
            }
        };
        let acc_ld = nspan * BLOCK;
        let acc_of = |acc: &mut Option<Aligned<f32>>, mb: usize, nb: usize| match (out, acc) {
            // SAFETY (both): row `mb·32`, column `nb·32` of the output (row stride `n`) or of
            // the task's buffer (`mspan × nspan` blocks, row stride `acc_ld`).
            (Dest::Rows(o), _) => (unsafe { o.add(mb * BLOCK * n + nb * BLOCK) }, n),
            (_, acc) => {
                let acc = acc.as_mut().expect("a packed destination's buffer");
                let (i, j) = (mb - mbs.start, nb - nbs.start);
                (unsafe { acc.as_mut_ptr().add(i * BLOCK * acc_ld + j * BLOCK) }, acc_ld)
            }
        };
        let _tiles = imp::Tiles::configure();
        for k0 in (0..steps).step_by(K_CHUNK) {
            let (chunk, last) = (K_CHUNK.min(steps - k0), k0 + K_CHUNK >= steps);
            for mb in mbs.clone() {
                for nb in nbs.clone().filter(|&nb| whole(mb, nb)) {
                    let (r0, c0) = (mb * BLOCK, nb * BLOCK);
                    let (dst, ld) = acc_of(&mut acc, mb, nb);
                    // SAFETY: `pa.data` holds the two row panels of `steps` tiles from row tile
                    // `2·mb`, `b.data` the two column panels from column tile `2·nb`, each from
                    // step `k0` for `chunk ≤ steps − k0` steps; the 32 × 32 block at `dst` (row
                    // stride `ld`) is this task's alone, written by the first chunk before later
                    // ones load it and before `finish` reads it.
                    unsafe {
                        let (a0, b0) = panels(mb, nb, k0);
                        imp::block(a0, b0, panel, chunk, dst, ld, k0 > 0);
                        if last {
                            finish.block(dst, ld, r0, BLOCK, c0, BLOCK);
                            if let Dest::Packed(p) = out {
                                pack(
                                    p,
                                    std::slice::from_raw_parts(dst, (BLOCK - 1) * ld + BLOCK),
                                    ld,
                                    r0,
                                    BLOCK,
                                    c0,
                                    BLOCK,
                                );
                            }
                        }
                    }
                }
            }
        }
        if let Some(acc) = acc {
            SPARE_ACC.with_borrow_mut(|s| s.keep(acc, 1));
        }
        let mut scratch = BlockBuf([0f32; BLOCK * BLOCK]);
        for mb in mbs {
            for nb in nbs.clone().filter(|&nb| !whole(mb, nb)) {
                let (r0, c0, rows, cols) = (mb * BLOCK, nb * BLOCK, rows_of(mb), cols_of(nb));
                // SAFETY: as above (the padding rows and columns of the panels are zeros); the
                // scratch holds 32×32 floats, its first `rows` rows of `cols` finished as output
                // rows `r0 + r < m`, columns `c0 + cols ≤ n`.
                unsafe {
                    for k0 in (0..steps).step_by(K_CHUNK) {
                        let (a0, b0) = panels(mb, nb, k0);
                        imp::block(a0, b0, panel, K_CHUNK.min(steps - k0), scratch.0.as_mut_ptr(), BLOCK, k0 > 0);
                    }
                    finish.block(scratch.0.as_mut_ptr(), BLOCK, r0, rows, c0, cols);
                }
                match out {
                    Dest::Rows(o) => {
                        for (r, row) in scratch.0.chunks(BLOCK).take(rows).enumerate() {
                            // SAFETY: row `r0 + r < m`, columns `c0..c0 + cols ≤ n`; tasks write
                            // disjoint blocks. Written through the pointer (the memory may be
                            // uninitialised, so no slice is formed over it).
                            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), o.add((r0 + r) * n + c0), cols) };
                        }
                    }
                    Dest::Packed(p) => pack(p, &scratch.0, BLOCK, r0, rows, c0, cols),
                }
            }
        }
    });
}

/// Most output blocks per task along each side (see [`matmul_packed`]).
const SPAN: usize = 16;
/// Steps along k per pass over a task's blocks: two A panels of this many tiles (48 KiB) fit
/// in L1 beside the B tiles passing through.
const K_CHUNK: usize = 24;

/// The span that cuts `blocks` into as few tasks of at most `most` as possible, as even as
/// possible (25 blocks: 13 + 12, not 16 + 9).
fn balanced_span(blocks: usize, most: usize) -> usize {
    blocks.div_ceil(blocks.div_ceil(most).max(1)).max(1)
}

/// Decoding rows (one per sequence) go through AVX-512 BF16 dot products instead of tiles, this
/// many per pass over the weights. A tile product computes 32 rows whatever `m` is, while the
/// weights stream from memory either way (one decoding sequence: 31 → 22 ms a SmolVLM token);
/// the packed weights' tile rows are already the pairs `vdpbf16ps` takes, so they serve both.
const FEW_ROWS: usize = 8;

/// [`matmul_packed`] for `m ≤ FEW_ROWS` rows of `a` `[m, k]`, on CPUs with AVX-512 BF16: the
/// same rounding, float32 accumulation and output pass as there.
///
/// # Safety
/// `out` must be valid for writes of `m × b.n` floats; every one of them is written. The CPU
/// has AVX-512F and AVX-512 BF16.
unsafe fn matmul_few_rows(a: &[f32], m: usize, k: usize, b: &PackedB, out: *mut f32, finish: Finish) {
    debug_assert!((1..=FEW_ROWS).contains(&m));
    let mut rows = vec![0u16; m * b.kp];
    for (r, dst) in rows.chunks_mut(b.kp).enumerate() {
        round_row::<false>(&a[r * k..(r + 1) * k], dst);
    }
    let (n, steps) = (b.n, b.kp / TK);
    let out_ptr = SendPtr(out);
    // Tasks of 8 column blocks (128 outputs per row), so a step's few rows still spread.
    const PER_TASK: usize = 8;
    let blocks = n.div_ceil(16);
    (0..blocks.div_ceil(PER_TASK)).into_par_iter().for_each(|task| {
        for cb in task * PER_TASK..((task + 1) * PER_TASK).min(blocks) {
            let panel = &b.data[cb * steps * TILE..(cb + 1) * steps * TILE];
            let mut acc = [[0f32; 16]; FEW_ROWS];
            // SAFETY: the CPU has AVX-512F/BF16 (the caller's contract); `rows` holds `m`
            // rows of `kp`, the panel `steps` tiles.
            unsafe {
                match m {
                    1 => dot_panel::<1>(&rows, b.kp, panel, &mut acc),
                    2 => dot_panel::<2>(&rows, b.kp, panel, &mut acc),
                    3 => dot_panel::<3>(&rows, b.kp, panel, &mut acc),
                    4 => dot_panel::<4>(&rows, b.kp, panel, &mut acc),
                    5 => dot_panel::<5>(&rows, b.kp, panel, &mut acc),
                    6 => dot_panel::<6>(&rows, b.kp, panel, &mut acc),
                    7 => dot_panel::<7>(&rows, b.kp, panel, &mut acc),
                    _ => dot_panel::<8>(&rows, b.kp, panel, &mut acc),
                }
            }
            let (c0, cols) = (cb * 16, 16.min(n - cb * 16));
            // SAFETY: `acc` holds `m ≤ FEW_ROWS` rows of 16 ≥ `cols` floats, output rows
            // `0..m`, columns `c0..c0 + cols ≤ n`.
            unsafe { finish.block(acc.as_mut_ptr().cast(), 16, 0, m, c0, cols) };
            for (r, row) in acc[..m].iter().enumerate() {
                // SAFETY: row `r < m`, columns `c0..c0 + cols ≤ n`; tasks write disjoint
                // column blocks.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_ptr.get().add(r * n + c0), cols) };
            }
        }
    });
}

/// `acc[r][c] = Σ_k rows[r][k] · B[k][c]` for the first `M` rows and one column panel of 16
/// (all its tiles): each tile row holds the (k, k+1) pairs of the 16 columns, so one
/// `vdpbf16ps` with the row's pair broadcast adds two products to all 16 sums.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16; `rows` holds `M` rows of `kp` values and `panel`
/// `kp / 32` tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_panel<const M: usize>(rows: &[u16], kp: usize, panel: &[u16], acc: &mut [[f32; 16]; FEW_ROWS]) {
    use std::arch::x86_64::*;
    assert!(rows.len() >= M * kp && panel.len() >= kp / TK * TILE);
    let mut sums = [_mm512_setzero_ps(); M];
    for step in 0..kp / TK {
        for p in 0..16 {
            // SAFETY: tile `step` of the panel and pair `p` of each row's step lie inside the
            // slices (asserted above); unaligned reads.
            unsafe {
                let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    panel.as_ptr().add(step * TILE + p * TK).cast(),
                ));
                for (r, sum) in sums.iter_mut().enumerate() {
                    let pair = rows.as_ptr().add(r * kp + step * TK + 2 * p).cast::<i32>().read_unaligned();
                    let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                    *sum = _mm512_dpbf16_ps(*sum, a, b);
                }
            }
        }
    }
    for (r, sum) in sums.iter().enumerate() {
        // SAFETY: `acc[r]` holds 16 floats.
        unsafe { _mm512_storeu_ps(acc[r].as_mut_ptr(), *sum) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_panel<const M: usize>(_: &[u16], _: usize, _: &[u16], _: &mut [[f32; 16]; FEW_ROWS]) {
    unreachable!("AVX-512 BF16 is never available here")
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
    pub(crate) fn covers(&self, heads: usize, rows: usize, d: usize) -> bool {
        heads == 0 || rows == 0 || (heads - 1) * self.head_stride + (rows - 1) * self.row_stride + d <= self.data.len()
    }
}

/// `softmax(q·kᵀ·scale)·v` for each head, the products on AMX (operands rounded to
/// bfloat16), scores, exponentials and their sums in float32: `q` `[heads, rows, d]`, `k` and
/// `v` `[heads, keys, d]` (any strides, [`View`]); the output goes to `out`, element `(head,
/// row, i)` at `head·out_strides.0 + row·out_strides.1 + i`. Query row `r` of every head sees
/// the first `visible(r)` keys (all of them without a mask; a causal mask in prefill). Needs
/// [`available`]; panics where a view or `out` is too short for `shape`.
///
/// Blocked like flash attention's forward pass: each task takes 32 query rows, computes their
/// scores against every key, rounds `e^(scale·(s − max))` straight into the bfloat16 operand
/// and multiplies by the values, dividing each output row by its sum of exponentials last
/// (PyTorch's CPU flash attention rounds the same unnormalised values). A task's working set
/// (`32 × n` scores) stays in cache instead of a head's `n × n` scores passing through memory
/// twice, and its buffers are reused from task to task.
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
    // Every head's keys and values packed first, then one task per (head, 32 query rows), a
    // head's tasks next to each other so its operands stay in cache.
    let packed: Vec<(PackedB, PackedB)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let keys = PackedB::pack_rows(n_keys, d, |key| k.row(h, key, d));
            (keys, PackedB::pack_transposed(d, n_keys, |key| v.row(h, key, d)))
        })
        .collect();
    let (keys_np, steps_d, steps_n) = (packed[0].0.np, packed[0].0.kp / TK, packed[0].1.kp / TK);
    let row_blocks = n_rows.div_ceil(BLOCK);
    (0..heads * row_blocks).into_par_iter().for_each(|task| {
        // The thread's buffers, grown to this call's sizes; only what a block reads is ever
        // written: padding rows (past `n_rows`) give output rows nobody copies, and each
        // probability row is zeroed past its visible keys below.
        let mut bufs = ATTENTION_SPARE.take().unwrap_or_default();
        bufs.reserve(2 * steps_d * TILE, BLOCK * keys_np, 2 * steps_n * TILE);
        let TaskBuffers { qa, scores, probs } = &mut bufs;
        let (mut sums, mut scratch) = ([0f32; BLOCK], BlockBuf([0f32; BLOCK * BLOCK]));
        let (h, rb) = (task / row_blocks, task % row_blocks);
        let (keys, values) = &packed[h];
        let (r0, rows) = (rb * BLOCK, BLOCK.min(n_rows - rb * BLOCK));
        let seen: Vec<usize> = (r0..r0 + rows).map(|r| visible(r).clamp(1, n_keys)).collect();
        let most = seen.iter().copied().max().unwrap_or(n_keys);
        let steps_seen = most.div_ceil(TK);
        for r in 0..rows {
            prefetch(q.row(h, r0 + r, d));
        }
        for r in 0..rows {
            let at = tiled_row(r, steps_d * TILE);
            round_row::<true>(q.row(h, r0 + r, d), &mut qa[at..]);
            // The row's padding past `d`: zeros (the buffer held other shapes before).
            for i in d..steps_d * TK {
                qa[at + tiled(i)] = 0;
            }
        }
        let _tiles = imp::Tiles::configure();
        // Key blocks no row of this block sees are skipped (causal masks).
        for nb in 0..most.div_ceil(BLOCK) {
            // SAFETY: `qa` holds two row panels of `steps_d` tiles; the key panels `2·nb`,
            // `2·nb + 1` exist (`np` is a multiple of 32); `scores` holds 32 rows of `np`
            // floats.
            unsafe {
                imp::block(
                    qa.as_ptr(),
                    keys.data[2 * nb * steps_d * TILE..].as_ptr(),
                    steps_d * TILE,
                    steps_d,
                    scores[nb * BLOCK..].as_mut_ptr(),
                    keys.np,
                    false,
                )
            };
        }
        for (r, &vis) in seen.iter().enumerate() {
            let row = &mut probs[tiled_row(r, steps_n * TILE)..];
            sums[r] = exp_row_tiled(&scores[r * keys.np..r * keys.np + vis], scale, row);
            // Keys past the row's visible ones weigh nothing in `p · v`.
            for i in vis..steps_seen * TK {
                row[tiled(i)] = 0;
            }
        }
        for nb in 0..values.np / BLOCK {
            // SAFETY: as above, with `probs` two row panels of `steps_n` tiles, the first
            // `steps_seen ≤ steps_n` tiles of each read, likewise of the value panels; the
            // scratch 32×32.
            unsafe {
                imp::block(
                    probs.as_ptr(),
                    values.data[2 * nb * steps_n * TILE..].as_ptr(),
                    steps_n * TILE,
                    steps_seen,
                    scratch.0.as_mut_ptr(),
                    BLOCK,
                    false,
                )
            };
            let (c0, cols) = (nb * BLOCK, BLOCK.min(d - nb * BLOCK));
            for (r, &sum) in sums[..rows].iter().enumerate() {
                let inv = 1.0 / sum;
                // SAFETY: `(h, r0 + r, c0..c0 + cols)` lies inside `out` (checked above), and
                // no other task writes this head's rows `r0..r0 + rows`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(h * oh + (r0 + r) * or + c0), cols) };
                for (o, &x) in dst.iter_mut().zip(&scratch.0[r * BLOCK..r * BLOCK + cols]) {
                    *o = x * inv;
                }
            }
        }
        ATTENTION_SPARE.set(Some(bufs));
    });
    for (keys, values) in packed {
        keys.recycle();
        values.recycle();
    }
}

/// One [`attention_into`] task's operands: queries and probabilities in tile-major order (as
/// [`PackedA`], two row panels) and the scores of 32 rows.
#[derive(Default)]
struct TaskBuffers {
    qa: Aligned<u16>,
    scores: Aligned<f32>,
    probs: Aligned<u16>,
}

impl TaskBuffers {
    /// Grows each buffer to at least the given length (new ones zeroed).
    fn reserve(&mut self, qa: usize, scores: usize, probs: usize) {
        fn grow<T: TileValue>(b: &mut Aligned<T>, len: usize) {
            if b.len() < len {
                *b = Aligned::zeros(len);
            }
        }
        grow(&mut self.qa, qa);
        grow(&mut self.scores, scores);
        grow(&mut self.probs, probs);
    }
}

thread_local! {
    /// This thread's [`TaskBuffers`], kept from one attention task to the next: fresh ones per
    /// task were zeroed each time (with the packed keys and values, ~2% of a SmolVLM image).
    static ATTENTION_SPARE: std::cell::Cell<Option<TaskBuffers>> = const { std::cell::Cell::new(None) };
}

/// `e^(scale·(x − max x))` for the row `src`, rounded to bfloat16 into `dst` laid out as
/// [`round_row`]'s tile-major one; returns the sum of the unrounded values (at least 1: the maximum's
/// own term). Attention's probabilities before their normalisation. The exponential is
/// `2^t` split into an exact power of two and a degree-5 polynomial for the fraction (here
/// [`exp2`], on AVX-512 [`exp_row_tiled_avx512`]'s), fitted for relative error (about 2e-7,
/// near float32's rounding, far below bfloat16's 3.9e-3). Panics when `dst` is too short.
fn exp_row_tiled(src: &[f32], scale: f32, dst: &mut [u16]) -> f32 {
    let Some(last) = src.len().checked_sub(1) else { return 0.0 };
    assert!(tiled(last) < dst.len(), "a row of {} values for {} places", src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU supports AVX-512F, AVX-512BW, AVX-512DQ, AVX-512VL and AVX-512 BF16
        // (checked above); `dst` holds every tiled place of `src` (asserted above).
        return unsafe { exp_row_tiled_avx512(src, scale, dst) };
    }
    let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = if max.is_finite() { max } else { 0.0 };
    let c = scale * std::f32::consts::LOG2_E;
    let mut sum = 0.0;
    for (i, &x) in src.iter().enumerate() {
        let e = exp2((x - max) * c);
        sum += e;
        dst[tiled(i)] = bf16_bits(e);
    }
    sum
}

/// Coefficients of `2^f` on |f| ≤ ½, lowest first (relative least squares on Chebyshev nodes).
const EXP2_POLY: [f32; 6] = [1.000_000_1, 0.693_146_94, 0.240_221_22, 0.055_507_425, 0.009_675_46, 0.001_326_697];

/// Below this power of two the exponentials give 0, never a subnormal float: on Intel cores an
/// operation that produces or takes one goes through a microcode assist, and a layer's GELU
/// over large activations (`1 + 2^t` with `t` past −126) ran ~4× slower. `1 + 2^t` and the
/// bfloat16 of `2^t` are the same either way (the conversion flushes subnormals to zero).
const EXP2_LEAST: f32 = -126.0;

/// The largest power the sigmoid-style activations (`x / (1 + 2^t)`: GELU, SiLU) take: past
/// it the result is within 2^-100 of 0 (exact GELU and SiLU have long underflowed there). With
/// 2^126 the reciprocal of `1 + 2^t` came out subnormal, and each such lane went through a
/// microcode assist (the fused GELU over activations of ±30: ~3× slower).
const EXP2_MOST: f32 = 100.0;

/// `2^t`, 0 below [`EXP2_LEAST`] (and for NaN).
#[inline(always)]
fn exp2(t: f32) -> f32 {
    if t.is_nan() || t < EXP2_LEAST {
        return 0.0;
    }
    let n = t.round_ties_even();
    let f = t - n;
    let p = EXP2_POLY.iter().rev().fold(0f32, |acc, &c| acc.mul_add(f, c));
    p * 2f32.powi(n as i32)
}

/// [`exp2`] on 16 lanes, the same steps (`t` below [`EXP2_LEAST`] or NaN gives 0; the caller
/// keeps it below 128).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp2_512(t: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let least = _mm512_set1_ps(EXP2_LEAST);
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t, least);
    let t = _mm512_max_ps(t, least);
    let whole = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, whole);
    let mut p = _mm512_set1_ps(EXP2_POLY[5]);
    for &k in EXP2_POLY[..5].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
    }
    _mm512_maskz_scalef_ps(keep, p, whole)
}

/// `x·Φ(x)` in GELU's tanh form, `x / (1 + e^(−2u))` with `u = √(2/π)·(x + 0.044715·x³)`,
/// on a linear layer's output as it is written (bfloat16 operands: it is rounded to bfloat16
/// before the next product). The exponential as in [`exp_row_tiled`], `−2u·log₂e` as one
/// polynomial in `x`; on AVX-512 the division is a reciprocal and a Newton step. Within 1e-5
/// (relative) of the exact GELU, about a third fewer instructions than the float32 path's
/// kernel ([`crate::kernels`]), which keeps libm's accuracy.
fn gelu_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU supports AVX-512F (checked above).
        return unsafe { gelu_in_place_avx512(row) };
    }
    for x in row.iter_mut() {
        let t = *x * x.mul_add(*x * GELU_T3, GELU_T1);
        *x /= 1.0 + exp2(t.min(EXP2_MOST));
    }
}

/// `−2u·log₂e = x·(GELU_T1 + GELU_T3·x²)`.
const GELU_T1: f32 = -2.0 * std::f32::consts::LOG2_E * 0.797_884_6;
const GELU_T3: f32 = GELU_T1 * 0.044_715;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_in_place_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    let mut i = 0;
    while i < n {
        let mask = lanes_left(n, i);
        // SAFETY: the mask covers only the `min(16, n − i)` floats left in `row`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(i), mask, gelu_512(x));
        }
        i += 16;
    }
}

/// [`gelu_in_place`]'s GELU on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let t = _mm512_mul_ps(x, _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(GELU_T3), _mm512_set1_ps(GELU_T1)));
    let den = _mm512_add_ps(_mm512_set1_ps(1.0), exp2_512(_mm512_min_ps(t, _mm512_set1_ps(EXP2_MOST))));
    let r = _mm512_rcp14_ps(den);
    let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(1.0)), r);
    _mm512_mul_ps(x, r)
}

/// `x·σ(x) = x / (1 + 2^(−x·log₂e))`, the exponential as [`gelu_in_place`]'s (a gated MLP's
/// gate, finished as it is written; its factor is rounded to bfloat16 with the product after).
fn silu(x: f32) -> f32 {
    x / (1.0 + exp2((-x * std::f32::consts::LOG2_E).min(EXP2_MOST)))
}

/// [`silu`] on 16 lanes, the division as [`gelu_512`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn silu_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let t = _mm512_min_ps(_mm512_mul_ps(x, _mm512_set1_ps(-std::f32::consts::LOG2_E)), _mm512_set1_ps(EXP2_MOST));
    let den = _mm512_add_ps(_mm512_set1_ps(1.0), exp2_512(t));
    let r = _mm512_rcp14_ps(den);
    let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(1.0)), r);
    _mm512_mul_ps(x, r)
}

/// Coefficients of `2^f` on 0 ≤ f < 1, lowest first (relative least squares on Chebyshev
/// nodes; relative error 1.6e-7), for [`exp_row_tiled_avx512`].
const EXP2_UNIT_POLY: [f32; 6] =
    [0.999_999_94, 0.693_152_96, 0.240_154_53, 0.055_823_606, 0.008_992_584, 0.001_876_233];

/// [`exp_row_tiled`] on AVX-512: `2^t` as `2^⌊t⌋ · p(t − ⌊t⌋)`, the fraction from one
/// `vreduceps` and the power applied by `vscalefps` (which takes ⌊t⌋ itself); the maximum and
/// the sum over four accumulators each, so no add waits on the one before. Over 2 billion
/// exponentials per SmolVLM image.
///
/// # Safety
/// The CPU has AVX-512F/BW/VL/BF16 and AVX-512DQ; `dst.len() > tiled(src.len() - 1)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512dq")]
unsafe fn exp_row_tiled_avx512(src: &[f32], scale: f32, dst: &mut [u16]) -> f32 {
    use std::arch::x86_64::*;
    let n = src.len();
    let whole = n / 64 * 64;
    let mut most = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    for i in (0..whole).step_by(64) {
        for (j, m) in most.iter_mut().enumerate() {
            // SAFETY: `i + 16·j + 16 ≤ whole ≤ n`.
            *m = _mm512_max_ps(*m, unsafe { _mm512_loadu_ps(src.as_ptr().add(i + 16 * j)) });
        }
    }
    for i in (whole..n).step_by(16) {
        // SAFETY: the mask covers only the floats left in `src`.
        most[0] =
            _mm512_max_ps(most[0], unsafe { _mm512_mask_loadu_ps(most[0], lanes_left(n, i), src.as_ptr().add(i)) });
    }
    let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(most[0], most[1]), _mm512_max_ps(most[2], most[3])));
    let max = if max.is_finite() { max } else { 0.0 };
    let (c, max) = (_mm512_set1_ps(scale * std::f32::consts::LOG2_E), _mm512_set1_ps(max));
    // `e^(scale·(x − max))` for the 16 lanes at `i` under `mask`, rounded into `dst`; zero in
    // the lanes outside the mask.
    let mut exp16 = |i: usize, mask: u16| {
        // SAFETY: the mask covers only the floats left in `src`, and the as many places from
        // `tiled(i)` in `dst` (groups of 16 never straddle a piece of 32), the last of them at
        // most `tiled(n − 1)`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
            // x − max first: exact for the scores near the maximum, which weigh most.
            let t = _mm512_mul_ps(_mm512_sub_ps(x, max), c);
            let least = _mm512_set1_ps(EXP2_LEAST);
            let keep = mask & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t, least);
            let t = _mm512_max_ps(t, least);
            let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
            let mut p = _mm512_set1_ps(EXP2_UNIT_POLY[5]);
            for &k in EXP2_UNIT_POLY[..5].iter().rev() {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
            }
            let e = _mm512_maskz_scalef_ps(keep, p, t);
            let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(tiled(i)).cast(), mask, b);
            e
        }
    };
    let mut sums = [_mm512_setzero_ps(); 4];
    for i in (0..whole).step_by(64) {
        for (j, sum) in sums.iter_mut().enumerate() {
            *sum = _mm512_add_ps(*sum, exp16(i + 16 * j, u16::MAX));
        }
    }
    for i in (whole..n).step_by(16) {
        sums[0] = _mm512_add_ps(sums[0], exp16(i, lanes_left(n, i)));
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_add_ps(sums[2], sums[3])))
}

/// candle's side: `x · Wᵀ` for a float32 CPU tensor `x` `[.., in]` and a packed `W`.
pub(crate) struct Linear {
    pub weight: std::sync::Arc<PackedB>,
    /// Added in the same pass as the product's output is written.
    pub bias: Option<std::sync::Arc<[f32]>>,
    pub epilogue: Epilogue,
    /// The input's first rows that are decoding rows ([`linear`]'s `dot_rows`).
    pub dot_rows: usize,
}

impl Linear {
    /// The op's CPU pass: `x` `[.., in]` → `[.., out]`, with `other` of the output's shape
    /// ([`linear`]'s second operand).
    fn run(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
        other: Option<(&candle_core::CpuStorage, &candle_core::Layout)>,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let msg = |m: &str| candle_core::Error::Msg(format!("AMX linear: {m}"));
        let x = crate::kernels::f32_operand(s, l, "AMX linear", "input")?;
        let k = *l.shape().dims().last().unwrap_or(&0);
        if k != self.weight.k {
            return Err(msg(&format!("input of width {k} for a layer of {}", self.weight.k)));
        }
        let (m, shape) = rows_and_output(x, l, k, self.weight.n);
        let other = match other {
            None => None,
            Some((rs, rl)) if rl.shape().dims() == shape => {
                Some(crate::kernels::f32_operand(rs, rl, "AMX linear", "second operand")?)
            }
            Some((_, rl)) => {
                return Err(msg(&format!(
                    "second operand of shape {:?} for an output of {shape:?}",
                    rl.shape().dims()
                )));
            }
        };
        let out = linear(x, m, k, &self.weight, self.bias.as_deref(), self.epilogue, other, self.dot_rows);
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }
}

/// A custom op's input `x` (`[.., k]`, layout `l`) as rows: their count, and the output's
/// dimensions with the last one `n`.
fn rows_and_output(x: &[f32], l: &candle_core::Layout, k: usize, n: usize) -> (usize, Vec<usize>) {
    let mut shape = l.shape().dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    (x.len() / k.max(1), shape)
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

/// The same layer with a second operand of the output's shape, `(x, other)`: the block's
/// residual added as the output is written, or with [`Epilogue::SiluTimes`] the gated MLP's
/// up projection multiplied.
impl candle_core::CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "mmloop-amx-linear-second"
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

/// candle's side of [`mlp`]: `(x, residual)` → `residual + fc2(epilogue(fc1(x)))`, the layers'
/// own ops ([`Linear`], `fc1` with the activation, `fc2` without) fused.
pub(crate) struct Mlp {
    /// The block's pre-MLP norm, applied as the input is packed.
    pub norm: Option<NormWeights>,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A norm's weights for [`RowNorm`]: LayerNorm with a bias, RMSNorm without.
pub(crate) struct NormWeights {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub eps: f32,
}

impl NormWeights {
    fn row_norm(&self) -> RowNorm<'_> {
        RowNorm { weight: &self.weight, bias: self.bias.as_deref(), eps: self.eps }
    }
}

/// candle's side of [`normed_linear`]: `x` → `norm(x) · Wᵀ + b`.
pub(crate) struct NormedLinear {
    pub norm: NormWeights,
    pub weight: std::sync::Arc<PackedB>,
    pub bias: Option<std::sync::Arc<[f32]>>,
}

impl candle_core::CustomOp1 for NormedLinear {
    fn name(&self) -> &'static str {
        "mmloop-amx-normed-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = crate::kernels::f32_operand(s, l, "AMX normed linear", "input")?;
        let k = *l.shape().dims().last().unwrap_or(&0);
        if k != self.weight.k || self.norm.weight.len() != k {
            candle_core::bail!(
                "AMX normed linear: input {:?} for a norm of {} and a layer of width {}",
                l.shape().dims(),
                self.norm.weight.len(),
                self.weight.k
            );
        }
        let (m, shape) = rows_and_output(x, l, k, self.weight.n);
        let out = normed_linear(x, m, k, self.norm.row_norm(), &self.weight, self.bias.as_deref());
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }
}

impl candle_core::CustomOp2 for Mlp {
    fn name(&self) -> &'static str {
        "mmloop-amx-mlp"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
        rs: &candle_core::CpuStorage,
        rl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let msg = |m: &str| candle_core::Error::Msg(format!("AMX MLP: {m}"));
        let (w1, w2) = (&self.fc1.weight, &self.fc2.weight);
        let x = crate::kernels::f32_operand(s, l, "AMX MLP", "input")?;
        let residual = crate::kernels::f32_operand(rs, rl, "AMX MLP", "residual")?;
        let k = *l.shape().dims().last().unwrap_or(&0);
        let (m, shape) = rows_and_output(x, l, k, w2.n);
        if k != w1.k || w1.n != w2.k || rl.shape().dims() != shape {
            return Err(msg(&format!(
                "input {:?} and residual {:?} for layers [{}, {}] and [{}, {}]",
                l.shape().dims(),
                rl.shape().dims(),
                w1.n,
                w1.k,
                w2.n,
                w2.k
            )));
        }
        if self.norm.as_ref().is_some_and(|n| n.weight.len() != k) {
            return Err(msg(&format!("a norm of another width than the input {:?}", l.shape().dims())));
        }
        let out = mlp(
            x,
            m,
            k,
            self.norm.as_ref().map(NormWeights::row_norm),
            (w1, self.fc1.bias.as_deref()),
            self.fc1.epilogue,
            (w2, self.fc2.bias.as_deref()),
            Some(residual),
        );
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }
}

/// `silu(g) ⊙ factor` for `(g, factor)` of one shape, with the output pass's own SiLU and order
/// ([`Epilogue::SiluTimes`]): a gated MLP's gate when its products could not take the fused
/// pass (an adapter active in the batch), so that rows without an adapter equal the fused
/// pass's to the bit — last-bit differences would flip some of the next product's bfloat16
/// roundings and move the answer.
pub(crate) struct SiluTimes;

impl candle_core::CustomOp2 for SiluTimes {
    fn name(&self) -> &'static str {
        "mmloop-amx-silu-times"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
        fs: &candle_core::CpuStorage,
        fl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let msg = |m: &str| candle_core::Error::Msg(format!("AMX SiLU gate: {m}"));
        let g = crate::kernels::f32_operand(s, l, "AMX SiLU gate", "input")?;
        let factor = crate::kernels::f32_operand(fs, fl, "AMX SiLU gate", "factor")?;
        if l.shape() != fl.shape() {
            return Err(msg(&format!("factor of shape {:?} for {:?}", fl.dims(), l.dims())));
        }
        let n = *l.dims().last().unwrap_or(&1);
        let mut out = g.to_vec();
        if n > 0 {
            let finish = Finish { bias: None, epilogue: Epilogue::SiluTimes, other: Some(factor), n };
            // Blocks of rows, as the fused pass finishes them (a block's columns stay in cache).
            out.par_chunks_mut(BLOCK * n).enumerate().for_each(|(i, rows)| {
                // SAFETY: `rows` holds `len / n` whole rows of `n` floats from output row
                // `BLOCK·i`; `factor` holds every row.
                unsafe { finish.block(rows.as_mut_ptr(), n, BLOCK * i, rows.len() / n, 0, n) };
            });
        }
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
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

    /// One 32×32 output block into `c` (row stride `ldc` floats), added to what `c` holds when
    /// `accumulate`: `a` and `a.add(panel)` two row panels of `steps` tiles each (16 rows × 32
    /// k, [`super::PackedA`]'s layout), `b` and `b.add(panel)` two column panels
    /// ([`super::PackedB`]'s).
    ///
    /// Tile loads, not products, bound this loop (an aligned 1 KiB load costs about as much as
    /// a product, and they hardly overlap), so each step issues both B loads first and each A
    /// load just before the two products that use it. B's loads carry the hint that the tile
    /// is not reused soon (`tileloaddt1`): the callers pass a row block's A panels past many
    /// column blocks, and B's lines left out of L1 keep A's there (one core, 2048×768 by
    /// 768×3072: 1,180 → 1,470 GFLOP/s).
    ///
    /// # Safety
    /// Tiles configured ([`Tiles`]); `a`, `a.add(panel)`, `b` and `b.add(panel)` readable for
    /// `steps` KiB each, `c` writable (and, when `accumulate`, readable) for 32 rows of
    /// `ldc ≥ 32` floats.
    #[inline(never)]
    pub unsafe fn block(
        a: *const u16,
        b: *const u16,
        panel: usize,
        steps: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        const TILE: usize = super::TILE;
        unsafe {
            let (a1, b1) = (a.add(panel), b.add(panel));
            // The four accumulator tiles' places in `c` and its row stride in bytes.
            let (c1, c2, c3, sc) = (c.add(16), c.add(16 * ldc), c.add(16 * ldc + 16), ldc * 4);
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{c0} + {sc}*1]",
                    "tileloadd tmm1, [{c1} + {sc}*1]",
                    "tileloadd tmm2, [{c2} + {sc}*1]",
                    "tileloadd tmm3, [{c3} + {sc}*1]",
                    c0 = in(reg) c,
                    c1 = in(reg) c1,
                    c2 = in(reg) c2,
                    c3 = in(reg) c3,
                    sc = in(reg) sc,
                    options(nostack, readonly),
                );
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            for s in 0..steps {
                asm!(
                    "tileloaddt1 tmm6, [{b0} + {stride}*1]",
                    "tileloaddt1 tmm7, [{b1} + {stride}*1]",
                    "tileloadd tmm4, [{a0} + {stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {stride}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(s * TILE),
                    a1 = in(reg) a1.add(s * TILE),
                    b0 = in(reg) b.add(s * TILE),
                    b1 = in(reg) b1.add(s * TILE),
                    stride = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {sc}*1], tmm0",
                "tilestored [{c1} + {sc}*1], tmm1",
                "tilestored [{c2} + {sc}*1], tmm2",
                "tilestored [{c3} + {sc}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c1,
                c2 = in(reg) c2,
                c3 = in(reg) c3,
                sc = in(reg) sc,
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
    pub unsafe fn block(_: *const u16, _: *const u16, _: usize, _: usize, _: *mut f32, _: usize, _: bool) {
        unreachable!("AMX is never available here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU runs the tile kernel; says so where it does not (the test then checks
    /// nothing: `Linear` falls back to candle's matmul there).
    fn exercised() -> bool {
        if !available() {
            eprintln!("AMX not available on this CPU: the kernel is not exercised");
        }
        available()
    }

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
        for len in [x.len(), 15, 16, 17, 33, 1] {
            // Exactly the places of a row of `len` values in a tile-major operand.
            let mut got = vec![7u16; tiled(len - 1) + 1];
            round_row::<true>(&x[..len], &mut got);
            for (at, &g) in got.iter().enumerate() {
                if at % TILE >= TK {
                    assert_eq!(g, 7, "written between the pieces, at {at}");
                }
            }
            for (i, &v) in x[..len].iter().enumerate() {
                let g = got[tiled(i)];
                // AVX-512 BF16's instruction flushes subnormals to (signed) zero.
                let flushed = v.is_subnormal() && g == (v.to_bits() >> 16) as u16 & 0x8000;
                assert!(g == bf16_bits(v) || flushed, "{v:e}: {g:#x} against {:#x}", bf16_bits(v));
            }
        }
    }

    /// Attention's exponentials: each rounded value within one bfloat16 step of the exact
    /// one's rounding (a value near a rounding boundary may land either side), their sum within
    /// 1e-6 of the exact sum, zeros far below the maximum, in the tile-major layout.
    #[test]
    fn exponentials_are_near_exact_and_tiled() {
        for (len, scale) in [(1, 0.125f32), (15, 1.0), (33, 0.125), (100, 0.3), (1000, 0.125)] {
            let mut x: Vec<f32> = operand(len, len as u32).iter().map(|v| v * 40.0).collect();
            let far = len / 2 + 1; // e^(−1250): nothing
            if far < len {
                x[far] = -1e4;
            }
            let mut got = vec![7u16; tiled(len - 1) + 1];
            let sum = exp_row_tiled(&x, scale, &mut got);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exact: Vec<f64> = x.iter().map(|&v| ((v as f64 - max) * scale as f64).exp()).collect();
            let want: f64 = exact.iter().sum();
            assert!((sum as f64 - want).abs() <= 1e-6 * want, "{len}: sum {sum} against {want}");
            for (i, &e) in exact.iter().enumerate() {
                let (g, w) = (got[tiled(i)] as i32, bf16_bits(e as f32) as i32);
                assert!((g - w).abs() <= 1, "{len}, {i}: {g:#x} against {w:#x}");
            }
            if far < len {
                assert_eq!(got[tiled(far)], 0);
            }
        }
        // 2^t past −126 would be subnormal: zero instead (the sum and the bfloat16 values are
        // the same), from the scalar and the 16-lane exponential alike.
        let ts: Vec<f32> = (0..16).map(|i| -126.0 - 1.5 * i as f32).collect();
        let scalar: Vec<f32> = ts.iter().map(|&t| exp2(t)).collect();
        assert!(
            (scalar[0] - f32::MIN_POSITIVE).abs() < 1e-6 * f32::MIN_POSITIVE && scalar[1..].iter().all(|&e| e == 0.0)
        );
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            let mut lanes = [0f32; 16];
            // SAFETY: the CPU has AVX-512F (checked above); 16 floats each way.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(lanes.as_mut_ptr(), exp2_512(_mm512_loadu_ps(ts.as_ptr())));
            }
            assert_eq!(lanes.to_vec(), scalar, "16 lanes against one at a time");
        }
    }

    /// The output pass's GELU against the exact one (float64), −100 … 100 with a ragged tail.
    #[test]
    fn fused_gelu_is_within_1e5_of_exact() {
        let x: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 20.0).collect();
        let mut got = x.clone();
        gelu_in_place(&mut got);
        for (&v, &g) in x.iter().zip(&got) {
            let v = v as f64;
            // 0.5·x·(1 + tanh u), without tanh's cancellation far below zero.
            let want = v / (1.0 + (-2.0 * 0.797_884_560_802_865_4 * (v + 0.044_715 * v * v * v)).exp());
            // Far below zero, |x|·2^-100 (`EXP2_MOST`) where the exact value has underflowed.
            let floor = v.abs() * 2f64.powi(-(EXP2_MOST as i32));
            assert!((g as f64 - want).abs() <= 1e-5 * want.abs() + floor, "gelu({v}) = {g}, exact {want}");
        }
    }

    /// A row's numbers do not depend on its batch: prompt rows (tiles) equal bitwise whatever
    /// decoding rows precede them and however many rows the product has; a decoding row (dot
    /// products) alone equals its place among others and ahead of prompt rows; and the two
    /// kernels agree but for float32 summation order.
    #[test]
    fn rows_do_not_depend_on_their_batch() {
        if !exercised() {
            return;
        }
        let (m, k, n) = (40, 200, 70);
        let (a, w, bias, res) = (operand(m * k, 11), operand(n * k, 12), operand(n, 13), operand(m * n, 14));
        let b = PackedB::from_rows(&w, n, k);
        let run = |from: usize, rows: usize, dots: usize| {
            let (a, res) = (&a[from * k..(from + rows) * k], &res[from * n..(from + rows) * n]);
            linear(a, rows, k, &b, Some(&bias), Epilogue::GeluTanh, Some(res), dots)
        };
        let tiles = run(0, m, 0);
        // Rows 0..11 decoding (a pass of 8 and one of 3), the rest prompt rows.
        let mixed = run(0, m, 11);
        assert_eq!(mixed[11 * n..], tiles[11 * n..]);
        assert_eq!(run(11, m - 11, 0), tiles[11 * n..]);
        for r in [0, 3, 7, 8, 10] {
            assert_eq!(run(r, 1, 1), mixed[r * n..(r + 1) * n], "decoding row {r}");
            assert_eq!(run(r, 2, 2)[..n], mixed[r * n..(r + 1) * n], "decoding row {r} with one more");
        }
        for (i, (&x, &y)) in mixed[..11 * n].iter().zip(&tiles).enumerate() {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "[{}, {}]: {x} against {y}", i / n, i % n);
        }
    }

    /// The output pass against float64: `gelu(a·Wᵀ + bias) + residual` on whole and partial
    /// 32×32 blocks and on a decode step's few rows.
    #[test]
    fn finished_outputs_match_float64() {
        if !exercised() {
            return;
        }
        // (m, k, n, decoding rows): whole and partial blocks, decoding rows alone and ahead of
        // tile rows (the other operand read from their row on).
        for (&(m, k, n, dots), epilogue) in [(40, 200, 70, 0), (32, 64, 32, 0), (3, 200, 70, 3), (40, 200, 70, 5)]
            .iter()
            .flat_map(|shape| [(shape, Epilogue::GeluTanh), (shape, Epilogue::SiluTimes)])
        {
            let (a, w, bias, other) = (operand(m * k, 21), operand(n * k, 22), operand(n, 23), operand(m * n, 24));
            let got = linear(&a, m, k, &PackedB::from_rows(&w, n, k), Some(&bias), epilogue, Some(&other), dots);
            let (ar, wr) = (rounded(&a), rounded(&w));
            for r in 0..m {
                for c in 0..n {
                    let v = (0..k).map(|i| ar[r * k + i] as f64 * wr[c * k + i] as f64).sum::<f64>() + bias[c] as f64;
                    let o = other[r * n + c] as f64;
                    let want = if epilogue == Epilogue::SiluTimes {
                        v / (1.0 + (-v).exp()) * o
                    } else {
                        let u = 0.797_884_560_802_865_4 * (v + 0.044_715 * v * v * v);
                        v / (1.0 + (-2.0 * u).exp()) + o
                    };
                    let g = got[r * n + c] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                        "{epilogue:?} {m}x{k}x{n} [{r},{c}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// The fused MLP equals its two products to the bit: ragged rows and hidden widths (the
    /// packed hidden operand's padding written as zeros), products past one k chunk (fails when
    /// the task's accumulators are not carried between chunks: checked) and of more than one
    /// task, each into spare buffers a larger NaN MLP has just left behind (fails when the hidden
    /// operand's padding columns are left as they were: checked).
    #[test]
    fn a_fused_mlp_equals_its_two_products() {
        if !exercised() {
            return;
        }
        // A NaN MLP as large as any below fills this thread's spare buffers with NaN.
        let nan = vec![f32::NAN; 1000 * 1000];
        let (nan1, nan2) = (PackedB::from_rows(&nan[..1000 * 800], 1000, 800), PackedB::from_rows(&nan, 1000, 1000));
        let dirty = || mlp(&nan[..600 * 800], 600, 800, None, (&nan1, None), Epilogue::None, (&nan2, None), None);
        for (m, k, hidden, n) in [(40, 200, 70, 50), (600, 800, 900, 40), (32, 64, 32, 32), (5, 33, 1000, 17)] {
            let (a, w1, b1) = (operand(m * k, 41), operand(hidden * k, 42), operand(hidden, 43));
            let (w2, b2, other) = (operand(n * hidden, 44), operand(n, 45), operand(m * n, 46));
            let (p1, p2) = (PackedB::from_rows(&w1, hidden, k), PackedB::from_rows(&w2, n, hidden));
            let h = linear(&a, m, k, &p1, Some(&b1), Epilogue::GeluTanh, None, 0);
            let want = linear(&h, m, hidden, &p2, Some(&b2), Epilogue::None, Some(&other), 0);
            dirty();
            let got = mlp(&a, m, k, None, (&p1, Some(&b1)), Epilogue::GeluTanh, (&p2, Some(&b2)), Some(&other));
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "{m}x{k}x{hidden}x{n}: fused MLP differs from its two products"
            );
        }
    }

    /// A norm applied as the operand is packed equals the norm's own kernel then the product, and
    /// layers side by side ([`PackedB::concat`]) equal each alone, all to the bit; LayerNorm into
    /// q/k/v-like parts, RMSNorm into an MLP.
    #[test]
    fn normed_and_side_by_side_products_equal_their_parts() {
        if !exercised() {
            return;
        }
        let (m, k) = (70, 96);
        let x: Vec<f32> = operand(m * k, 51).iter().map(|v| 3.0 * v + 1.5).collect();
        let (lw, lb) = (operand(k, 52), operand(k, 53));
        let normed = |bias: Option<&[f32]>| {
            let mut h = vec![0f32; m * k];
            crate::kernels::norm_rows_into(&x, &lw, bias, 1e-6, &mut h);
            h
        };
        let same =
            |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
        let widths = [64, 32, 96];
        let parts: Vec<PackedB> =
            widths.iter().enumerate().map(|(i, &n)| PackedB::from_rows(&operand(n * k, 60 + i as u32), n, k)).collect();
        let total: usize = widths.iter().sum();
        let bias = operand(total, 70);
        let fused = PackedB::concat(&parts.iter().collect::<Vec<_>>()).expect("widths of 32s");
        let norm = RowNorm { weight: &lw, bias: Some(&lb), eps: 1e-6 };
        let got = normed_linear(&x, m, k, norm, &fused, Some(&bias));
        let h = normed(Some(&lb));
        let mut at = 0;
        for (p, &n) in parts.iter().zip(&widths) {
            let want = linear(&h, m, k, p, Some(&bias[at..at + n]), Epilogue::None, None, 0);
            let mine: Vec<f32> = (0..m).flat_map(|r| got[r * total + at..r * total + at + n].to_vec()).collect();
            assert!(same(&mine, &want), "columns {at}..{} differ from their layer alone", at + n);
            at += n;
        }
        assert!(PackedB::concat(&[&PackedB::from_rows(&operand(40 * k, 80), 40, k)]).is_none(), "a ragged width");
        let (p1, p2) =
            (PackedB::from_rows(&operand(50 * k, 81), 50, k), PackedB::from_rows(&operand(20 * 50, 82), 20, 50));
        let rms = RowNorm { weight: &lw, bias: None, eps: 1e-6 };
        let want = mlp(&normed(None), m, k, None, (&p1, None), Epilogue::GeluTanh, (&p2, None), None);
        let got = mlp(&x, m, k, Some(rms), (&p1, None), Epilogue::GeluTanh, (&p2, None), None);
        assert!(same(&got, &want), "an MLP's norm applied as it packs");
    }

    /// The output pass on AVX-512 and a value at a time: the same operations in the same order
    /// (the GELU the one [`gelu_in_place`] chooses), so equal, on a partial block (ragged
    /// columns, rows from 5 on).
    #[test]
    fn finishing_a_block_is_the_same_on_avx512_and_scalar() {
        let (m, n, ld) = (40, 70, 80);
        let (bias, res) = (operand(n, 31), operand(m * n, 32));
        let block: Vec<f32> = operand(27 * ld, 33).iter().map(|v| v * 4.0).collect();
        let (r0, rows, c0, cols) = (5, 27, 32, 38);
        let finish = Finish { bias: Some(&bias), epilogue: Epilogue::SiluTimes, other: Some(&res), n };
        let (mut scalar, mut fast) = (block.clone(), block.clone());
        // SAFETY: `rows` rows of `cols ≤ ld` floats, `ld` apart; rows and columns inside m × n.
        unsafe { finish.block_scalar(scalar.as_mut_ptr(), ld, r0, rows, c0, cols) };
        // SAFETY: as above.
        unsafe { finish.block(fast.as_mut_ptr(), ld, r0, rows, c0, cols) };
        // The gate's division: exact in the scalar path, a reciprocal and a Newton step on AVX-512.
        assert!(fast.iter().zip(&scalar).all(|(f, s)| (f - s).abs() <= 1e-6 * (1.0 + s.abs())));
        let finish = Finish { epilogue: Epilogue::GeluTanh, ..finish };
        let mut scalar = block.clone();
        // SAFETY: as above.
        unsafe { finish.block_scalar(scalar.as_mut_ptr(), ld, r0, rows, c0, cols) };
        let mut fast = block.clone();
        // SAFETY: as above.
        unsafe { finish.block(fast.as_mut_ptr(), ld, r0, rows, c0, cols) };
        assert_eq!(fast, scalar);
        // Columns past `cols` untouched.
        assert!((0..rows).all(|r| fast[r * ld + cols..(r + 1) * ld] == block[r * ld + cols..(r + 1) * ld]));
        assert_ne!(fast, block);
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
        assert_eq!(PackedB::pack_transposed(n, k, |kk| &v[kk * n..(kk + 1) * n]).unpack(), rounded(&w));
        assert_eq!(PackedB::pack_rows(n, k, |col| &w[col * k..(col + 1) * k]).unpack(), rounded(&w));
    }

    /// Every size class: below one tile, ragged edges in all three dimensions, several tasks.
    #[test]
    fn products_match_float64_on_rounded_operands() {
        if !exercised() {
            return;
        }
        // A product of NaNs first: the thread's spare left-operand buffer then holds NaN
        // everywhere, and the products below, packed into it, must write all of their padding.
        let (m, k, n) = (300, 1000, 40);
        let mut out = vec![0f32; m * n];
        matmul(&vec![f32::NAN; m * k], m, k, &PackedB::from_rows(&operand(n * k, 3), n, k), &mut out);
        assert!(out.iter().all(|v| v.is_nan()));
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 64, 17),
            (3, 100, 300),
            (4, 33, 31),
            (5, 33, 31),
            (32, 32, 32),
            (300, 100, 70),
            (257, 768, 600),
            // k past one chunk of steps (24 + 8), blocks cut by m and n.
            (70, 1000, 100),
            // More blocks than one task's span along both sides (35 × 17).
            (1100, 40, 530),
        ] {
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
