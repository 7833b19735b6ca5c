//! One SigLIP layer's AMX ops at a SmolVLM image's shape (13 tiles of 1024 patches, width 768,
//! MLP 3072, 12 heads of 64): milliseconds and GFLOP/s per op, and per image (× 12 layers). The
//! model runs the fused ones (norm + q/k/v, norm + MLP + residual, o + residual, attention).
//! Twice: inputs of ±0.1, and of ±1, where fc1's outputs reach ±30 (large activations, as
//! trained checkpoints have; the GELU's exponentials then reach the float32 range's ends).
//!
//!     MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=4294967295 \
//!         cargo run --release -p mmloop-models --example vision_layer
//!
//! The variables keep glibc from handing each op's output (up to 160 MB) back to the OS and
//! faulting it in again on the next call (`mmloop` itself keeps freed memory: mimalloc).
use mmloop_models::amx::{self, Epilogue, Heads, PackedB, RowNorm, View};

/// `n` values in [−scale, scale] (xorshift).
fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s as f32 / u32::MAX as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn time(label: &str, flop: f64, mut f: impl FnMut()) {
    const REPS: usize = 5;
    f();
    let t = std::time::Instant::now();
    for _ in 0..REPS {
        f();
    }
    let s = t.elapsed().as_secs_f64() / REPS as f64;
    println!("  {label:44} {:7.1} ms {:7.0} GFLOP/s   per image {:5.0} ms", s * 1e3, flop / s / 1e9, s * 12e3);
}

fn main() {
    if !amx::available() {
        println!("AMX is not available on this CPU");
        return;
    }
    let (tiles, n, d, heads, hd, hidden) = (13, 1024, 768, 12, 64, 3072);
    let m = tiles * n;
    let (w, w1, w2) = (
        PackedB::from_rows(&values(d * d, 2, 1.0), d, d),
        PackedB::from_rows(&values(hidden * d, 3, 1.0), hidden, d),
        PackedB::from_rows(&values(d * hidden, 4, 1.0), d, hidden),
    );
    let (b, b1) = (values(d, 5, 1.0), values(hidden, 6, 1.0));
    let qkv = PackedB::concat(&[&w, &w, &w]).expect("widths of 32s");
    let (ln_w, ln_b, b3) = (values(d, 7, 1.0), values(d, 8, 0.1), values(3 * d, 9, 1.0));
    let norm = RowNorm { weight: &ln_w, bias: Some(&ln_b), eps: 1e-6 };
    let flop = |k: usize, n: usize| 2.0 * (m * k * n) as f64;
    for scale in [0.1, 1.0] {
        println!("inputs of ±{scale}:");
        let x = values(m * d, 1, scale);
        time("q/k/v/o projection 768→768", flop(d, d), || {
            std::hint::black_box(amx::linear(&x, m, d, &w, Some(&b), Epilogue::None, None, 0));
        });
        time("LayerNorm + q, k, v as one product", flop(d, 3 * d), || {
            std::hint::black_box(amx::normed_linear(&x, m, d, norm, &qkv, Some(&b3)));
        });
        time("o projection + residual", flop(d, d), || {
            std::hint::black_box(amx::linear(&x, m, d, &w, Some(&b), Epilogue::None, Some(&x), 0));
        });
        time("fc1 + GELU 768→3072", flop(d, hidden), || {
            std::hint::black_box(amx::linear(&x, m, d, &w1, Some(&b1), Epilogue::GeluTanh, None, 0));
        });
        time("LayerNorm + MLP (fc1, GELU, fc2) + residual", 2.0 * flop(d, hidden), || {
            std::hint::black_box(amx::mlp(
                &x,
                m,
                d,
                Some(norm),
                (&w1, Some(&b1)),
                Epilogue::GeluTanh,
                (&w2, Some(&b)),
                Some(&x),
            ));
        });
        let mut out = vec![0f32; m * d];
        time("attention, 13 tiles", (tiles * heads) as f64 * 4.0 * (n * n * hd) as f64, || {
            for t in 0..tiles {
                let tile = View { data: &x[t * n * d..(t + 1) * n * d], head_stride: hd, row_stride: d };
                let shape = Heads { heads, rows: n, keys: n, d: hd };
                let dst = &mut out[t * n * d..(t + 1) * n * d];
                amx::attention_into(tile, tile, tile, shape, 0.125, |_| n, dst, (hd, d));
            }
        });
    }
}
