//! Floating-point sums and means that round exactly as the reference tools do.
//!
//! Reference scores are means computed by numpy (`np.mean`, a pairwise sum) or by Python's
//! `sum` (a left fold up to CPython 3.11). Summing in another order changes the last bits,
//! so parity at 1e-9 and beyond needs the same order.

/// C's `pow`, as Python's `**` on floats, `math.pow` and numpy scalars call it.
///
/// glibc's `pow` is not correctly rounded: it differs from `x * x` for about 0.1% of
/// `pow(x, 2)`, from `sqrt(x)` for `pow(x, 0.5)` and from `exp(x)` for most `pow(e, x)`.
/// LLVM rewrites `powf` with such constant operands into those cheaper forms, which
/// changes the last bit; `black_box` keeps the operands opaque so the real `pow` runs.
#[inline]
pub fn c_pow(x: f64, y: f64) -> f64 {
    std::hint::black_box(x).powf(std::hint::black_box(y))
}

/// `c_pow(x, 2.0)` without calling `pow` when the answer is certain.
///
/// glibc's `pow` is within 0.54 ulp of the exact value (its source comment gives the
/// bound), so it can only differ from the correctly rounded `x * x` when `x²` lies within
/// 0.04 ulp of a rounding midpoint. The exact rounding error of `x * x` (Dekker's product)
/// tells how far it is; with a 0.1 ulp margin about nine squares in ten skip the call.
#[inline]
pub fn c_pow2(x: f64) -> f64 {
    let p = x * x;
    // Powers of two change the ulp; tiny and huge values leave the product's range.
    if !p.is_normal() || p.to_bits() & ((1 << 52) - 1) == 0 || p > 1e300 {
        return c_pow(x, 2.0);
    }
    let c = 134_217_729.0 * x;
    let hi = c - (c - x);
    let lo = x - hi;
    let err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo;
    let ulp = f64::from_bits(p.to_bits() + 1) - p;
    if 0.5 * ulp - err.abs() > 0.1 * ulp { p } else { c_pow(x, 2.0) }
}

/// Left-to-right sum, as Python's built-in `sum` over floats before CPython 3.12.
pub fn py_sum(xs: &[f64]) -> f64 {
    xs.iter().fold(0.0, |acc, &x| acc + x)
}

/// numpy's `pairwise_sum` for contiguous float64 (numpy/_core/src/umath/loops_utils.h.src).
fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.sum` of a 1-D contiguous float64 array (numpy 2.4.6, checked bit for bit on 3008
/// arrays of lengths 0..2000 and up to 100,003 in `tests/numpy_sums.rs`).
///
/// The reduction starts from the identity 0.0 and adds the pairwise sum of *all* elements;
/// it is not seeded with `a[0]`. The leading `0.0 +` only shows for all-negative-zero
/// input, where numpy returns +0.0.
pub fn np_sum(xs: &[f64]) -> f64 {
    0.0 + pairwise_sum(xs)
}

/// `np.mean` of a 1-D float64 array (`np.sum / n`); NaN for an empty slice, as numpy.
pub fn np_mean(xs: &[f64]) -> f64 {
    np_sum(xs) / xs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_pow2_is_glibc_pow_of_two() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..2_000_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let m = (state >> 11) as f64 / (1u64 << 53) as f64;
            let x = m * [1.0, 50.0, 1e-3, 1e6, 3.0][(i % 5) as usize];
            assert_eq!(c_pow2(x).to_bits(), c_pow(x, 2.0).to_bits(), "x = {x:e}");
        }
    }
}
