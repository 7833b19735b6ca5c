//! The f32 (and bf16) matmul throughput of candle's CPU kernels on this machine: the peak the
//! model benchmark compares its vision-encoder and prefill GFLOP/s with.
//!
//!     cargo run --release -p mmloop-models --example matmul_peak [m k n] [reps]
//!
//! AMX is measured first: measured after candle's float32 matmul had run its AVX-512 kernels
//! (the `gemm` crate's), the same AMX products took about 40% longer in this example on the Xeon
//! of docs/benchmarks.md, reproducibly, where after its AVX2 kernels they did not; the cause is
//! not established. Whole images with `--quant bf16` do not change (there candle's matmul serves
//! only small products).
use candle_core::{DType, Device, Tensor};

fn main() -> candle_core::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (m, k, n) = match args[..] {
        [m, k, n, ..] => (m, k, n),
        _ => (4096, 768, 3072),
    };
    let reps = args.get(3).copied().unwrap_or(5);
    if mmloop_models::amx::available() {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let b = mmloop_models::amx::PackedB::from_rows(&w, n, k);
        let mut out = vec![0f32; m * n];
        mmloop_models::amx::matmul(&a, m, k, &b, &mut out);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            mmloop_models::amx::matmul(&a, m, k, &b, &mut out);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "AMX bf16 (f32 in/out) {m}x{k} @ {k}x{n}: {:.1} ms, {:.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * k * n) as f64 / s / 1e9
        );
    } else {
        println!("AMX: not available on this CPU");
    }
    for dtype in [DType::F32, DType::BF16] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?.to_dtype(dtype)?;
        let b = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?.to_dtype(dtype)?;
        let bt = b.t()?;
        let Ok(_) = a.matmul(&bt) else {
            println!("{dtype:?}: no CPU matmul");
            continue;
        };
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let _ = a.matmul(&bt)?;
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{dtype:?} {m}x{k} @ {k}x{n}: {:.1} ms, {:.1} GFLOP/s", s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
    }
    Ok(())
}
